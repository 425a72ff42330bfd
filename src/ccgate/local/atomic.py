"""The one way ccgate replaces a file: readers see the old content or the new, never a half-written file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE = 0o600


def write_atomic(path: Path, data: bytes | str, *, mode: int | None = PRIVATE, fsync: bool = True) -> None:
    """Write `data` to a temp file next to `path`, then rename it over `path`. Raises OSError; the temp file is
    removed on any failure.

    `mode` is the new file's exact permission bits (not narrowed by the umask); the temp file is private from
    its first byte, so a secret is never readable by others even for a moment. `mode=None` keeps the mode of
    the file being replaced (0600 when there is none). With `fsync`, the data and then the directory entry are
    synced: after a crash the file holds the old or the new content, and the new one once this returns.
    """
    import tempfile  # not at import time: the status line's fast path imports this module

    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = PRIVATE
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600, O_EXCL
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """The rename itself survives a crash once the directory is synced; some file systems refuse (ignored)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
