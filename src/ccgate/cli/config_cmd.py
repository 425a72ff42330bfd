"""`ccgate config show|path`."""

from __future__ import annotations

import typer

from ccgate.cli._app import ctx

config_app = typer.Typer(help="Show where the config lives and what it holds.", no_args_is_help=True)


@config_app.command("path")
def config_path() -> None:
    """Print the config file's path."""
    ctx().echo(str(ctx().paths.config_file))


@config_app.command("show")
def config_show(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of TOML.")) -> None:
    """Validate the config file and print what it sets (defaults left out)."""
    import tomli_w

    from ccgate.core.settings import config_to_dict

    app_ctx = ctx()
    data = config_to_dict(app_ctx.config)
    if as_json:
        app_ctx.print_json({"path": str(app_ctx.paths.config_file), "config": data})
        return
    exists = app_ctx.paths.config_file.exists()
    app_ctx.info(f"# {app_ctx.paths.config_file}{'' if exists else ' (not created yet: defaults)'}")
    app_ctx.echo(tomli_w.dumps(data) or "# (empty: all defaults)")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
