"""`ccgate --version`: one line, and neither it nor `--help` pays for the heavy imports."""

from __future__ import annotations

import ast
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


def imported_after(argv: list[str], watched: tuple[str, ...]) -> list[str]:
    """The top-level packages of `watched` that `ccgate ARGV` imported, run in a fresh interpreter."""
    script = (
        "import sys\n"
        f"sys.argv = ['ccgate', *{argv!r}]\n"
        "from ccgate.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({watched!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(ast.literal_eval(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_skip_the_heavy_imports(flag: str) -> None:
    assert imported_after([flag], (*HEAVY, "pydantic")) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["cost"],
        ["cost", "month", "--by", "day,model", "--json"],
        ["blocks", "--json"],
        ["statusline"],
    ],
)
def test_commands_skip_typers_pydantic_coercion(argv: list[str]) -> None:
    """typer 0.29 builds a pydantic adapter for every option (~0.3 s); ccgate's strings and absent values skip it."""
    assert imported_after(argv, ("pydantic",)) == []


TOY_APP = """
import sys
from pathlib import Path
import typer
if sys.argv[1] == "lazy":
    from ccgate.cli import _typer_coercion
    _typer_coercion.install()
app = typer.Typer()
@app.command()
def run(
    word: str,
    maybe: str | None = typer.Option(None, "--maybe"),
    many: list[str] = typer.Option([], "--many"),  # noqa: B008
    count: int | None = typer.Option(None, "--count", min=1),
    where: Path | None = typer.Option(None, "--where"),
    upper: str | None = typer.Option(None, "--upper", parser=str.upper),
) -> None:
    print(repr((word, maybe, many, count, where, upper)))
app(sys.argv[2:], standalone_mode=True)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["w"],
        ["w", "--maybe", "x", "--many", "a", "--many", "b=c", "--upper", "up"],
        ["w", "--count", "3", "--where", "some/dir"],
        ["w\udcff", "--maybe", " spaced "],  # undecodable bytes and spaces come through as typer gives them
        ["w", "--count", "0"],  # below min: typer's message
        ["w", "--count", "three"],  # not a number: typer's message
        [],  # missing argument
    ],
)
def test_lazy_coercion_gives_typers_values_and_errors(argv: list[str]) -> None:
    """The wrapped coercion returns what typer's own does, and fails with the same message."""
    outcomes = []
    for mode in ("typer", "lazy"):
        done = subprocess.run([sys.executable, "-c", TOY_APP, mode, *argv], capture_output=True, text=True, timeout=60)
        outcomes.append((done.returncode, done.stdout, done.stderr))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] != 0 or outcomes[0][1].startswith("('w")
