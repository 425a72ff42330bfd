"""The top-level group builds only the command that runs; `ccgate --help` lists them all without building any."""

from __future__ import annotations

import pytest
import typer
from cli_runner import run_main
from typer.core import TyperGroup

from ccgate.cli import build_app, commands


def test_the_registry_names_every_command_of_every_module_once() -> None:
    found: dict[str, str] = {}
    for module_name in commands.MODULES:
        for name in commands.build_module(module_name):
            assert name not in found, f"{name} registered by {found[name]} and {module_name}"
            found[name] = module_name
    assert found == commands.COMMANDS


@pytest.mark.parametrize("width", [78, 50])
def test_help_lists_the_same_lines_as_typer_building_every_command(width: int) -> None:
    group = typer.main.get_command(build_app())
    assert isinstance(group, commands.LazyGroup)
    ctx = group.make_context("ccgate", ["--version"], resilient_parsing=True)

    def render(method: object) -> str:
        formatter = ctx.make_formatter()
        formatter.width = width
        method(group, ctx, formatter)  # type: ignore[operator]
        return formatter.getvalue()

    built = render(TyperGroup.format_commands)  # typer's own: builds each command to ask for its help
    assert render(commands.LazyGroup.format_commands) == built
    assert built.count("\n") == len(commands.COMMANDS) + 1


def test_help_builds_no_command_and_a_command_builds_only_its_module(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    original = commands.build_module

    def recording(module_name: str) -> dict[str, object]:
        built.append(module_name)
        return original(module_name)  # type: ignore[return-value]

    monkeypatch.setattr(commands, "build_module", recording)
    code, out, _ = run_main(capsys, monkeypatch, "--help")
    assert code == 0 and "completions" in out and "Show what Claude Code cost" in out
    assert built == []
    code, out, _ = run_main(capsys, monkeypatch, "cost", "--help")
    assert code == 0 and "--what-if" in out
    assert built == ["ccgate.cli.cost"]
    code, _, err = run_main(capsys, monkeypatch, "cots")
    assert code == 2 and "No such command 'cots'" in err and "cost" in err  # typer's suggestion still comes


def test_each_module_registers_once_per_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gateway`'s register adds `admin` to its module-level app: a second call nested it again, and every further
    command of the process (tests run hundreds) built a tree twice the size of the one before."""
    for _ in range(3):
        code, out, _ = run_main(capsys, monkeypatch, "gateway", "--help")
        assert code == 0 and [line.split()[0] for line in out.splitlines() if line.startswith("  admin ")] == ["admin"]
        run_main(capsys, monkeypatch, "--help")
    from ccgate.cli.gateway import gateway_app

    names = [group.name for group in gateway_app.registered_groups]
    assert len(names) == len(set(names)), names
