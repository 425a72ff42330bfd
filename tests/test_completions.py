"""Shell completions: the committed scripts match the CLI, parse in their shells, and complete what a user types."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import pytest
import typer

from ccgate.cli import build_app, main
from ccgate.cli._app import reset_context
from ccgate.cli.completions import (
    SCRIPT_FILES,
    Shell,
    _help_line,
    command_tree,
    fixed_value_keys,
    generate,
    install_path,
)

REPO = Path(__file__).resolve().parent.parent
COMPLETIONS = REPO / "completions"
SHELLS = list(Shell)
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    """Invoke the real entry point; returns (exit code, stdout, stderr)."""
    reset_context()
    monkeypatch.setattr(sys, "argv", ["ccgate", *args])
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exited:
        code = exited.code
    captured = capsys.readouterr()
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def script_path(shell: Shell) -> Path:
    return COMPLETIONS / SCRIPT_FILES[shell]


# --- the committed files are current ---------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS, ids=str)
def test_committed_script_matches_the_cli(shell: Shell) -> None:
    committed = script_path(shell)
    command = f"ccgate completions generate {shell.value} > completions/{SCRIPT_FILES[shell]}"
    assert committed.exists(), f"completions/{SCRIPT_FILES[shell]} is missing; run `{command}`"
    assert committed.read_text(encoding="utf-8") == generate(shell), (
        f"completions/{SCRIPT_FILES[shell]} is stale (the CLI changed); regenerate it: `{command}`"
    )


def test_generate_command_prints_the_script(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, monkeypatch, "completions", "generate", "zsh")
    assert code == 0
    assert out == generate(Shell.zsh)
    assert out.startswith("#compdef ccgate\n")


def test_generate_refuses_an_unknown_shell(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, "completions", "generate", "tcsh")
    assert code == 2
    assert out == ""
    assert "tcsh" in err


# --- the tree ---------------------------------------------------------------------------------------------------


def test_tree_covers_every_registered_command() -> None:
    tree, _ = command_tree()
    group = typer.main.get_command(build_app())
    names = {sub.name for sub in tree.subcommands}
    registered = {name for name, sub in group.commands.items() if not getattr(sub, "hidden", False)}  # type: ignore[attr-defined]
    assert names == registered
    assert {"launch", "cost", "budget", "model", "provider", "completions"} <= names
    paths = {node.key for node in tree.walk()}
    assert {"provider key set", "completions install", "sidecar logs"} <= paths


def test_typer_own_completion_options_are_disabled() -> None:
    tree, _ = command_tree()
    root_options = {name for option in tree.options for name in option.names}
    assert root_options == {"-h", "--help", "--version"}  # no --install-completion / --show-completion


def test_every_fixed_value_names_a_real_parameter() -> None:
    _, used = command_tree()
    unused = fixed_value_keys() - used
    assert not unused, f"completions._fixed_values names parameters the CLI no longer has: {sorted(unused)}"


def test_budget_periods_offered_are_accepted() -> None:
    from ccgate.cli.completions import BUDGET_PERIODS
    from ccgate.core.budgets import parse_period

    for period in BUDGET_PERIODS:
        parse_period(period)


class Colour(str, Enum):  # noqa: UP042 - the str+Enum style many typer CLIs use
    red = "red"
    green = "green"


def test_new_commands_choices_flags_and_paths_are_picked_up() -> None:
    """A command module added later needs nothing in completions.py: the walk finds it all."""
    app = typer.Typer()
    tools = typer.Typer(help="Tools.")

    @tools.command("paint")
    def paint(
        colour: Annotated[Colour, typer.Argument(help="Which colour.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Where to write.")] = Path("x"),
        dry: Annotated[bool, typer.Option("--dry-run/--for-real", help="Pretend.")] = False,
    ) -> None:
        """Paint things. More text here."""

    @tools.command("secret", hidden=True)
    def secret() -> None:
        """Not for users."""

    app.add_typer(tools, name="tools")

    @app.command("other")
    def other() -> None:
        """Another."""

    command = typer.main.get_command(app)
    tree, _ = command_tree(command)
    paint_node = next(node for node in tree.walk() if node.key == "tools paint")
    assert paint_node.help == "Paint things"
    assert paint_node.arguments[0].values.words == ("red", "green")
    out_option = next(option for option in paint_node.options if "--out" in option.names)
    assert out_option.names == ("-o", "--out")
    assert out_option.takes_value
    assert out_option.values.kind == "files"
    dry_option = next(option for option in paint_node.options if "--dry-run" in option.names)
    assert dry_option.names == ("--dry-run", "--for-real")
    assert not dry_option.takes_value
    assert "tools secret" not in {node.key for node in tree.walk()}

    bash = generate(Shell.bash, command)
    assert "'tools') subs='paint'" in bash
    assert "'tools paint #0') kind=words words='red green'" in bash
    assert "'tools paint -o'|'tools paint --out') kind=files" in bash
    assert "secret" not in bash
    fish = generate(Shell.fish, command)
    assert "complete -c ccgate -n '__ccgate_at \"tools paint\"' -s 'o' -l 'out' -r -F -d 'Where to write'" in fish
    zsh = generate(Shell.zsh, command)
    assert "'(-o --out)--out=[Where to write]:out:_files'" in zsh


def test_help_line_is_one_short_sentence() -> None:
    assert _help_line("Provider name, e.g. anthropic, groq.") == "Provider name, e.g. anthropic, groq"
    assert _help_line("Show spend. Reads the ledger.\n\nMore.") == "Show spend"
    assert _help_line(None) == ""
    assert len(_help_line("word " * 50)) <= 90


# --- syntax -----------------------------------------------------------------------------------------------------


def test_bash_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(script_path(Shell.bash))], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_zsh_script_parses() -> None:
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed")
    result = subprocess.run(["zsh", "-n", str(script_path(Shell.zsh))], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_fish_script_parses() -> None:
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed")
    result = subprocess.run(["fish", "--no-execute", str(script_path(Shell.fish))], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- behaviour: bash --------------------------------------------------------------------------------------------


def bash_complete(words: list[str], *, cwd: Path | None = None, prelude: str = "") -> list[str]:
    """Run the committed bash completion the way readline does: COMP_WORDS/COMP_CWORD set, the function called."""
    line = " ".join(words)
    script = "\n".join(
        [
            prelude,
            f"source {shlex.quote(str(script_path(Shell.bash)))}",
            "COMP_WORDS=(" + " ".join(shlex.quote(word) for word in words) + ")",
            f"COMP_CWORD={len(words) - 1}",
            f"COMP_LINE={shlex.quote(line)}",
            f"COMP_POINT={len(line)}",
            "_ccgate",
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ]
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["ccgate", "co"], ["completions", "config", "cost"]),
        (["ccgate", "cost", "--by", ""], ["model", "provider", "project", "session", "day", "week", "month"]),
        (["ccgate", "cost", "--by", "=", "pr"], ["provider", "project"]),  # `--by=pr`: readline splits at =
        (["ccgate", "cost", ""], ["today", "yesterday", "week", "month", "all"]),
        (["ccgate", "cost", "--since", "2025-01-01", "w"], ["week"]),
        (
            ["ccgate", "cost", "--"],
            ["--since", "--until", "--by", "--last", "--chart", "--json", "--csv", "--what-if", "--help"],
        ),
        (
            ["ccgate", "budget", "set", ""],
            ["daily", "weekly", "monthly", "hourly", "yearly", "1h", "1d", "1w", "1mo", "1y"],
        ),
        (["ccgate", "budget", "set", "-p", "x", "d"], ["daily"]),
        (["ccgate", "model", "set", ""], ["opus", "sonnet", "haiku"]),
        (["ccgate", "model", "set", "haiku", ""], []),  # provider/model: free text
        (["ccgate", "provider", "key", ""], ["delete", "set"]),
        (["ccgate", "provider", "key", "set", "gr"], ["groq"]),
        (["ccgate", "provider", "add", "x", "--kind", ""], ["anthropic", "openai"]),
        (["ccgate", "price", "show", "m", "-p", "open"], ["openai", "openrouter"]),
        (["ccgate", "sidecar", "logs", "-"], ["-n", "--lines", "-f", "--follow", "-h", "--help"]),
        (["ccgate", "completions", "generate", ""], ["bash", "zsh", "fish"]),
        (["ccgate", "logs", "--session", ""], []),
    ],
    ids=lambda value: "|".join(value) if value and value[0] == "ccgate" else "",
)
def test_bash_completes(words: list[str], expected: list[str]) -> None:
    assert sorted(bash_complete(words)) == sorted(expected)


def test_bash_completes_files_and_directories(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "projects").mkdir(parents=True)
    (work / "settings.json").write_text("{}")
    assert bash_complete(["ccgate", "statusline", "install", "--settings", "se"], cwd=work) == ["settings.json"]
    assert bash_complete(["ccgate", "budget", "set", "--project", ""], cwd=work) == ["projects"]


def test_bash_launch_completes_commands_then_hands_over(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "ccgate-test-tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    prelude = f"PATH={shlex.quote(str(tool.parent))}:$PATH"
    assert bash_complete(["ccgate", "launch", "ccgate-test-t"], prelude=prelude) == ["ccgate-test-tool"]
    # after the command word, that command's own completion takes over (bash-completion's _command_offset)
    offset = "_command_offset() { COMPREPLY=(offset:$1:${COMP_WORDS[$1]}); }"
    assert bash_complete(["ccgate", "launch", "claude", "--mo"], prelude=offset) == ["offset:2:claude"]
    # without bash-completion it falls back to file names
    (tmp_path / "notes.txt").write_text("")
    assert bash_complete(["ccgate", "launch", "claude", "no"], cwd=tmp_path) == ["notes.txt"]


def test_bash_launch_with_bash_completion_uses_the_commands_completion() -> None:
    if not BASH_COMPLETION.exists():
        pytest.skip("the bash-completion package is not installed")
    prelude = f"source {BASH_COMPLETION}\ncomplete -W '--model --print' ccgate-test-tool"
    got = bash_complete(["ccgate", "launch", "ccgate-test-tool", "--mo"], prelude=prelude)
    assert got == ["--model"]


# --- behaviour: fish and zsh ------------------------------------------------------------------------------------


def fish_complete(line: str) -> list[str]:
    script = f"source {shlex.quote(str(script_path(Shell.fish)))}; complete -C {shlex.quote(line)}"
    result = subprocess.run(["fish", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [entry.split("\t", 1)[0] for entry in result.stdout.splitlines() if entry]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ccgate co", {"completions", "config", "cost"}),
        ("ccgate cost --by ", {"model", "provider", "project", "session", "day", "week", "month"}),
        ("ccgate cost --since 2025-01-01 ", {"today", "yesterday", "week", "month", "all"}),
        ("ccgate provider key set gr", {"groq"}),
        ("ccgate provider key ", {"delete", "set"}),
        ("ccgate sidecar logs --", {"--lines", "--follow", "--help"}),
        ("ccgate model set haiku ", set()),
    ],
)
def test_fish_completes(line: str, expected: set[str]) -> None:
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed")
    assert set(fish_complete(line)) == expected


def test_fish_launch_completes_commands() -> None:
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed")
    assert "bash" in fish_complete("ccgate launch bas")


ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1='' PROMPT_EOL_MARK=''; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D; LISTMAX=0; echo RE''ADY"
zpty -r z out '*READY*'
zpty -w -n z "$2"$'\t'
zpty -r z out "*$3*"
print -r -- "$out"
zpty -d z
"""


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ccgate cost --by ", ["day", "model", "month", "project", "provider", "session", "week"]),
        ("ccgate co", ["completions", "config", "cost"]),
        ("ccgate model unset ", ["haiku", "opus", "sonnet"]),
    ],
)
def test_zsh_lists_completions(tmp_path: Path, line: str, expected: list[str]) -> None:
    """Drives an interactive zsh in a pty: TAB, then read the listing up to its last (alphabetical) entry."""
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed")
    driver = tmp_path / "driver.zsh"
    driver.write_text(ZSH_DRIVER)
    result = subprocess.run(
        ["zsh", "-f", str(driver), str(COMPLETIONS), line, expected[-1]],
        capture_output=True,
        text=True,
        timeout=60,  # a hang guard: the read waits for the listing, which never comes if completion is broken
    )
    for word in expected:
        assert word in result.stdout


