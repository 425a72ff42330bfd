"""Claude Code's settings files as bytes on disk: read strictly, write atomically with the file's mode, back up, diff.

Nothing here decides what goes into the file (see `installing`); this module only guarantees that a user's settings
are never lost: a file that is not a JSON object is refused untouched, every write replaces the file in one step
and keeps its permissions, and a private backup (0600, or stricter like the original) is taken first.
"""

from __future__ import annotations

import difflib
import json
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ccgate.errors import UserInputError

# Settings files are a few KB; anything this large is not one, and is refused rather than read into memory.
MAX_SETTINGS_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SettingsFile:
    """One settings file as found: its bytes (None when it does not exist), parsed object and permission bits."""

    path: Path
    raw: bytes | None
    data: dict[str, Any]
    mode: int | None

    @property
    def exists(self) -> bool:
        return self.raw is not None

    @property
    def text(self) -> str:
        return "" if self.raw is None else self.raw.decode("utf-8", errors="replace")


def real_path(path: Path) -> Path:
    """Where a write must go: through a symlink (dotfile managers link settings.json), never replacing it."""
    return Path(os.path.realpath(path))


def read_settings(path: Path) -> SettingsFile:
    """The file, parsed; a file that is not a JSON object is an error naming it, and stays as it is."""
    target = real_path(path)
    try:
        info = target.stat()
        if not stat.S_ISREG(info.st_mode):
            raise UserInputError(f"{path} is not a regular file", hint="move it aside, then run this again")
        if info.st_size > MAX_SETTINGS_BYTES:
            raise UserInputError(f"{path} is larger than {MAX_SETTINGS_BYTES} bytes: not a settings file")
        raw = target.read_bytes()
    except FileNotFoundError:
        return SettingsFile(path=path, raw=None, data={}, mode=None)
    except OSError as exc:
        raise UserInputError(f"cannot read {path}: {exc.strerror}", hint="check its permissions") from None
    data = parse_settings(path, raw)
    return SettingsFile(path=path, raw=raw, data=data, mode=stat.S_IMODE(info.st_mode))


def parse_settings(path: Path, raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserInputError(
            f"{path} is not valid JSON ({exc}); nothing was changed",
            hint="fix the file (Claude Code cannot read it either), then run this again",
        ) from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path} holds JSON but not an object; nothing was changed", hint="fix the file")
    return data


def render(data: dict[str, Any]) -> str:
    """The text ccgate writes: two-space JSON as Claude Code itself writes it, non-ASCII kept readable."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_atomic(path: Path, content: bytes, *, mode: int) -> None:
    """Replace the file in one step (readers see the old or the new file, never half of one), with `mode`,
    through a symlink rather than over it; a failure is one line and leaves the file as it was."""
    from ccgate.local import atomic

    target = real_path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_atomic(target, content, mode=mode)
    except OSError as exc:
        raise UserInputError(
            f"cannot write {path}: {exc.strerror}; it was left as it was",
            hint="check free disk space and the folder's permissions",
        ) from None


def backup(settings: SettingsFile, now: datetime) -> Path | None:
    """A copy of the file as it was, next to it; None when there was no file."""
    if settings.raw is None:
        return None
    try:
        return write_backup(real_path(settings.path), settings.raw, settings.mode, now)
    except OSError as exc:
        raise UserInputError(
            f"cannot back up {settings.path}: {exc.strerror}; nothing was changed",
            hint="check free disk space and the folder's permissions",
        ) from None


def backup_mode(mode: int | None) -> int:
    """0600, or the original's bits if stricter: settings may hold API keys, and a backup lives on after the user
    tightens (or ccgate rewrites) the original, so it is never readable by others, whatever the umask."""
    return 0o600 if mode is None else mode & 0o600


def write_backup(target: Path, raw: bytes, mode: int | None, now: datetime) -> Path:
    """`raw` in a new file `<name>.ccgate-backup-<UTC time>[-N]` next to `target`, with `backup_mode(mode)`.
    Never overwrites nor follows an existing name (O_EXCL); raises OSError, leaving no partial backup."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    candidate = target.with_name(f"{target.name}.ccgate-backup-{stamp}")
    counter = 1
    while True:
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            break
        except FileExistsError:
            counter += 1
            candidate = target.with_name(f"{target.name}.ccgate-backup-{stamp}-{counter}")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), backup_mode(mode))
            handle.write(raw)
    except OSError:
        candidate.unlink(missing_ok=True)
        raise
    return candidate


def unified_diff(path: Path, before: str, after: str) -> str:
    """What a change would do to the file, as `diff -u` shows it."""
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"{path} (now)" if before else "/dev/null",
        tofile=f"{path} (after)",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
