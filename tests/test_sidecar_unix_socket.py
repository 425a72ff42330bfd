"""The sidecar's unix socket (`ccgate install --socket`): Claude Code's requests reach the sidecar through a file
in this user's private runtime folder, so another local user cannot take the sidecar's place (as they could take
its TCP port while it is down) and receive the developer's credentials."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sidecar_harness import Harness, running_sidecar

from ccgate.local.paths import resolve_paths
from ccgate.sidecar.unix_socket import listen_unix

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
SESSION = "6a1d2c3b-9a77-4c55-8f35-3f7d0a5b7a11"
# what Claude Code sends with ANTHROPIC_UNIX_SOCKET set: the Host of its ANTHROPIC_BASE_URL, no ccgate token
CLIENT = {
    "x-api-key": "sk-ant-dummy",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
    "Host": "127.0.0.1:8787",
}


async def over_socket(harness: Harness, path: str, headers: dict[str, str], body: Any = BODY) -> tuple[int, Any]:
    connector = aiohttp.UnixConnector(path=str(harness.paths.socket_file))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"http://127.0.0.1:8787{path}", data=json.dumps(body), headers={**CLIENT, **headers}) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_a_registered_session_is_metered_over_the_socket_and_nothing_else_gets_in() -> None:
    async with running_sidecar(unix_socket=True) as harness:
        sock = harness.paths.socket_file
        info = sock.lstat()
        assert stat.S_ISSOCK(info.st_mode) and info.st_mode & 0o777 == 0o600 and info.st_uid == os.getuid()
        folder = sock.parent.stat()
        assert folder.st_uid == os.getuid() and folder.st_mode & 0o022 == 0  # no one else can put a file there
        # an unregistered session is refused there as on the port
        assert (await over_socket(harness, "/v1/messages", {"X-Claude-Code-Session-Id": SESSION}))[0] == 401
        status, _ = await over_socket(
            harness, "/_ccgate/sessions", harness.headers, {"session_id": SESSION, "project": "/work/demo"}
        )
        assert status == 200
        status, _ = await over_socket(harness, "/v1/messages", {"X-Claude-Code-Session-Id": SESSION})
        assert status == 200
        # `ccgate launch claude` with the socket installed: the token and launch go the same way
        assert (await over_socket(harness, "/v1/messages", harness.headers))[0] == 200
        rows = harness.rows()
        assert len(rows) == 2 and (rows[0]["session_id"], rows[0]["project"]) == (SESSION, "/work/demo")
        assert len(harness.upstream.messages_requests) == 2


async def test_a_stale_socket_is_replaced_and_anything_else_with_its_name_is_left_alone(tmp_path: Path) -> None:
    from aiohttp import web

    paths = resolve_paths({**os.environ, "CCGATE_HOME": str(tmp_path / "home")}).ensure()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        import socket

        with socket.socket(socket.AF_UNIX) as stale:  # what a sidecar killed with -9 leaves behind
            stale.bind(str(paths.socket_file))
        assert await listen_unix(runner, paths.socket_file) is not None
        connector = aiohttp.UnixConnector(path=str(paths.socket_file))
        async with aiohttp.ClientSession(connector=connector) as session, session.get("http://x/healthz") as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()
    paths.socket_file.unlink()
    paths.socket_file.write_text("not a socket")
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        assert await listen_unix(runner, paths.socket_file) is None  # logged; the TCP port still serves
        assert paths.socket_file.read_text() == "not a socket"
    finally:
        await runner.cleanup()


CLIENT_SCRIPT = """
import socket, sys
try:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(sys.argv[1])
        print("connected")
except OSError as error:
    print(type(error).__name__)
"""
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("runuser") is None or not Path(SYSTEM_PYTHON).exists(),
    reason="needs root (to run a client as another user), runuser and /usr/bin/python3",
)
async def test_another_local_user_cannot_open_the_socket() -> None:
    async with running_sidecar(unix_socket=True) as harness:

        async def as_user(*prefix: str) -> str:
            process = await asyncio.create_subprocess_exec(
                *prefix, SYSTEM_PYTHON, "-I", "-c", CLIENT_SCRIPT, str(harness.paths.socket_file),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(process.communicate(), 60)
            return out.decode().strip() or err.decode()[-500:]

        assert await as_user("runuser", "-u", "nobody", "--") == "PermissionError"
        assert await as_user() == "connected"


async def test_no_socket_in_a_folder_others_can_write(tmp_path: Path) -> None:
    """The socket protects only while no one else can put a file in its place: a shared folder gets none."""
    from aiohttp import web

    paths = resolve_paths({**os.environ, "CCGATE_HOME": str(tmp_path / "home")}).ensure()
    paths.runtime_dir.chmod(0o777)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        assert await listen_unix(runner, paths.socket_file) is None
        assert not paths.socket_file.exists()
    finally:
        await runner.cleanup()
