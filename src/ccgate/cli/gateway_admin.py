"""`ccgate gateway admin ...` and `ccgate gateway report`: scripts and people over the gateway's admin API."""

from __future__ import annotations

import typer

admin_app = typer.Typer(help="Administer an org gateway over its admin API.", no_args_is_help=True)


def register(gateway_app: typer.Typer) -> None:
    gateway_app.add_typer(admin_app, name="admin")
