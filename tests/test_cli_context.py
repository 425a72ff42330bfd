"""The CLI's AppContext travels in click's context object: one per invocation, none left behind in a global."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ccgate.cli import app
from ccgate.cli._app import AppContext, ctx


def test_each_invocation_has_its_own_context(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["config", "path"], env={"CCGATE_HOME": str(tmp_path / "a")})
    second = runner.invoke(app, ["config", "path"], env={"CCGATE_HOME": str(tmp_path / "b")})
    assert first.exit_code == 0 and second.exit_code == 0, (first.output, second.output)
    assert first.output.strip() == str(tmp_path / "a" / "config.toml")
    assert second.output.strip() == str(tmp_path / "b" / "config.toml")


def test_outside_a_command_ctx_is_a_fresh_context() -> None:
    assert isinstance(ctx(), AppContext) and ctx() is not ctx()
