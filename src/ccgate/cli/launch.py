"""`ccgate launch CMD...`: run Claude Code (or any command) through the sidecar."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand

from ccgate.cli import HELP_OPTIONS
from ccgate.cli._app import ctx

# No help option of its own, so that `--help` after COMMAND reaches COMMAND; as the first word it is ours.
# Options end at COMMAND: everything after it is COMMAND's, even a `--tag` of its own.
CONTEXT = {
    "allow_extra_args": True,
    "ignore_unknown_options": True,
    "allow_interspersed_args": False,
    "help_option_names": [],
}


class LaunchCommand(TyperCommand):
    """Usage reads `COMMAND [ARGS]...`: the arguments after COMMAND are its own (typer alone would print
    `{COMMAND}` and nothing for them)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:  # Any: typer's own vendored click Context
        return [*([self.options_metavar] if self.options_metavar else []), "COMMAND", "[ARGS]..."]


def launch(
    context: typer.Context,
    command: str = typer.Argument(..., help="The command to run, usually `claude`.", metavar="COMMAND"),
    tag: list[str] = typer.Option(  # noqa: B008 - typer's idiom
        [],
        "--tag",
        metavar="KEY=VALUE",
        help="Tag every request of this launch (repeatable; also CCGATE_TAGS=k=v,k2=v2). "
        "Report with `ccgate cost --by tag:KEY`.",
    ),
) -> None:
    """Start the sidecar if needed, point COMMAND at it, run it on this terminal and return its exit code.

    Everything after COMMAND is passed to it unchanged: `ccgate launch claude -p "hi" --output-format json`
    (so `ccgate launch claude --help` is claude's help, and `ccgate launch --help` is this one).
    """
    if command in HELP_OPTIONS:
        typer.echo(context.get_help())
        raise typer.Exit(0)
    from ccgate.core.tags import ENV_VAR, parse_tags
    from ccgate.features.launching import run_launch

    app_ctx = ctx()
    tags = parse_tags(tag, env_value=app_ctx.environ.get(ENV_VAR))
    code = run_launch(
        app_ctx.paths,
        app_ctx.config,
        [command, *context.args],
        app_ctx.environ,
        warn=app_ctx.warn,
        info=app_ctx.info,
        tags=tags,
    )
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("launch", cls=LaunchCommand, context_settings=CONTEXT)(launch)
