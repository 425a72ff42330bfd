"""Sessions registered by `ccgate install`'s hook: token-less requests from them are metered with their project;
anything else without the token is refused."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from scripted_upstream import ScriptedUpstream
from sidecar_harness import Harness, running_sidecar

from ccgate.sidecar.peers import peer_uid

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
SESSION = "5f0c7a1e-9a77-4c55-8f35-3f7d0a5b7a11"
CLIENT = {"x-api-key": "sk-ant-dummy", "anthropic-version": "2023-06-01", "content-type": "application/json"}


async def register(harness: Harness, payload: dict[str, Any], *, token: bool = True) -> tuple[int, Any]:
    headers = harness.headers if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{harness.url}/_ccgate/sessions", json=payload, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def post(harness: Harness, headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{harness.url}/v1/messages", data=json.dumps(BODY), headers={**CLIENT, **headers}) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_a_registered_session_is_metered_with_its_project_without_the_token() -> None:
    async with running_sidecar() as harness:
        assert (await register(harness, {"session_id": SESSION, "project": "/work/demo"}))[0] == 200
        status, _ = await post(harness, {"X-Claude-Code-Session-Id": SESSION})
        assert status == 200
        [row] = harness.rows()
        assert row["project"] == "/work/demo" and row["session_id"] == SESSION
        [seen] = harness.upstream.messages_requests
        assert not any(name.startswith("x-ccgate-t") for name in seen.headers)


async def test_an_unregistered_session_a_web_page_and_a_registration_without_token_are_refused() -> None:
    async with running_sidecar() as harness:
        status, body = await post(harness, {"X-Claude-Code-Session-Id": SESSION})
        assert status == 401
        assert "ccgate install" in body["error"]["message"]
        assert (await register(harness, {"session_id": SESSION}, token=False))[0] == 401

        assert (await register(harness, {"session_id": SESSION, "project": "/p"}))[0] == 200
        # a browser page (DNS rebinding aside, a plain cross-site POST) always sends Origin
        status, _ = await post(harness, {"X-Claude-Code-Session-Id": SESSION, "Origin": "https://evil.example"})
        assert status == 401
        # only the Messages routes: the control API still wants the token
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{harness.url}/_ccgate/status", headers={"X-Claude-Code-Session-Id": SESSION}) as resp,
        ):
            assert resp.status == 401
        assert harness.upstream.messages_requests == []


async def test_session_ids_are_validated() -> None:
    async with running_sidecar() as harness:
        for bad in ("short", "x" * 65, "a/b/../../c-123456", "ünïcode-123456", 42, None):
            status, body = await register(harness, {"session_id": bad})
            assert status == 400, bad
            assert body["error"]["type"] == "invalid_request_error"
        status, _ = await register(harness, {"session_id": SESSION, "project": "x" * 5000})
        assert status == 400


async def test_a_session_with_its_own_upstream_goes_there_and_launch_wins_for_the_project() -> None:
    async with ScriptedUpstream() as corporate, running_sidecar() as harness:
        payload = {"session_id": SESSION, "project": "/from/hook", "anthropic_base_url": corporate.url}
        assert (await register(harness, payload))[0] == 200
        assert (await post(harness, {"X-Claude-Code-Session-Id": SESSION}))[0] == 200
        assert len(corporate.messages_requests) == 1 and harness.upstream.messages_requests == []
        # the hook of another settings file (project scope) registers it again, without the gateway: kept
        assert (await register(harness, {"session_id": SESSION, "project": "/from/hook"}))[0] == 200

        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{harness.url}/_ccgate/launches",
                json={"launch_id": "launch-xyz-1", "project": "/from/launch"},
                headers=harness.headers,
            ) as resp,
        ):
            assert resp.status == 200
        headers = {**harness.launch_headers("launch-xyz-1"), "X-Claude-Code-Session-Id": SESSION}
        assert (await post(harness, headers))[0] == 200
        rows = harness.rows()
        assert [row["project"] for row in rows] == ["/from/hook", "/from/launch"]
        # the launch had no upstream of its own: the session's settings still say where requests go
        assert len(corporate.messages_requests) == 2


async def test_a_launch_id_cannot_pose_as_a_session() -> None:
    async with (
        running_sidecar() as harness,
        aiohttp.ClientSession() as session,
        session.post(
            f"{harness.url}/_ccgate/launches",
            json={"launch_id": f"session:{SESSION}"[:64], "project": "/p"},
            headers=harness.headers,
        ) as resp,
    ):
        assert resp.status == 400


async def test_registered_sessions_survive_a_sidecar_restart(tmp_path: Path) -> None:
    async with running_sidecar() as harness:
        assert (await register(harness, {"session_id": SESSION, "project": "/kept"}))[0] == 200
    async with running_sidecar() as harness:
        assert (await post(harness, {"X-Claude-Code-Session-Id": SESSION}))[0] == 200
        assert harness.rows()[0]["project"] == "/kept"


def test_peer_uid_names_the_owner_of_the_client_socket(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            accepted, peername = server.accept()
            with accepted:
                if not Path("/proc/net/tcp").exists():
                    assert peer_uid(peername, accepted.getsockname()) is None
                    return
                assert peer_uid(peername, accepted.getsockname()) == os.getuid()
                assert client.getsockname() == peername
                # another user's socket: the table says so, and the sidecar refuses the request
                table = tmp_path / "tcp"
                lines = Path("/proc/net/tcp").read_text().splitlines()
                forged = [lines[0]]
                for line in lines[1:]:
                    fields = line.split()
                    fields[7] = "4242"
                    forged.append(" ".join(fields))
                table.write_text("\n".join(forged) + "\n")
                assert peer_uid(peername, accepted.getsockname(), tables=(str(table),)) == 4242
    assert peer_uid(None, ("127.0.0.1", 1)) is None
    assert peer_uid(("not an address", 1), ("127.0.0.1", 1)) is None


async def test_a_registered_session_used_by_another_users_process_is_refused(monkeypatch: Any) -> None:
    """What the kernel reports for the client socket decides (another user may learn a session id from `ps`)."""
    from ccgate.sidecar import peers

    async with running_sidecar() as harness:
        assert (await register(harness, {"session_id": SESSION, "project": "/p"}))[0] == 200
        monkeypatch.setattr(peers, "peer_uid", lambda peername, sockname: os.getuid() + 1)
        assert (await post(harness, {"X-Claude-Code-Session-Id": SESSION}))[0] == 401
        monkeypatch.setattr(peers, "peer_uid", lambda peername, sockname: os.getuid())
        assert (await post(harness, {"X-Claude-Code-Session-Id": SESSION}))[0] == 200
        assert len(harness.upstream.messages_requests) == 1


CLIENT_SCRIPT = """
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1] + "/v1/messages", data=sys.argv[2].encode(), method="POST",
                                 headers={"x-claude-code-session-id": sys.argv[3], "content-type": "application/json",
                                          "x-api-key": "sk-ant-dummy", "anthropic-version": "2023-06-01"})
