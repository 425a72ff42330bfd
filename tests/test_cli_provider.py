"""`ccgate provider ...` run the way a user runs it: keys go to the keyring and nowhere else."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cli_runner import run_main, table_column

from ccgate.local import secrets

SECRET = "sk-groq-SECRET-0123456789"
CCGATE = Path(sys.executable).parent / "ccgate"


@pytest.fixture(autouse=True)
def empty_memory_keyring() -> Iterator[None]:
    store = getattr(keyring.get_keyring(), "_store", None)
    assert isinstance(store, dict)
    store.clear()
    yield
    store.clear()


def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str, stdin: str = ""
) -> tuple[int, str, str]:
    return run_main(capsys, monkeypatch, *args, stdin=stdin)


def providers_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, object]]:
    code, out, _ = run(capsys, monkeypatch, "provider", "list", "--json")
    assert code == 0
    assert SECRET not in out
    return {row["name"]: row for row in json.loads(out)["providers"]}


def test_key_set_stores_in_keyring_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    assert providers_json(capsys, monkeypatch)["groq"]["key"] == "missing"
    code, out, err = run(capsys, monkeypatch, "provider", "key", "set", "groq", "--stdin", stdin=SECRET + "\n")
    assert code == 0, err
    assert SECRET not in out + err
    assert secrets.get_provider_key("groq", {}) == SECRET

    # a config change afterwards writes config.toml: the key must not be in it
    code, _, err = run(capsys, monkeypatch, "provider", "add", "lab", "--kind", "openai", "--base-url", "http://h:1/v1")
    assert code == 0, err
    config_text = (isolated_home / "config.toml").read_text()
    assert "lab" in config_text and SECRET not in config_text
    assert not any(SECRET in p.read_text(errors="replace") for p in isolated_home.rglob("*") if p.is_file())

    rows = providers_json(capsys, monkeypatch)
    assert rows["groq"]["key"] == "present" and rows["groq"]["key_source"] == "keyring"
    assert rows["ollama"]["key"] == "not needed"
    assert rows["anthropic"]["key"] == "Claude Code's"  # the developer's own key or login passes through
    assert rows["lab"] == {
        "name": "lab",
        "kind": "openai",
        "base_url": "http://h:1/v1",
        "builtin": False,
        "key": "missing",
        "key_source": None,
        "key_env": "CCGATE_LAB_API_KEY",
        "sidecar": None,  # no sidecar runs
    }

    code, _, err = run(capsys, monkeypatch, "provider", "key", "delete", "groq")
    assert code == 0, err
    assert secrets.get_provider_key("groq", {}) is None
    code, _, err = run(capsys, monkeypatch, "provider", "key", "delete", "groq")
    assert code == 1 and "no stored key" in err


def test_env_var_overrides_stored_key(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    secrets.set_provider_key("groq", SECRET)
    monkeypatch.setenv("CCGATE_GROQ_API_KEY", "env-key-value")
    rows = providers_json(capsys, monkeypatch)
    assert rows["groq"]["key_source"] == "env"
    assert "env-key-value" not in json.dumps(rows)
    code, _, err = run(capsys, monkeypatch, "provider", "key", "set", "groq", "--stdin", stdin="another-key\n")
    assert code == 0
    assert "CCGATE_GROQ_API_KEY is set" in err  # the user learns the env var still wins
    assert secrets.get_provider_key("groq", dict(__import__("os").environ)) == "env-key-value"


def test_key_errors_never_echo_the_key(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, "provider", "key", "set", "grok", "--stdin", stdin=SECRET + "\n")
    assert code == 1
    assert "unknown provider 'grok'" in err and "groq" in err
    assert SECRET not in out + err
    code, out, err = run(capsys, monkeypatch, "provider", "key", "set", "groq", "--stdin", stdin="two words\n")
    assert code == 1 and "whitespace" in err and "two words" not in err
    code, _, err = run(capsys, monkeypatch, "provider", "key", "set", "groq", "--stdin", stdin="\n")
    assert code == 1 and "no key given" in err
    code, out, err = run(capsys, monkeypatch, "provider", "key", "set", "groq", stdin="sk-\x1b[2Jabc\x85\n")
    assert code == 1 and "control characters" in err and "abc" not in out + err
    assert secrets.get_provider_key("groq", {}) is None


def test_add_and_remove_custom_provider(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, _, err = run(
        capsys, monkeypatch, "provider", "add", "my-proxy", "--kind", "anthropic", "--base-url", "http://127.0.0.1:9/"
    )
    assert code == 0, err
    assert providers_json(capsys, monkeypatch)["my-proxy"]["base_url"] == "http://127.0.0.1:9"

    code, _, err = run(capsys, monkeypatch, "provider", "remove", "groq")
    assert code == 1 and "built-in" in err
    code, _, err = run(capsys, monkeypatch, "provider", "add", "groq", "--kind", "openai", "--base-url", "http://x")
    assert code == 1 and "CCGATE_GROQ_BASE_URL" in err
    code, _, err = run(capsys, monkeypatch, "provider", "add", "x", "--kind", "grpc", "--base-url", "http://x")
    assert code == 1 and "openai, anthropic" in err
    code, _, err = run(capsys, monkeypatch, "provider", "add", "a/b", "--kind", "openai", "--base-url", "http://x")
    assert code == 1 and "invalid provider name" in err
    # one key variable for two providers would send one provider's key to the other
    code, _, err = run(capsys, monkeypatch, "provider", "add", "my_proxy", "--kind", "openai", "--base-url", "http://x")
    assert code == 1 and "CCGATE_MY_PROXY_API_KEY" in err and "'my-proxy'" in err
    assert "my_proxy" not in providers_json(capsys, monkeypatch)
    code, _, err = run(capsys, monkeypatch, "provider", "add", "my-proxy", "--kind", "openai", "--base-url", "http://x")
    assert code == 0, err  # updating the same provider is not a clash

    # a provider a tier routes to cannot disappear from under it
    (isolated_home / "config.toml").write_text(
        (isolated_home / "config.toml").read_text() + '\n[tiers.haiku]\ntargets = ["my-proxy/some-model"]\n'
    )
    code, _, err = run(capsys, monkeypatch, "provider", "remove", "my-proxy")
    assert code == 1 and "haiku" in err and "model unset haiku" in err
    code, _, err = run(capsys, monkeypatch, "model", "unset", "haiku")
    assert code == 0, err
    code, _, err = run(capsys, monkeypatch, "provider", "remove", "my-proxy")
    assert code == 0, err
    assert "my-proxy" not in providers_json(capsys, monkeypatch)
    code, _, err = run(capsys, monkeypatch, "provider", "remove", "my-proxy")
    assert code == 1 and "no custom provider" in err


def test_add_refuses_credentials_in_the_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, out, err = run(
        capsys,
        monkeypatch,
        "provider",
        "add",
        "lab",
        "--kind",
        "openai",
        "--base-url",
        "https://bob:hunter2@h.example/v1",
    )
    assert code == 1
    assert "hunter2" not in out + err
    assert "must not contain credentials" in err and "ccgate provider key set lab" in err
    code, _, err = run(
        capsys, monkeypatch, "provider", "add", "lab", "--kind", "openai", "--base-url", "https://h.example/v1?key=x"
    )
    assert code == 1 and "query strings" in err
    code, _, err = run(
        capsys, monkeypatch, "provider", "add", "virtual-key", "--kind", "openai", "--base-url", "https://h.example"
    )
    assert code == 1 and "reserved" in err
    assert not (isolated_home / "config.toml").exists()


def test_add_keeps_what_ccgate_does_not_model(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    config = isolated_home / "config.toml"
    config.write_text(
        '[sidecar]\nlog_level = "debug"\n\n[providers.lab]\nkind = "openai"\nbase_url = "http://old:1/v1"\n'
        'label = "the lab box"\n\n[future_section]\nanswer = 42\n'
    )
    code, _, err = run(
        capsys, monkeypatch, "provider", "add", "lab", "--kind", "openai", "--base-url", "http://new:2/v1"
    )
    assert code == 0, err
    raw = tomllib.loads(config.read_text())
    assert raw["sidecar"] == {"log_level": "debug"}
    assert raw["future_section"] == {"answer": 42}
    assert raw["providers"]["lab"] == {
        "kind": "openai",
        "base_url": "http://new:2/v1",
        "label": "the lab box",
        "supports_stream_usage": True,
    }
    code, _, err = run(capsys, monkeypatch, "provider", "remove", "lab")
    assert code == 0, err
    raw = tomllib.loads(config.read_text())
    assert "providers" not in raw  # the removed provider goes whole, unknown keys and all
    assert raw == {"sidecar": {"log_level": "debug"}, "future_section": {"answer": 42}}


async def test_provider_test_against_loopback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, str]] = []

    async def models(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "auth": request.headers.get("Authorization", "")})
        if request.headers.get("Authorization") != f"Bearer {SECRET}":
            # providers like to echo part of the key back; ccgate must not print it
            return web.json_response(
                {"error": {"message": f"Invalid API Key {request.headers.get('Authorization')}"}}, status=401
            )
        return web.json_response({"object": "list", "data": [{"id": "llama-3.3-70b-versatile"}]})

    app = web.Application()
    app.router.add_get("/openai/v1/models", models)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        monkeypatch.setenv("CCGATE_GROQ_BASE_URL", f"http://127.0.0.1:{server.port}/openai/v1")

        code, _, err = await asyncio.to_thread(run, capsys, monkeypatch, "provider", "test", "groq")
        assert code == 1 and "no API key for groq" in err and "provider key set groq" in err
        assert seen == []

        secrets.set_provider_key("groq", SECRET)
        code, out, err = await asyncio.to_thread(run, capsys, monkeypatch, "provider", "test", "groq")
        assert code == 0, err
        assert "HTTP 200" in err and f"127.0.0.1:{server.port}/openai/v1/models" in err.replace("\n", "")
        assert seen[-1] == {"path": "/openai/v1/models", "auth": f"Bearer {SECRET}"}

        monkeypatch.setenv("CCGATE_GROQ_API_KEY", "sk-wrong-key-987")
        code, out, err = await asyncio.to_thread(run, capsys, monkeypatch, "provider", "test", "groq")
        assert code == 1
        assert "HTTP 401" in err and f"http://127.0.0.1:{server.port}/openai/v1/models" in err
        assert "sk-wrong-key-987" not in out + err and SECRET not in out + err
        assert "key set groq" in err
    finally:
        await server.close()


def test_provider_test_unreachable_names_the_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CCGATE_OLLAMA_BASE_URL", f"http://127.0.0.1:{port}/v1")
    code, _, err = run(capsys, monkeypatch, "provider", "test", "ollama")  # no key needed
    assert code == 1
    assert f"cannot reach ollama at http://127.0.0.1:{port}/v1/models" in err
    assert "CCGATE_OLLAMA_BASE_URL" in err


def test_list_folds_long_urls_in_80_columns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run(capsys, monkeypatch, "provider", "list")
    assert code == 0, err
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert "https://api.fireworks.ai/inference/v1" in table_column(out, "base URL", "key")


def _key_set(isolated_home: Path, stdin: int | bytes, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CCGATE_HOME": str(isolated_home)}
    command = [str(CCGATE), "provider", "key", "set", "groq", *args]
    if isinstance(stdin, bytes):
        return subprocess.run(command, input=stdin.decode(), env=env, capture_output=True, text=True, timeout=60)
    return subprocess.run(command, stdin=stdin, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [(), ("--stdin",)], ids=["piped", "--stdin"])
def test_a_piped_key_is_read_silently(isolated_home: Path, args: tuple[str, ...]) -> None:
    """`echo KEY | ccgate provider key set groq`: no getpass warning about echoed input, the key is stored."""
    done = _key_set(isolated_home, (SECRET + "\n").encode(), *args)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "API key for" not in done.stdout + done.stderr
    assert "stored the key for groq" in done.stderr and SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize("args", [(), ("--stdin",)], ids=["piped", "--stdin"])
def test_an_empty_stdin_is_one_line_and_a_hint(isolated_home: Path, args: tuple[str, ...]) -> None:
    done = _key_set(isolated_home, subprocess.DEVNULL, *args)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "ccgate: error: no key given",
        '  hint: paste the key at the prompt, or pipe it: `echo "$KEY" | ccgate provider key set groq`',
    ]


def test_ctrl_d_at_the_prompt_is_one_line_and_a_hint(isolated_home: Path) -> None:
    """On a terminal the key is prompted for; Ctrl-D there ends in ccgate's error, not click's "Aborted!"."""
    import pty
    import select
    import signal
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: ccgate on a fresh terminal
        os.execve(str(CCGATE), [str(CCGATE), "provider", "key", "set", "groq"], os.environ)  # noqa: S606
    seen = b""
    try:
        for _ in range(120):  # bounded: at most ~60 s on a busy machine
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:  # the child exited and closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if b"API key for groq" in seen:
                os.write(fd, b"\x04")  # again until read: the prompt flushes input typed before it is ready
    finally:
        for _ in range(300):  # the child exits right after closing the terminal; 30 s at most
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)  # still waiting at the prompt: the test fails below, nothing is left behind
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = seen.decode().replace("\r\n", "\n")
    assert os.waitstatus_to_exitcode(status) == 1, text
    assert "Aborted" not in text
    assert "ccgate: error: no key given\n  hint: paste the key at the prompt" in text
