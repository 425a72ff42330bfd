"""`ccgate --version`: one line, and neither it nor `--help` pays for the heavy imports."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cli_runner import run_main

import ccgate

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
HEAVY = ("rich", "aiohttp", "sqlite_utils", "genai_prices", "keyring")


def test_version_prints_name_and_version(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_main(capsys, monkeypatch, "--version")
    assert code == 0, err
    assert out == f"ccgate {ccgate.__version__}\n" and err == ""
    assert ccgate.__version__ == tomllib.loads(PYPROJECT.read_text())["project"]["version"]


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_skip_the_heavy_imports(flag: str) -> None:
    script = (
        "import sys\n"
        f"sys.argv = ['ccgate', {flag!r}]\n"
        "from ccgate.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
