"""Registry of command groups: one line per module keeps merges painless."""

from __future__ import annotations

import importlib

import typer

# module name -> (group name or None for top-level commands)
MODULES: tuple[str, ...] = (
    "ccgate.cli.config_cmd",
    "ccgate.cli.launch",
    "ccgate.cli.sidecar_cmd",
    "ccgate.cli.provider",
    "ccgate.cli.model",
    "ccgate.cli.price",
    "ccgate.cli.cost",
    "ccgate.cli.logs",
    "ccgate.cli.blocks",
    "ccgate.cli.report",
    "ccgate.cli.budget",
    "ccgate.cli.statusline",
    "ccgate.cli.importer",
    "ccgate.cli.doctor",
    "ccgate.cli.completions",
    "ccgate.cli.gateway",
    "ccgate.cli.install",
    "ccgate.cli.org",
)


def register(app: typer.Typer) -> None:
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        module.register(app)
