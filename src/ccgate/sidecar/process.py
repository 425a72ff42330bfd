"""Sidecar process control: find a healthy one, or start one detached; stop it; read its files.

Imported by the CLI, so nothing heavy here: no aiohttp, only the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ccgate.errors import SidecarError
from ccgate.paths import Paths

SERVICE_NAME = "ccgate-sidecar"
TOKEN_HEADER = "x-ccgate-token"  # noqa: S105 - a header name, not a secret
LAUNCH_HEADER = "x-ccgate-launch"
# Launch ids of launches whose Anthropic requests go to the developer's own ANTHROPIC_BASE_URL start with this.
OWN_UPSTREAM_LAUNCH_PREFIX = "gw-"
START_TIMEOUT = 15.0
# A sidecar log larger than this at start-up is moved to `sidecar.log.1` (replacing the previous one).
LOG_ROTATE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SidecarInfo:
    pid: int
    port: int
    host: str = "127.0.0.1"
    # the ccgate version the running sidecar reports (None when only its files were read)
    version: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def home_id(paths: Paths) -> str:
    """Identifies which ccgate home a sidecar serves, so a sidecar of another home is never reused."""
    return hashlib.sha256(str(paths.data_dir.resolve()).encode()).hexdigest()[:16]


def ensure_token(paths: Paths) -> str:
    """The per-install local token (0600 file); created once, race-free."""
    paths.ensure()
    try:
        return paths.token_file.read_text().strip()
    except FileNotFoundError:
        pass
    token = "cgt-" + secrets.token_urlsafe(24)
    # write a private temp file, then link it into place: readers never see an empty token file
    fd, tmp = tempfile.mkstemp(prefix=".token-", dir=paths.token_file.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, paths.token_file)
        except FileExistsError:
            return paths.token_file.read_text().strip()
    finally:
        Path(tmp).unlink(missing_ok=True)
    return token


def configured_port(default: int, environ: Mapping[str, str]) -> int:
    raw = environ.get("CCGATE_SIDECAR_PORT")
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise SidecarError(f"CCGATE_SIDECAR_PORT must be a port number, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise SidecarError(f"CCGATE_SIDECAR_PORT must be a port number, got {raw!r}")
    return port


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still answers kill(0); reap it if it is ours
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def read_info(paths: Paths) -> SidecarInfo | None:
    """What the pid and port files say, or None if they are missing or unreadable."""
    try:
        pid = int(paths.pid_file.read_text().strip())
        port = int(paths.port_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return SidecarInfo(pid=pid, port=port)


def health(port: int, *, host: str = "127.0.0.1", timeout: float = 1.0) -> dict[str, Any] | None:
    """GET /healthz; None if nothing (or not a ccgate sidecar) answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        if response.status != 200:
            return None
        payload = json.loads(response.read())
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    if not isinstance(payload, dict) or payload.get("service") != SERVICE_NAME:
        return None
    return payload


def running_sidecar(paths: Paths) -> SidecarInfo | None:
    """A healthy sidecar serving this home, or None (stale files are removed)."""
    info = read_info(paths)
    if info is None:
        return None
    if not pid_alive(info.pid):
        _remove_files(paths, info.pid)
        return None
    payload = health(info.port)
    if payload is None or payload.get("pid") != info.pid or payload.get("home_id") != home_id(paths):
        return None
    version = payload.get("version")
    return replace(info, version=version if isinstance(version, str) else None)


def instance_running(paths: Paths) -> bool:
    """Whether a sidecar of this home is alive, whatever its pid file says: it holds the instance lock (the
    kernel releases it when the process ends, even by kill -9), so a pid reused by another process, or another
    home's sidecar, never passes for ours."""
    import fcntl

    try:
        handle = open(paths.instance_lock_file, "a+")  # noqa: SIM115 - closed below, the lock with it
    except OSError:
        return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        handle.close()
    return False