try:
    print(urllib.request.urlopen(request, timeout=20).status)
except urllib.error.HTTPError as error:
    print(error.code)
"""


# the client runs as `nobody`, who may not be able to read this checkout's virtualenv: the system's Python it is
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    os.getuid() != 0
    or shutil.which("runuser") is None
    or not Path("/proc/net/tcp").exists()
    or not Path(SYSTEM_PYTHON).exists(),
    reason="needs root (to run a client as another user), runuser, /proc/net/tcp and /usr/bin/python3",
)
async def test_another_local_user_who_knows_the_session_id_is_refused() -> None:
    """A real process of user `nobody` (a session id shows in `ps` for `claude --resume ID`) gets 401; ours gets 200."""
    async with running_sidecar() as harness:
        assert (await register(harness, {"session_id": SESSION, "project": "/p"}))[0] == 200

        async def as_user(*prefix: str) -> str:
            process = await asyncio.create_subprocess_exec(
                *prefix, SYSTEM_PYTHON, "-I", "-c", CLIENT_SCRIPT, harness.url, json.dumps(BODY), SESSION,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(process.communicate(), 60)
            return out.decode().strip() or err.decode()[-500:]

        assert await as_user("runuser", "-u", "nobody", "--") == "401"
        assert harness.upstream.messages_requests == []
        assert await as_user() == "200"
        assert len(harness.upstream.messages_requests) == 1


@pytest.mark.parametrize(
    ("family", "bind", "connect"),
    [(socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "::1"), (socket.AF_INET6, "::", "127.0.0.1")],
    ids=["ipv4", "ipv6", "ipv4-mapped"],
)
def test_peer_uid_asks_the_kernel_for_the_one_socket(family: int, bind: str, connect: str, tmp_path: Path) -> None:
    """The fast path (netlink sock_diag) and the /proc tables agree, over IPv4, IPv6 and IPv4-mapped IPv6."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("Linux only")
    with socket.socket(family) as server:
        try:
            server.bind((bind, 0))
        except OSError:
            pytest.skip(f"cannot bind {bind}")
        server.listen()
        with socket.create_connection((connect, server.getsockname()[1])):
            accepted, peername = server.accept()
            with accepted:
                assert peer_uid(peername, accepted.getsockname()) == os.getuid()
                tables = ("/proc/net/tcp", "/proc/net/tcp6")
                assert peer_uid(peername, accepted.getsockname(), tables=tables) == os.getuid()


HALF_CLOSING_CLIENT = """
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
conn.shutdown(socket.SHUT_WR)  # as a client does that sends its request and then only reads
print("sent", flush=True)
sys.stdin.readline()
"""


@pytest.mark.skipif(
    os.getuid() != 0
    or shutil.which("runuser") is None
    or not Path("/proc/net/tcp").exists()
    or not Path(SYSTEM_PYTHON).exists(),
    reason="needs root (to run a client as another user), runuser, /proc/net/tcp and /usr/bin/python3",
)
async def test_the_owner_of_a_half_closed_client_socket_is_found() -> None:
    """A client that shut its sending side is no longer ESTABLISHED; the /proc path must still name its user,
    or "unknown" would let another user's request through where sock_diag is not available."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        process = await asyncio.create_subprocess_exec(
            "runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-I", "-c", HALF_CLOSING_CLIENT,
            str(server.getsockname()[1]), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        try:
            assert (await asyncio.wait_for(process.stdout.readline(), 60)) == b"sent\n"
            accepted, peername = server.accept()
            with accepted:
                assert accepted.recv(1) == b""  # the client's FIN has arrived
                nobody = peer_uid(peername, accepted.getsockname())
                assert nobody not in (None, os.getuid())
                assert peer_uid(peername, accepted.getsockname(), tables=("/proc/net/tcp",)) == nobody
        finally:
            process.stdin.write(b"\n")
            await process.communicate()
