"""Requests the ledger refused at shutdown, saved as JSON lines elsewhere and written to the ledger at the next start.

A sidecar whose ledger cannot be written (disk full, I/O error, a lock held too long) keeps requests in memory;
stopping it would lose them. The writer spills them to the first location that accepts the whole file — the
sidecar's runtime dir, `$XDG_RUNTIME_DIR` (a tmpfs, so another filesystem than a full disk), then the system temp
dir — and the next writer replays every spill it finds, deleting a file only after its rows are committed.
Rows are keyed by request id and the writer's upsert never reopens a finished row, so a replay is idempotent.

A spill holds the same values as the ledger (never a secret). Files are 0600, in directories only this user can
enter, and never followed through a symlink. Standard library only (and `ccgate.local.atomic`).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccgate.local.atomic import write_atomic

SPILL_PREFIX = "ledger-spill-"
SPILL_SUFFIX = ".jsonl"
# Written by a sidecar as it exits: how many requests it spilled and how many it lost, for `sidecar stop`.
REPORT_NAME = "sidecar-stopped.json"


def spill_dirs(runtime_dir: Path, home_id: str, environ: Mapping[str, str]) -> list[Path]:
    """Where spills may go, in order of preference; each is private to this user and this ccgate home."""
    dirs = [runtime_dir / "spill"]
    xdg = environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_absolute():
        dirs.append(Path(xdg) / f"ccgate-{home_id}")
    dirs.append(Path(tempfile.gettempdir()) / f"ccgate-{os.getuid()}-{home_id}")
    return dirs


def _private_dir(directory: Path) -> bool:
    """Create `directory` (0700) or accept it only when it is a real directory of ours that no one else can enter:
    in a shared temp dir another user could have made it first, or put a symlink there."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700, parents=True)
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def _write_new(path: Path, data: bytes) -> None:
    """All of `data` in a new 0600 file, synced; a partial file is removed. Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def encode_rows(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(json.dumps(dict(row), default=str, separators=(",", ":")).encode() + b"\n" for row in rows)


def write_spill(dirs: Sequence[Path], data: bytes, *, pid: int) -> Path | None:
    """`data` in a new spill file in the first directory that takes all of it; None when none does."""
    name = f"{SPILL_PREFIX}{time.time_ns():020d}-{pid}{SPILL_SUFFIX}"
    for directory in dirs:
        path = directory / name
        try:
            if not _private_dir(directory):
                continue
            write_atomic(path, data)  # complete and synced before it gets the name a replay looks for
        except OSError:
            continue
        return path
    return None


def probe(dirs: Sequence[Path], size: int) -> Path | None:
    """The first directory that takes a file of `size` bytes now (written, synced and removed again)."""
    for directory in dirs:
        path = directory / f".probe-{os.getpid()}-{time.time_ns()}"
        try:
            if not _private_dir(directory):
                continue
            _write_new(path, b"\0" * size)
        except OSError:
            continue
        path.unlink(missing_ok=True)
        return directory
    return None


def has_spills(dirs: Sequence[Path]) -> bool:
    """Whether any spill waits (a directory listing, no file read): cheap enough for every ledger command."""
    for directory in dirs:
        if not _owned_dir(directory):
            continue
        with contextlib.suppress(OSError):
            if any(
                path.name.startswith(SPILL_PREFIX) and path.name.endswith(SPILL_SUFFIX) for path in directory.iterdir()
            ):
                return True
    return False


@dataclass(frozen=True, slots=True)
class Spills:
    """Every spill found: the files, and their rows (the latest file's row wins for a request in several)."""

    files: tuple[Path, ...]
    rows: tuple[dict[str, Any], ...]
    unreadable: int


def read_spills(dirs: Sequence[Path]) -> Spills:
    """Spill files in `dirs`, oldest first (names start with a nanosecond time); broken lines are counted."""
    files: list[Path] = []
    for directory in dirs:
        if not _owned_dir(directory):
            continue
        with contextlib.suppress(OSError):
            files.extend(
                path
                for path in directory.iterdir()
                if path.name.startswith(SPILL_PREFIX) and path.name.endswith(SPILL_SUFFIX)
            )
    files.sort(key=lambda path: path.name)
    rows: dict[str, dict[str, Any]] = {}
    unreadable = 0
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as handle:
                lines = handle.read().splitlines()
        except OSError:
            unreadable += 1
            continue
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                unreadable += 1
                continue
            if isinstance(row, dict) and isinstance(row.get("id"), str):
                rows[row["id"]] = row
            else:
                unreadable += 1
    return Spills(files=tuple(files), rows=tuple(rows.values()), unreadable=unreadable)


def _owned_dir(directory: Path) -> bool:
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def remove(files: Iterable[Path]) -> None:
    for path in files:
        with contextlib.suppress(OSError):
            path.unlink()


def write_report(dirs: Sequence[Path], *, pid: int, spilled: int, lost: int, spill_file: Path | None) -> None:
    """A few bytes for `sidecar stop`, in the first directory that takes them (replacing an older report)."""
    data = json.dumps(
        {"pid": pid, "spilled": spilled, "lost": lost, "spill_file": None if spill_file is None else str(spill_file)}
    ).encode()
    for directory in dirs:
        try:
            if not _private_dir(directory):
                continue
            write_atomic(directory / REPORT_NAME, data)
        except OSError:
            continue
        return


def read_report(dirs: Sequence[Path], pid: int) -> dict[str, Any] | None:
    """The exit report of the sidecar with `pid`, or None when it wrote none (it was killed, or nothing took it)."""
    for directory in dirs:
        if not _owned_dir(directory):
            continue
        try:
            report = json.loads((directory / REPORT_NAME).read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and report.get("pid") == pid:
            return report
    return None
