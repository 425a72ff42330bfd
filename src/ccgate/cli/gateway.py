"""`ccgate gateway serve|migrate|admin|report`: the org side."""

from __future__ import annotations

import typer

gateway_app = typer.Typer(
    help="The org gateway: serve it, upgrade its database, administer it, report on it.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    from ccgate.cli import gateway_admin

    gateway_admin.register(gateway_app)
    app.add_typer(gateway_app, name="gateway")