def hold_instance_lock(paths: Paths, *, timeout: float = START_TIMEOUT) -> Any:
    """Taken by the sidecar before it touches the ledger; returns the open file that holds it (keep it open).

    A previous sidecar of this home still draining its requests holds it: wait for it rather than run two at
    once (the second would mark the first one's live requests as interrupted).
    """
    import fcntl

    paths.ensure()
    handle = open(paths.instance_lock_file, "a+")  # noqa: SIM115 - held for the life of the process
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                info = read_info(paths)
                raise SidecarError(
                    "another sidecar of this ccgate home is running" + (f" (pid {info.pid})" if info else ""),
                    hint="`ccgate sidecar status` shows it; `ccgate sidecar stop` stops it",
                ) from None
            time.sleep(0.05)


@contextlib.contextmanager
def _start_lock(paths: Paths) -> Iterator[None]:
    """Serialises concurrent `launch`/`sidecar start` so only one of them spawns a sidecar."""
    import fcntl

    paths.ensure()
    with open(paths.lock_file, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_sidecar(paths: Paths, *, port: int, environ: Mapping[str, str] | None = None) -> tuple[SidecarInfo, bool]:
    """Reuse a healthy sidecar or start one; returns (info, started_now)."""
    with _start_lock(paths):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            info = running_sidecar(paths)
            if info is not None:
                return info, False
            files = read_info(paths)
            if files is None or not pid_alive(files.pid) or not instance_running(paths):
                return _spawn(paths, port=port, environ=environ), True
            # this home's sidecar is alive but did not answer (busy, stopped, or draining before it exits):
            # keep its files and wait, rather than start a second one beside it
            if time.monotonic() >= deadline:
                raise SidecarError(
                    f"the sidecar (pid {files.pid}) is running but not answering on port {files.port}",
                    hint="wait a moment and try again, or restart it: `ccgate sidecar stop`",
                )
            time.sleep(0.1)


def _spawn(paths: Paths, *, port: int, environ: Mapping[str, str] | None) -> SidecarInfo:
    if port:
        other = health(port, timeout=2.0)
        if other is not None and other.get("home_id") == home_id(paths) and isinstance(other.get("pid"), int):
            # ours after all (a slow health check made it look absent): repair the run files and reuse it
            write_run_files(paths, other["pid"], port)
            return SidecarInfo(pid=other["pid"], port=port)
        if other is not None:
            raise SidecarError(
                f"port {port} is used by a ccgate sidecar of another ccgate home (pid {other.get('pid')})",
                hint="stop it, or pick another port: `sidecar.port` in config.toml or CCGATE_SIDECAR_PORT",
            )
    ensure_token(paths)
    for stale in (paths.pid_file, paths.port_file):
        stale.unlink(missing_ok=True)
    env = dict(os.environ if environ is None else environ)
    paths.log_file.parent.mkdir(parents=True, exist_ok=True)
    _rotate_log(paths.log_file)
    with open(paths.log_file, "ab") as log_handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "ccgate.sidecar", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=log_handle,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise SidecarError(
                f"the sidecar exited at start-up with code {code}: {_last_log_line(paths)}",
                hint=f"see {paths.log_file} (`ccgate sidecar logs`)",
            )
        info = read_info(paths)
        if info is not None and info.pid == process.pid and health(info.port) is not None:
            return info
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    raise SidecarError(
        f"the sidecar did not become healthy within {START_TIMEOUT:.0f} s",
        hint=f"see {paths.log_file} (`ccgate sidecar logs`)",
    )


def _rotate_log(log_file: Path) -> None:
    """Each start appends to the log; past `LOG_ROTATE_BYTES` the old one becomes `.1`, so it never grows forever."""
    try:
        if log_file.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(log_file, log_file.with_name(log_file.name + ".1"))
    except FileNotFoundError:
        pass


def _last_log_line(paths: Paths) -> str:
    try:
        lines = paths.log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][-300:] if lines else "no log"


