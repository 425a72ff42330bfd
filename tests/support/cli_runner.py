"""Run the real `ccgate` entry point in-process, the way a user's shell would, and read what it prints."""

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


def table_column(out: str, header: str, next_header: str) -> str:
    """The text of one table column (folded cells joined), sliced by where the headers stand."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if header in line and next_header in line)
    start, end = lines[head].index(header), lines[head].index(next_header)
    return "".join(line[start:end].strip() for line in lines[head + 1 :])