# --- install ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS, ids=str)
def test_install_writes_where_the_shell_looks(
    shell: Shell, isolated_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Path.home()
    code, _, err = run(capsys, monkeypatch, "completions", "install", shell.value)
    assert code == 0, err
    target = {
        Shell.bash: home / ".local/share/bash-completion/completions/ccgate",
        Shell.zsh: home / ".zfunc/_ccgate",
        Shell.fish: home / ".config/fish/completions/ccgate.fish",
    }[shell]
    assert target.read_text(encoding="utf-8") == generate(shell)
    assert str(target) in err
    if shell is Shell.zsh:
        assert "fpath=(" in err


def test_install_follows_shell_and_xdg(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHELL", "/usr/bin/fish")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    code, _, err = run(capsys, monkeypatch, "completions", "install")
    assert code == 0, err
    assert (tmp_path / "xdg/fish/completions/ccgate.fish").read_text(encoding="utf-8") == generate(Shell.fish)


def test_install_to_a_chosen_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "mine" / "ccgate.bash"
    code, _, err = run(capsys, monkeypatch, "completions", "install", "bash", "--path", str(target))
    assert code == 0, err
    assert target.read_text(encoding="utf-8") == generate(Shell.bash)
    assert f"source {target}" in err


def test_install_without_a_known_shell_says_how(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHELL", "/bin/tcsh")
    code, _, err = run(capsys, monkeypatch, "completions", "install")
    assert code == 1
    assert "SHELL=tcsh" in err
    assert "ccgate completions install bash|zsh|fish" in err


def test_install_path_defaults() -> None:
    environ = {"HOME": "/home/u"}
    assert install_path("bash", environ) == Path("/home/u/.local/share/bash-completion/completions/ccgate")
    assert install_path("zsh", environ) == Path("/home/u/.zfunc/_ccgate")
    assert install_path("fish", {**environ, "XDG_CONFIG_HOME": "/cfg"}) == Path("/cfg/fish/completions/ccgate.fish")
