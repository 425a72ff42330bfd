"""The sidecar's second door: a unix socket in its private runtime folder, for Claude Code's `ANTHROPIC_UNIX_SOCKET`.

Why: after `ccgate install`, Claude Code's settings name the sidecar's TCP port for good. Should the sidecar die
and another local user bind that port, Claude Code would send its requests, credentials included, to them. No one
else can create a file in this user's 0700 runtime folder, so a socket there cannot be squatted; it is 0600 too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("ccgate.sidecar")
# sun_path holds 108 bytes on Linux, 104 on macOS, the terminating NUL included
MAX_SOCKET_PATH = 103


def usable(path: Path) -> bool:
    """Whether this platform and this path length allow a unix socket there."""
    return hasattr(socket, "AF_UNIX") and len(os.fsencode(path)) <= MAX_SOCKET_PATH


def private_folder(path: Path) -> bool:
    """Whether only this user can create or replace a file in the socket's folder: what the protection rests on."""
    try:
        info = path.parent.stat()
    except OSError:
        return False
    return info.st_uid == os.getuid() and info.st_mode & 0o022 == 0


def remove_stale(path: Path) -> None:
    """A socket left by a sidecar that died (the caller holds the instance lock: no live sidecar owns it).
    Anything else with that name is not ours to delete."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()
    except FileNotFoundError:
        return


async def listen_unix(runner: web.AppRunner, path: Path) -> web.UnixSite | None:
    """Serve `runner`'s app on a 0600 socket at `path` too; None (logged) where that cannot be: the TCP port still
    serves, and `doctor`/`install --socket` say that the socket is missing."""
    if not usable(path):
        log.warning("no unix socket: %s is too long a path for one (or the platform has none)", path)
        return None
    if not private_folder(path):
        log.warning("no unix socket: others can write to %s (make it yours, mode 0700)", path.parent)
        return None
    remove_stale(path)
    site = web.UnixSite(runner, str(path))
    mask = os.umask(0o177)  # 0600 from the start: no moment in which another user could connect
    try:
        await site.start()
    except OSError as exc:
        log.warning("no unix socket at %s: %s", path, exc.strerror)
        return None
    finally:
        os.umask(mask)
    return site


def remove_socket(path: Path) -> None:
    with contextlib.suppress(OSError):
        remove_stale(path)


def unix_peer_uid(transport: Any) -> int | None:
    """The uid of the process at the other end of a unix-socket connection (Linux `SO_PEERCRED`); None when the
    connection is not a unix socket or the platform does not say."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    peercred = getattr(socket, "SO_PEERCRED", None)
    if sock is None or peercred is None or getattr(sock, "family", None) != getattr(socket, "AF_UNIX", None):
        return None
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
    except OSError:
        return None
    return int(uid)
