"""Run the real `ccgate` entry point in-process, the way a user's shell would, and capture what it prints."""

from __future__ import annotations

import io
import sys

import pytest

from ccgate.cli import main
from ccgate.cli._app import reset_context


def run_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    """Returns (exit code, stdout, stderr); errors go through the same one-line-plus-hint path as in a shell."""
    reset_context()
    monkeypatch.setattr(sys, "argv", ["ccgate", *args])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err