def _looks_like_sidecar(pid: int) -> bool:
    """A busy sidecar may miss a health check; its command line still says what it is."""
    try:
        return b"ccgate.sidecar" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_sidecar(paths: Paths, *, timeout: float = 15.0) -> int | None:
    """SIGTERM (graceful: in-flight requests finish, the ledger flushes), SIGKILL after `timeout`."""
    info = read_info(paths)
    if info is None or not pid_alive(info.pid):
        if info is not None:
            _remove_files(paths, info.pid)
        return None
    payload = health(info.port)
    ours = payload.get("pid") == info.pid if payload is not None else _looks_like_sidecar(info.pid)
    if not instance_running(paths):
        ours = False  # no sidecar of this home runs: the pid is someone else's now (another home's sidecar too)
    if not ours:
        # the files point at a process that is not our sidecar (a reused pid after a reboot): never signal it
        _remove_files(paths, info.pid)
        return None
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(info.pid):
            _remove_files(paths, info.pid)
            return info.pid
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGKILL)
    _remove_files(paths, info.pid)
    return info.pid


def _remove_files(paths: Paths, pid: int) -> None:
    try:
        if int(paths.pid_file.read_text().strip()) != pid:
            return
    except (FileNotFoundError, ValueError):
        pass
    for path in (paths.pid_file, paths.port_file):
        path.unlink(missing_ok=True)


def write_run_files(paths: Paths, pid: int, port: int) -> None:
    """Port first, pid last: a reader that finds the pid file finds a port file that matches it."""
    paths.ensure()
    for path, value in ((paths.port_file, port), (paths.pid_file, pid)):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(value))
        os.replace(tmp, path)


def remove_run_files(paths: Paths, pid: int) -> None:
    _remove_files(paths, pid)


def control_request(
    paths: Paths, method: str, path: str, payload: Mapping[str, Any] | None = None, *, timeout: float = 3.0
) -> dict[str, Any] | None:
    """Call the running sidecar's /_ccgate API with the local token; None if no sidecar runs."""
    info = running_sidecar(paths)
    if info is None:
        return None
    token = ensure_token(paths)
    conn = http.client.HTTPConnection(info.host, info.port, timeout=timeout)
    try:
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {TOKEN_HEADER: token, "content-type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status >= 400:
            raise SidecarError(f"sidecar answered {response.status} to {path}: {data[:200]!r}")
        result = json.loads(data) if data else {}
        return result if isinstance(result, dict) else {}
    except (OSError, http.client.HTTPException) as exc:
        raise SidecarError(f"cannot talk to the sidecar on port {info.port}: {exc}") from exc
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class LedgerWriteProblem:
    """Requests a running sidecar could not write to the ledger: `unsaved` wait in its memory, `dropped` are lost."""

    unsaved: int
    dropped: int
    last_error: str | None

    @property
    def message(self) -> str:
        parts = [f"{self.unsaved} request(s) not written to the ledger yet"] if self.unsaved else []
        if self.dropped:
            parts.append(f"{self.dropped} lost")
        return "ledger: " + ", ".join(parts) + (f" ({self.last_error})" if self.last_error else "")

    @property
    def hint(self) -> str:
        if self.unsaved:
            return "free disk space; rows are kept in memory and written when it can"
        return "lost requests are missing from `ccgate cost` and budgets; `ccgate sidecar logs` says why"


def ledger_write_problem(status: Mapping[str, Any] | None) -> LedgerWriteProblem | None:
    """What a running sidecar's `/_ccgate/status` says about failed ledger writes; None when every request
    reached the ledger (or the sidecar predates `ledger_writes`)."""
    writes = status.get("ledger_writes") if status else None
    if not isinstance(writes, dict):
        return None
    unsaved, dropped, last_error = writes.get("unsaved"), writes.get("dropped"), writes.get("last_error")
    problem = LedgerWriteProblem(
        unsaved=max(0, unsaved) if isinstance(unsaved, int) else 0,
        dropped=max(0, dropped) if isinstance(dropped, int) else 0,
        last_error=last_error if isinstance(last_error, str) and last_error else None,
    )
    return problem if problem.unsaved or problem.dropped else None


def notify_reload(paths: Paths | None = None) -> bool:
    """Tell a running sidecar to re-read config and secrets; False if none runs."""
    if paths is None:
        from ccgate.paths import resolve_paths

        paths = resolve_paths()
    try:
        return control_request(paths, "POST", "/_ccgate/reload") is not None
    except SidecarError:
        return False


def sidecar_url(paths: Paths | None = None) -> str | None:
    if paths is None:
        from ccgate.paths import resolve_paths

        paths = resolve_paths()
    info = running_sidecar(paths)
    return info.url if info else None
