"""Sidecar process control: find a healthy one, or start one detached; stop it; read its files.

Imported by the CLI, so nothing heavy here: no aiohttp, only the standard library.

Whatever listens on the sidecar's port is not trusted until it proves it is this home's sidecar: another local
user can take the port while ours is down and answer `/healthz` like one. The proof is a challenge (see
`identity_proof`): the client sends a fresh nonce, the sidecar answers with an HMAC of it under the local token, which
never goes on the wire before that; where the platform says who owns the listening socket (Linux), it must be us.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import http.client
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ccgate import env
from ccgate.errors import SidecarError
from ccgate.local.paths import Paths
from ccgate.local.paths import home_id as home_id  # re-exported: its home before local.paths

SERVICE_NAME = "ccgate-sidecar"
TOKEN_HEADER = "x-ccgate-token"  # noqa: S105 - a header name, not a secret
# Proof of identity: `GET /healthz` with CHALLENGE_HEADER: <nonce> is answered with PROOF_HEADER: <proof>.
CHALLENGE_HEADER = "x-ccgate-challenge"
PROOF_HEADER = "x-ccgate-proof"
PROOF_CONTEXT = "ccgate-sidecar-proof:v1"
NONCE_BYTES = 32
MAX_HEALTH_BYTES = 64 * 1024
LAUNCH_HEADER = "x-ccgate-launch"
# Launch ids of launches whose Anthropic requests go to the developer's own ANTHROPIC_BASE_URL start with this.
OWN_UPSTREAM_LAUNCH_PREFIX = "gw-"
START_TIMEOUT = 15.0
# A sidecar log larger than this at start-up is moved to `sidecar.log.1` (replacing the previous one).
LOG_ROTATE_BYTES = 10 * 1024 * 1024
# Below this much free space a sidecar that dies at start-up is taken to have died of a full disk.
MIN_FREE_BYTES = 1024 * 1024


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


def ensure_token(paths: Paths) -> str:
    """The per-install local token (0600 file); created once, race-free."""
    _ensure_dirs(paths)
    try:
        token = paths.token_file.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise file_error(exc, "read the local token", paths.token_file) from None
    else:
        _keep_private(paths.token_file)
        return token
    try:
        return _create_token(paths.token_file)
    except OSError as exc:
        raise file_error(exc, "write the local token", paths.token_file) from None


def _keep_private(token_file: Path) -> None:
    """The token admits any request: a file another user owns (they chose the token) is refused, and one that
    others may read (copied with a loose umask, restored from a backup) is made 0600 again."""
    try:
        info = token_file.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            owner = describe_user(info.st_uid) if info.st_uid != os.getuid() else "you, but it is not a regular file"
            raise SidecarError(
                f"the local token {token_file} is not yours alone (owned by {owner}): it is not used",
                hint=f"remove it ({token_file}); a new one is made at the next start",
            )
        if info.st_mode & 0o077:
            os.chmod(token_file, 0o600)
    except OSError as exc:
        raise file_error(exc, "check the permissions of the local token", token_file) from None


def _create_token(token_file: Path) -> str:
    token = "cgt-" + secrets.token_urlsafe(24)
    # write a private temp file, then link it into place: readers never see an empty token file
    fd, tmp = tempfile.mkstemp(prefix=".token-", dir=token_file.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, token_file)
        except FileExistsError:
            return token_file.read_text().strip()
    finally:
        Path(tmp).unlink(missing_ok=True)
    return token


def read_token(paths: Paths) -> str | None:
    """The local token if there is one; None otherwise (then no sidecar of this home can be running)."""
    try:
        token = paths.token_file.read_text().strip()
    except OSError:
        return None
    return token or None


def _ensure_dirs(paths: Paths) -> None:
    try:
        paths.ensure()
    except OSError as exc:
        raise file_error(exc, "create the folder", Path(exc.filename or paths.data_dir)) from None


def file_error(exc: OSError, action: str, path: Path) -> SidecarError:
    """An OSError on the way to a running sidecar, as one line that says which file and what to do."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = f"free disk space on the filesystem that holds {path.parent}, then try again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"check the permissions of {path} and its folder, or point CCGATE_HOME at a writable folder"
    else:
        hint = f"check {path} (free disk space, permissions), or point CCGATE_HOME at another folder"
    return SidecarError(f"cannot {action} {path}: {reason}", hint=hint)


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def is_valid_nonce(nonce: str) -> bool:
    """16 to 64 random bytes as lowercase hex: anything else is refused rather than signed."""
    return 32 <= len(nonce) <= 128 and all(char in "0123456789abcdef" for char in nonce)


