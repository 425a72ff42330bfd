"""The one place that turns results and errors into terminal output; commands stay thin."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from ccgate.core.display import printable, terminal_safe_json
from ccgate.errors import CcgateError

if TYPE_CHECKING:
    from rich.console import Console

    from ccgate.core.settings import Config
    from ccgate.local.paths import Paths


@dataclass
class AppContext:
    """Paths, config and consoles, created on first use so `--help` stays instant."""

    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @cached_property
    def paths(self) -> Paths:
        from ccgate.local.paths import resolve_paths

        return resolve_paths(self.environ).check()

    @cached_property
    def config(self) -> Config:
        from ccgate.local.config_file import load_config

        return load_config(self.paths.config_file)

    @cached_property
    def out(self) -> Console:
        from ccgate.cli._console import SafeConsole

        return SafeConsole()

    @cached_property
    def err(self) -> Console:
        from ccgate.cli._console import SafeConsole

        return SafeConsole(stderr=True)

    def print_json(self, value: Any) -> None:
        """Plain JSON on stdout (no rich markup), for scripts."""
        # exact data; the characters a terminal would act on are \u escapes (valid JSON, same values)
        sys.stdout.write(terminal_safe_json(json.dumps(value, ensure_ascii=False, default=str)) + "\n")
        sys.stdout.flush()

    def echo(self, line: str) -> None:
        """One plain line on stdout without rich (fast, never wrapped), its control characters escaped."""
        sys.stdout.write(printable(line, newlines=True) + "\n")
        sys.stdout.flush()  # as click's echo: `sidecar logs -f` shows each line when it is written

    def info(self, message: str) -> None:
        self.err.print(message)

    def success(self, message: str) -> None:
        self._marked("✓", "green", message)

    def warn(self, message: str) -> None:
        self._marked("!", "yellow", message)

    def _marked(self, mark: str, colour: str, message: str) -> None:
        from rich.text import Text

        self.err.print(Text.assemble((mark, colour), " ", message))

    def fail(self, message: str, hint: str | None = None) -> NoReturn:
        raise CcgateUsageFailure(message, hint=hint)


def save_and_reload(app_ctx: AppContext, config: Config) -> None:
    """Atomic save, then ask a running sidecar to re-read config and keys (if the sidecar offers that)."""
    from ccgate.local.config_file import save_config

    save_config(app_ctx.paths.config_file, config)
    notify_reload(app_ctx)


def notify_reload(app_ctx: AppContext) -> None:
    """A running sidecar re-reads config and keys (off its event loop); nothing to do when none runs."""
    try:
        from ccgate.sidecar import process
    except ImportError:
        return
    notify = getattr(process, "notify_reload", None)
    if callable(notify) and notify(app_ctx.paths):
        app_ctx.info("the running sidecar reloaded its settings")


def replay_spills(app_ctx: AppContext) -> None:
    """Before a command reads the ledger: requests a stopped sidecar saved aside (its ledger was unwritable) are
    written now, unless a sidecar runs (it replays them itself) — so `cost` right after `sidecar stop` has them.

    Holds the sidecar's instance lock meanwhile, so no sidecar starts beside this and nothing else marks rows."""
    import fcntl

    from ccgate.local.paths import home_id
    from ccgate.storage import spill

    paths = app_ctx.paths
    dirs = spill.spill_dirs(paths.runtime_dir, home_id(paths), app_ctx.environ)
    if not spill.has_spills(dirs):
        return
    from ccgate.storage.writer import LedgerWriter

    try:
        handle = open(paths.instance_lock_file, "a+")  # noqa: SIM115 - closed below, the lock with it
    except OSError:
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return  # a sidecar runs (or starts): it replays them
    try:
        writer = LedgerWriter(paths.ledger_file, spill_dirs=dirs)
        writer.start()
        writer.close()
    except CcgateError:
        return  # the command's own ledger access says what is wrong
    finally:
        handle.close()
    if writer.replayed and not writer.spilled[0]:  # else the ledger still refused them: saved aside again
        app_ctx.info(f"wrote {writer.replayed} request(s) saved at the last sidecar stop to the ledger")


class CcgateUsageFailure(CcgateError):
    """A command decided the user's input cannot be acted on."""


def current_click_context() -> Any:
    """The running command's click context, or None outside one. Newer typer releases carry their own copy of
    click (`typer._click`), whose context stack is not `click`'s."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # typer that uses the click package
        from click import get_current_context  # type: ignore[no-redef]
    return get_current_context(silent=True)


def ctx() -> AppContext:
    """This command's AppContext: it travels in the click context's object (`ctx.obj`, set by the root callback),
    so each invocation gets its own and no module global outlives a command. Made on the root context when a
    command runs without the root callback (a sub-app invoked on its own)."""
    current = current_click_context()
    if current is None:  # outside any command (a test calling a helper): a fresh one
        return AppContext()
    root = current.find_root()
    if not isinstance(root.obj, AppContext):
        root.obj = AppContext()
    app_ctx: AppContext = root.obj
    return app_ctx


def reset_context() -> None:
    """Kept for callers written when the context was a module global; each invocation now has its own."""


def report_error(error: CcgateError) -> NoReturn:
    """One readable line plus a hint on stderr, exit code 1; never a traceback."""
    sys.stderr.write(f"ccgate: error: {printable(error.message, newlines=True)}\n")
    if error.hint:
        sys.stderr.write(f"  hint: {printable(error.hint, newlines=True)}\n")
    sys.stderr.flush()
    raise typer.Exit(1)
