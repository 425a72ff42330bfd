"""`sidecar start` and `launch` on a full disk or with files in the way: one line and what to do, no traceback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ccgate.local.paths import resolve_paths
from ccgate.sidecar.process import stop_sidecar

CCGATE = [sys.executable, "-m", "ccgate"]


def run_ccgate(
    *args: str, env: dict[str, str], preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CCGATE, *args], env=env, capture_output=True, text=True, timeout=60, check=False, preexec_fn=preexec_fn
    )


def one_error(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """The error line and the hint line, after checking that is all there is."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("ccgate: error: ") and lines[1].startswith("  hint: "), lines
    return lines[0].removeprefix("ccgate: error: "), lines[1].removeprefix("  hint: ")


@pytest.fixture
def env(isolated_home: Path) -> Iterator[dict[str, str]]:
    environ = {**os.environ, "CCGATE_SIDECAR_PORT": "0"}
    yield environ
    stop_sidecar(resolve_paths(environ), timeout=5)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A ccgate home on a 64 KB tmpfs (root only: skipped where mounting is not permitted); `fill_up` fills it."""
    if os.getuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        (mount_point / "home" / "data").mkdir(parents=True)
        yield mount_point / "home"
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_up(home: Path) -> None:
    with open(home.parent / "filler", "wb", buffering=0) as filler, pytest.raises(OSError, match="No space left"):
        while True:
            filler.write(b"\0" * 4096)


def test_start_on_a_full_disk_says_which_file_and_to_free_space(env: dict[str, str], tiny_fs: Path) -> None:
    fill_up(tiny_fs)
    env = {**env, "CCGATE_HOME": str(tiny_fs)}
    for command in (["sidecar", "start"], ["launch", "true"]):
        message, hint = one_error(run_ccgate(*command, env=env))
        assert message == f"cannot write the local token {tiny_fs / 'data' / 'local-token'}: No space left on device"
        assert hint == f"free disk space on the filesystem that holds {tiny_fs / 'data'}, then try again"


def test_a_sidecar_that_dies_of_a_full_disk_at_start_up_says_so(env: dict[str, str], tiny_fs: Path) -> None:
    (tiny_fs / "data" / "local-token").write_text("cgt-written-before-the-disk-filled")
    fill_up(tiny_fs)
    env = {**env, "CCGATE_HOME": str(tiny_fs)}
    message, hint = one_error(run_ccgate("sidecar", "start", env=env))
    assert message.startswith("the sidecar exited at start-up with code 1: the filesystem that holds ")
    assert message.endswith(" is full") and hint == "free disk space there, then try again"


def _no_file_may_grow() -> None:
    """RLIMIT_FSIZE 0: every write fails with EFBIG, as on a full disk (SIGXFSZ ignored, so it is an error)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_start_when_no_file_may_grow_is_one_line(env: dict[str, str], isolated_home: Path) -> None:
    message, hint = one_error(run_ccgate("sidecar", "start", env=env, preexec_fn=_no_file_may_grow))
    token = isolated_home / "data" / "local-token"
    assert message == f"cannot write the local token {token}: File too large"
    assert hint.startswith("free disk space")


def test_a_token_path_that_is_a_folder_is_one_line(env: dict[str, str], isolated_home: Path) -> None:
    token = isolated_home / "data" / "local-token"
    token.mkdir(parents=True)
    message, hint = one_error(run_ccgate("sidecar", "start", env=env))
    assert message == f"cannot read the local token {token}: Is a directory"
    assert str(token) in hint


def test_a_log_path_that_is_a_folder_is_one_line(env: dict[str, str], isolated_home: Path) -> None:
    log = isolated_home / "state" / "sidecar.log"
    log.mkdir(parents=True)
    message, hint = one_error(run_ccgate("sidecar", "start", env=env))
    assert message == f"cannot open the sidecar log {log}: Is a directory"
    assert str(log) in hint
