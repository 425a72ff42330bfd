"""`write_atomic`: the one file-replacing helper keeps the old file on failure and sets modes exactly."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ccgate.local.atomic import write_atomic


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_atomic(tmp_path / "secret.json", "{}")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "secret.json") == 0o600
    assert (tmp_path / "secret.json").read_text() == "{}"


def test_mode_none_keeps_the_replaced_files_mode(tmp_path: Path) -> None:
    target = tmp_path / "settings.json"
    target.write_text("old")
    target.chmod(0o640)
    write_atomic(target, b"new", mode=None, fsync=False)
    assert target.read_bytes() == b"new" and mode_of(target) == 0o640
    write_atomic(tmp_path / "fresh.json", b"x", mode=None)
    assert mode_of(tmp_path / "fresh.json") == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    tmp_path = tmp_path / "dir"
    tmp_path.mkdir()
    target = tmp_path / "config.toml"
    target.write_text("old")
    (tmp_path / "blocker").mkdir()
    with pytest.raises(OSError):
        write_atomic(tmp_path / "blocker", "data")  # a directory cannot be replaced by a file
    with pytest.raises(OSError):
        write_atomic(tmp_path / "missing-dir" / "x", "data")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "config.toml"]