def identity_proof(token: str, nonce: str, port: int) -> str:
    """HMAC-SHA256 (hex) of `ccgate-sidecar-proof:v1:<port>:<nonce>` under the local token.

    The port is the one the sidecar accepted the connection on: a listener that relays the challenge to our sidecar
    on another port gets a proof for that port, which the client refuses.
    """
    message = f"{PROOF_CONTEXT}:{port}:{nonce}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def configured_port(default: int, environ: Mapping[str, str]) -> int:
    raw = environ.get(env.SIDECAR_PORT)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise SidecarError(f"{env.SIDECAR_PORT} must be a port number, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise SidecarError(f"{env.SIDECAR_PORT} must be a port number, got {raw!r}")
    return port


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process of this user: another user's process is never our sidecar."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # it exists, but it is another user's
    if _process_uid(pid) not in (None, os.getuid()):
        return False  # root may signal anyone: ask who owns it
    # a zombie child of ours still answers kill(0); reap it if it is ours
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _process_uid(pid: int) -> int | None:
    """The real uid of a process where /proc tells it; None elsewhere."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None


def read_info(paths: Paths) -> SidecarInfo | None:
    """What the pid and port files say, or None if they are missing or unreadable."""
    try:
        pid = int(paths.pid_file.read_text().strip())
        port = int(paths.port_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return SidecarInfo(pid=pid, port=port)


def health(port: int, *, host: str = "127.0.0.1", timeout: float = 1.0) -> dict[str, Any] | None:
    """GET /healthz; None if nothing (or not a ccgate sidecar) answers.

    Unverified: anyone can answer like this. Before trusting the answer, or sending a secret, use `probe_port`.
    """
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        return _healthz(conn, {})[0]
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _healthz(conn: http.client.HTTPConnection, headers: Mapping[str, str]) -> tuple[dict[str, Any] | None, str | None]:
    """One GET /healthz on `conn`: the payload (if it is a ccgate sidecar's) and the proof header it carried."""
    conn.request("GET", "/healthz", headers=dict(headers))
    response = conn.getresponse()
    data = response.read(MAX_HEALTH_BYTES + 1)  # whoever holds the port may not be ours: never read without limit
    if response.status != 200 or len(data) > MAX_HEALTH_BYTES:
        conn.close()
        return None, None
    payload = json.loads(data)
    if not isinstance(payload, dict) or payload.get("service") != SERVICE_NAME:
        return None, None
    return payload, response.getheader(PROOF_HEADER)


def _challenge(conn: http.client.HTTPConnection, port: int, token: str | None) -> tuple[dict[str, Any] | None, bool]:
    """Ask whoever answers on `conn` to prove it holds `token`: (its health payload, whether it proved it)."""
    nonce = new_nonce()
    payload, proof = _healthz(conn, {CHALLENGE_HEADER: nonce})
    if payload is None or token is None or proof is None:
        return payload, False
    return payload, hmac.compare_digest(proof.encode(), identity_proof(token, nonce, port).encode())


@dataclass(frozen=True, slots=True)
class PortProbe:
    """What holds a port: who owns the listening socket (where the platform says) and whether it proved to be ours."""

    port: int
    # something accepted a connection
    answered: bool
    # its /healthz when it answered like a ccgate sidecar (anyone can)
    health: dict[str, Any] | None
    # it answered the challenge with this home's token
    proven: bool
    # uids owning the listening sockets a connection reaches; None where the platform does not say
    owner_uids: frozenset[int] | None

    @property
    def foreign_uid(self) -> int | None:
        """Another user's uid holding the port, if one does."""
        others = sorted(uid for uid in self.owner_uids or () if uid != os.getuid())
        return others[0] if others else None

    def is_ours(self, paths: Paths, pid: int | None = None) -> bool:
        """This home's sidecar (with this pid, when given), and only this user's process holds the port."""
        if not self.proven or self.health is None or self.foreign_uid is not None:
            return False
        if self.health.get("home_id") != home_id(paths):
            return False
        return pid is None or self.health.get("pid") == pid

    def problem(self, paths: Paths) -> SidecarError | None:
        """Why a sidecar of this home cannot use the port; None when it is free or ours."""
        if self.is_ours(paths) or not (self.answered or self.foreign_uid is not None):
            return None
        hint = (
            f"nothing was sent to it; run your sidecar on another port: CCGATE_SIDECAR_PORT={_other_port(self.port)} "
            "or `sidecar.port` in config.toml"
        )
        foreign = self.foreign_uid
        if foreign is not None:
            holder = f"port {self.port} is held by a process of {describe_user(foreign)}"
            if self.health is not None:
                return SidecarError(f"{holder} that answers like a ccgate sidecar but is not yours", hint=hint)
            return SidecarError(f"{holder}, not by your ccgate sidecar", hint=hint)
        if self.health is None:
            return SidecarError(f"port {self.port} is used by another program", hint=hint)
        if self.health.get("home_id") == home_id(paths):
            return SidecarError(
                f"port {self.port} is held by a program that answers like your ccgate sidecar but cannot prove it "
                "holds your local token",
                hint=hint,
            )
        return SidecarError(
            f"port {self.port} is used by a ccgate sidecar of another ccgate home (pid {self.health.get('pid')})",
            hint="stop it, or pick another port: `sidecar.port` in config.toml or CCGATE_SIDECAR_PORT",
        )


def _other_port(port: int) -> int:
    return port + 1 if port < 65535 else 8787


def describe_user(uid: int) -> str:
    import pwd

    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def probe_port(port: int, token: str | None, *, host: str = "127.0.0.1", timeout: float = 1.0) -> PortProbe:
    """Who holds `port`, and whether it proves it holds `token` (which is never sent)."""
    owners = listener_uids(port, host)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    answered = False
    payload: dict[str, Any] | None = None
    proven = False
    try:
        conn.connect()
        answered = True
        payload, proven = _challenge(conn, port, token)
    except (OSError, ValueError, http.client.HTTPException):
        pass
    finally:
        conn.close()
    return PortProbe(port=port, answered=answered, health=payload, proven=proven, owner_uids=owners)


def listener_uids(port: int, host: str = "127.0.0.1") -> frozenset[int] | None:
    """Uids owning the listening TCP sockets that a connection to host:port reaches (Linux: /proc/net/tcp, tcp6).

    The kernel prefers a socket bound to the address itself over a wildcard one, so those decide when there are any.
    None where the platform does not say.
    """
    import ipaddress

    try:
        target = ipaddress.ip_address(host)
    except ValueError:
        return None
    exact: set[int] = set()
    wildcard: set[int] = set()
    tables = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        tables += 1
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != "0A":  # 0A: LISTEN
                continue
            address, _, port_hex = fields[1].partition(":")
            try:
                if int(port_hex, 16) != port:
                    continue
                bound = _proc_address(address)
                uid = int(fields[7])
            except ValueError:
                continue
            if bound == target:
                exact.add(uid)
            elif bound.is_unspecified:
                wildcard.add(uid)
    if not tables:
        return None
    return frozenset(exact or wildcard)


def _proc_address(hex_address: str) -> Any:
    """An address as /proc/net/tcp* writes it (32-bit words in host byte order); IPv4-mapped ones as IPv4."""
    import ipaddress

    raw = bytes.fromhex(hex_address)
    if len(raw) not in (4, 16):
        raise ValueError(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def running_sidecar(paths: Paths) -> SidecarInfo | None:
    """A healthy sidecar serving this home that proved it holds our token, or None (stale files are removed)."""
    info = read_info(paths)
    if info is None:
        return None
    if not pid_alive(info.pid):
        _remove_files(paths, info.pid)
        return None
    token = read_token(paths)
    if token is None:
        return None
    probe = probe_port(info.port, token, host=info.host)
    if not probe.is_ours(paths, info.pid) or probe.health is None:
        return None
    version = probe.health.get("version")
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

    _ensure_dirs(paths)
    try:
        handle = open(paths.lock_file, "a+")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise file_error(exc, "open the start lock", paths.lock_file) from None
    with handle:
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
        probe = probe_port(port, read_token(paths), timeout=2.0)
        if probe.is_ours(paths) and probe.health is not None and isinstance(probe.health.get("pid"), int):
            # ours after all (a slow health check made it look absent): repair the run files and reuse it
            write_run_files(paths, probe.health["pid"], port)
            return SidecarInfo(pid=probe.health["pid"], port=port)
        problem = probe.problem(paths)
        if problem is not None:
            raise problem
    ensure_token(paths)
    process = _start_process(paths, port=port, env=dict(os.environ if environ is None else environ))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            full = _full_filesystem(paths)
            if full is not None:  # its log may be empty for the same reason
                raise SidecarError(
                    f"the sidecar exited at start-up with code {code}: the filesystem that holds {full} is full",
                    hint="free disk space there, then try again",
                )
            raise SidecarError(
                f"the sidecar exited at start-up with code {code}: {_last_log_line(paths)}",
                hint=f"see {paths.log_file} (`ccgate sidecar logs`)",
            )
        info = read_info(paths)
        if info is not None and info.pid == process.pid and running_sidecar(paths) is not None:
            return info
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    raise SidecarError(
        f"the sidecar did not become healthy within {START_TIMEOUT:.0f} s",
        hint=f"see {paths.log_file} (`ccgate sidecar logs`)",
    )


def _start_process(paths: Paths, *, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The detached sidecar, its output appended to its log."""
    try:
        for stale in (paths.pid_file, paths.port_file):
            stale.unlink(missing_ok=True)
    except OSError as exc:
        raise file_error(exc, "remove the stale run file", Path(exc.filename or paths.pid_file)) from None
    try:
        paths.log_file.parent.mkdir(parents=True, exist_ok=True)
        _rotate_log(paths.log_file)
        log_handle = open(paths.log_file, "ab")  # noqa: SIM115 - closed below, the child keeps its own copy
    except OSError as exc:
        raise file_error(exc, "open the sidecar log", paths.log_file) from None
    with log_handle:
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "ccgate.sidecar", "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=log_handle,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        except OSError as exc:
            raise SidecarError(
                f"cannot start the sidecar process: {exc.strerror or exc}",
                hint="the system is short of processes or memory; free some, then try again",
            ) from None


def _full_filesystem(paths: Paths) -> Path | None:
    """A folder of ccgate's on a filesystem with (almost) no space left for a normal user, if there is one."""
    for directory in (paths.data_dir, paths.state_dir, paths.runtime_dir):
        try:
            usage = os.statvfs(directory)
        except OSError:
            continue
        if usage.f_bavail * usage.f_frsize < MIN_FREE_BYTES:
            return directory
    return None


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
    probe = probe_port(info.port, read_token(paths), host=info.host)
    if probe.is_ours(paths, info.pid):
        ours = True
    elif probe.health is not None or probe.foreign_uid is not None:
        ours = False  # something else holds its port: the pid file is stale
    else:
        ours = _looks_like_sidecar(info.pid)  # a busy sidecar may miss the check
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
    from ccgate.local.atomic import write_atomic

    for path, value in ((paths.port_file, port), (paths.pid_file, pid)):
        write_atomic(path, str(value), fsync=False)  # gone with the process: a crash needs no durable copy


def remove_run_files(paths: Paths, pid: int) -> None:
    _remove_files(paths, pid)


def control_request(
    paths: Paths, method: str, path: str, payload: Mapping[str, Any] | None = None, *, timeout: float = 3.0
) -> dict[str, Any] | None:
    """Call the running sidecar's /_ccgate API with the local token; None if no sidecar runs.

    The token goes on the same connection that has just proved to be our sidecar's, never on a new one.
    """
    info = running_sidecar(paths)
    token = read_token(paths)
    if info is None or token is None:
        return None
    conn = http.client.HTTPConnection(info.host, info.port, timeout=timeout)
    try:
        health_payload, proven = _challenge(conn, info.port, token)
        if not proven or health_payload is None or health_payload.get("pid") != info.pid or conn.sock is None:
            raise SidecarError(
                f"the program on port {info.port} did not prove to be your ccgate sidecar; nothing was sent to it",
                hint="`ccgate sidecar status` and `ccgate doctor` say what holds the port",
            )
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {TOKEN_HEADER: token, "content-type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status >= 400:
            raise SidecarError(f"sidecar answered {response.status} to {path}: {data[:200]!r}")
        result = json.loads(data) if data else {}
        return result if isinstance(result, dict) else {}
    except (OSError, ValueError, http.client.HTTPException) as exc:
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
        from ccgate.local.paths import resolve_paths

        paths = resolve_paths()
    try:
        return control_request(paths, "POST", "/_ccgate/reload") is not None
    except SidecarError:
        return False


def sidecar_url(paths: Paths | None = None) -> str | None:
    if paths is None:
        from ccgate.local.paths import resolve_paths

        paths = resolve_paths()
    info = running_sidecar(paths)
    return info.url if info else None
