"""Registry of command groups: which module holds each top-level command, loaded only when that command runs.

Building a typer command inspects its function's signature and type hints; doing that for all ~90 commands
cost every invocation (and `--help`) ~50 ms. `LazyGroup` builds only the command being run; `ccgate --help`
lists the commands from what their modules register, without building them.
"""

from __future__ import annotations

import importlib
import inspect
from functools import cache
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    from collections.abc import Iterable, MutableMapping

    from typer._click import Command, Context, HelpFormatter

# top-level command -> the module whose `register(app)` adds it, in the order `ccgate --help` lists them
# (one line per command keeps merges painless; tests/test_cli_lazy.py checks it against the modules)
COMMANDS: dict[str, str] = {
    "launch": "ccgate.cli.launch",
    "cost": "ccgate.cli.cost",
    "logs": "ccgate.cli.logs",
    "blocks": "ccgate.cli.blocks",
    "report": "ccgate.cli.report",
    "doctor": "ccgate.cli.doctor",
    "install": "ccgate.cli.install",
    "uninstall": "ccgate.cli.install",
    "login": "ccgate.cli.org",
    "logout": "ccgate.cli.org",
    "whoami": "ccgate.cli.org",
    "sync": "ccgate.cli.org",
    "config": "ccgate.cli.config_cmd",
    "sidecar": "ccgate.cli.sidecar_cmd",
    "provider": "ccgate.cli.provider",
    "model": "ccgate.cli.model",
    "price": "ccgate.cli.price",
    "budget": "ccgate.cli.budget",
    "statusline": "ccgate.cli.statusline",
    "import": "ccgate.cli.importer",
    "completions": "ccgate.cli.completions",
    "gateway": "ccgate.cli.gateway",
}
MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))


@cache
def registered(module_name: str) -> typer.Typer:
    """A typer app holding what `module_name` registers (cheap: nothing is built yet).

    Once per process: a module's `register` may add to its own module-level sub-app (`gateway` adds `admin`),
    which a second call would add again.
    """
    app = typer.Typer(rich_markup_mode=None)
    importlib.import_module(module_name).register(app)
    return app


def build_module(module_name: str) -> dict[str, Command]:
    """The click commands of one module, built (again on each call, as typer builds them on each invocation)."""
    group = typer.main.get_group(registered(module_name))
    return dict(group.commands)


class LazyGroup(TyperGroup):
    """The top-level group: a command is imported and built the first time it is looked up.

    `commands` (all of them, built) stays available for code that walks the whole tree (completions).
    """

    def __init__(self, **attrs: Any) -> None:
        self._built: dict[str, Command] = {}
        self._complete = False
        super().__init__(**attrs)

    @property
    def commands(self) -> MutableMapping[str, Command]:
        if not self._complete:
            for module_name in MODULES:
                self._load(module_name)
            self._complete = True
        return self._built

    @commands.setter
    def commands(self, value: MutableMapping[str, Command]) -> None:
        self._built = dict(value)

    def _load(self, module_name: str) -> None:
        for name, command in build_module(module_name).items():
            self._built.setdefault(name, command)

    def list_commands(self, ctx: Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name not in self._built and cmd_name in COMMANDS:
            self._load(COMMANDS[cmd_name])
        return self._built.get(cmd_name)

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        """As typer's, from each command's help text as registered, without building any command."""
        rows = list(summaries())
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        stubs = [(name, TyperCommand(name=name, help=text)) for name, text in rows]
        with formatter.section("Commands"):
            formatter.write_dl([(name, stub.get_short_help_str(limit)) for name, stub in stubs])


def summaries() -> Iterable[tuple[str, str]]:
    """(name, help text) of every visible top-level command, in `COMMANDS` order, as typer would take them."""
    found: dict[str, str] = {}
    for module_name in MODULES:
        app = registered(module_name)
        for command in app.registered_commands:
            if command.hidden:
                continue
            name = command.name or (command.callback.__name__.replace("_", "-") if command.callback else "")
            found[name] = command.help if command.help is not None else (inspect.getdoc(command.callback) or "")
        for group in app.registered_groups:
            info = group.typer_instance.info if group.typer_instance else None
            if group.hidden or (info is not None and info.hidden is True):
                continue
            text = _group_help(group, info)
            found[str(group.name or (info.name if info else ""))] = text
    return [(name, inspect.cleandoc(found[name])) for name in COMMANDS if name in found]


def _group_help(group: Any, info: Any) -> str:
    for candidate in (group.help, getattr(info, "help", None)):
        if isinstance(candidate, str):
            return candidate
    callback = group.callback or getattr(info, "callback", None)
    return inspect.getdoc(callback) or "" if callback is not None else ""
