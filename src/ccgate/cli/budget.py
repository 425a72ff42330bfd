"""`ccgate budget set|show|unset`: spending limits per period, global or per project, kept in config.toml.

`show` reads the ledger file directly, so it works whether or not the sidecar is running; `set` and `unset`
ask a running sidecar to reload its config, as `model` and `provider` do.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ccgate.cli._app import AppContext, ctx, replay_spills, save_and_reload
from ccgate.errors import UserInputError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime, tzinfo

    from rich.console import Console, ConsoleOptions
    from rich.measure import Measurement
    from rich.segment import Segment

    from ccgate.core.settings import BudgetSettings
    from ccgate.sidecar.admission import BudgetRule

budget_app = typer.Typer(help="Set, show and remove spending limits (per day, week, month, ...).", no_args_is_help=True)

PERIOD_HELP = "Period: 1min, 5min, 1h, 1d, 1w, 1mo, 1y (any N), or hourly, daily, weekly, monthly, yearly."
PROJECT_HELP = "Limit one project (a directory; `.` is the git top-level of the current directory). Default: all."
BAR_WIDTH = 20
MIN_BAR_WIDTH = 5


def parse_amount(text: str) -> Decimal:
    """A budget limit as typed (`20`, `$20`, `20.50`, `1,000`): exact Decimal, 0 or at least $0.01 (see `money`)."""
    from ccgate.core.money import AmountError, parse_budget_limit

    try:
        return parse_budget_limit(text)
    except AmountError as exc:
        raise UserInputError(f"{text!r} is not an amount in USD: {exc.reason}", hint=exc.hint) from exc


def parse_warn_at(text: str) -> Decimal:
    """A fraction of the limit (`0.8`) or a percentage (`80%`)."""
    cleaned = text.strip()
    percent = cleaned.endswith("%")
    try:
        value = Decimal(cleaned.removesuffix("%").strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if value.is_finite() and percent:
        value /= 100
    if not value.is_finite() or not 0 < value <= 1:
        raise UserInputError(
            f"--warn-at {text!r} is not a fraction of the limit",
            hint="use a number above 0 and up to 1, e.g. 0.8 or 80%",
        )
    return value


def resolve_project(value: str | None, app_ctx: AppContext | None = None) -> str | None:
    """None is global; a directory becomes its git top-level (what the ledger records as the project).

    With `app_ctx`, a path that is not a directory earns a warning (it is kept as typed, made absolute).
    """
    if value is None:
        return None
    from ccgate.features.launching import project_of

    path = Path(value).expanduser().resolve()
    if path.is_dir():
        return project_of(path)
    if app_ctx is not None:
        app_ctx.warn(f"{path} is not a directory; the budget applies to requests whose project is exactly that path")
    return str(path)


def _scope(project: str | None) -> str:
    return "all projects" if project is None else f"project {project}"


def _same(budget: BudgetSettings, period_text: str, project: str | None) -> bool:
    from ccgate.core.budgets import parse_period

    try:
        return parse_period(budget.period) == parse_period(period_text) and budget.project == project
    except UserInputError:
        return False


@budget_app.command("set")
def budget_set(
    period: str = typer.Argument(..., help=PERIOD_HELP),
    amount: str = typer.Argument(..., help="Limit in USD, e.g. 20, $7.50 or 1,000 (0, or at least 0.01)."),
    project: str | None = typer.Option(None, "--project", "-p", help=PROJECT_HELP),
    warn_at: str = typer.Option("0.8", "--warn-at", help="Warn from this fraction of the limit (0.8 or 80%)."),
) -> None:
    """Set (or replace) the budget for PERIOD: requests are refused with 402 once it is spent."""
    from ccgate.core.budgets import parse_period
    from ccgate.core.records import format_usd, usd_to_nanos
    from ccgate.core.settings import BudgetSettings
    from ccgate.local.config_file import load_config

    app_ctx = ctx()
    parsed = parse_period(period)
    limit = parse_amount(amount)
    warn = parse_warn_at(warn_at)
    scope = resolve_project(project, app_ctx)
    config = load_config(app_ctx.paths.config_file)
    entry = BudgetSettings(period=parsed.name, limit_usd=limit, project=scope, warn_at=warn)
    budgets = list(config.budgets)
    existing = [index for index, budget in enumerate(budgets) if _same(budget, parsed.text, scope)]
    if existing:
        budgets[existing[0]] = entry
        for index in reversed(existing[1:]):
            del budgets[index]
    else:
        budgets.append(entry)
    save_and_reload(app_ctx, replace(config, budgets=tuple(budgets)))
    verb = "replaced" if existing else "set"
    app_ctx.success(f"{parsed.name} budget for {_scope(scope)} {verb}: {format_usd(usd_to_nanos(limit))}")


@budget_app.command("unset")
def budget_unset(
    period: str = typer.Argument(..., help=PERIOD_HELP),
    project: str | None = typer.Option(None, "--project", "-p", help=PROJECT_HELP),
) -> None:
    """Remove the budget for PERIOD (global, or the one of --project)."""
    from ccgate.core.budgets import parse_period
    from ccgate.local.config_file import load_config

    app_ctx = ctx()
    parsed = parse_period(period)
    scope = resolve_project(project)
    config = load_config(app_ctx.paths.config_file)
    # match the project as resolved, or exactly as typed (e.g. a directory that no longer exists)
    candidates = {scope, project}
    kept = tuple(b for b in config.budgets if not any(_same(b, parsed.text, c) for c in candidates))
    if len(kept) == len(config.budgets):
        raise UserInputError(
            f"there is no {parsed.name} budget for {_scope(scope)}",
            hint="`ccgate budget show` lists the budgets that are set",
        )
    save_and_reload(app_ctx, replace(config, budgets=kept))
    app_ctx.success(f"{parsed.name} budget for {_scope(scope)} removed")


def _zone_name(tz: tzinfo) -> str:
    key = getattr(tz, "key", None)
    return key if isinstance(key, str) else str(tz)


def _spent(app_ctx: AppContext, windows: list[tuple[BudgetRule, datetime, datetime]]) -> list[int]:
    """Ledger spend per budget window; no ledger yet means nothing spent (and nothing is created)."""
    replay_spills(app_ctx)
    if not app_ctx.paths.ledger_file.exists():
        return [0 for _ in windows]
    from ccgate.storage.ledger import open_ledger
    from ccgate.storage.reports import spent_nanos

    db = open_ledger(app_ctx.paths.ledger_file)
    try:
        return [spent_nanos(db, since=since, until=until, project=rule.project) for rule, since, until in windows]
    finally:
        db.close()


def _bar(fraction: Decimal, width: int = BAR_WIDTH) -> str:
    filled = min(width, int(fraction * width))
    return "█" * filled + "░" * (width - filled)


class _UsedBar:
    """The used-fraction bar: BAR_WIDTH cells, fewer in a narrow terminal, so the money columns stay whole."""

    def __init__(self, fraction: Decimal, style: str) -> None:
        self.fraction, self.style = fraction, style

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        from rich.measure import Measurement

        return Measurement(MIN_BAR_WIDTH, max(MIN_BAR_WIDTH, min(BAR_WIDTH, options.max_width)))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        from rich.segment import Segment
        from rich.style import Style

        yield Segment(_bar(self.fraction, max(1, min(BAR_WIDTH, options.max_width))), Style.parse(self.style))


@budget_app.command("show")
def budget_show(as_json: bool = typer.Option(False, "--json", help="Print JSON (money as decimal strings).")) -> None:
    """Each budget: spent, left, how much of it is used, and when it resets (local time)."""
    from ccgate.cli.cost import resolve_timezone
    from ccgate.core.budgets import BudgetLevel, BudgetState, format_local, warn_level, window
    from ccgate.core.records import format_usd, to_iso, utcnow
    from ccgate.sidecar.admission import rules_from_config
    from ccgate.storage.reports import usd_string

    app_ctx = ctx()
    tz = resolve_timezone(app_ctx)
    rules = rules_from_config(app_ctx.config)
    now = utcnow()
    windows = [(rule, *window(rule.period, now, tz)) for rule in rules]
    spent = _spent(app_ctx, windows)
    rows: list[tuple[BudgetRule, datetime, BudgetState, BudgetLevel]] = []
    for (rule, since, until), used in zip(windows, spent, strict=True):
        state = BudgetState(rule.key, rule.label, rule.limit_nanos, used, 0, until)
        rows.append((rule, since, state, warn_level(state, rule.warn_at)))

    if as_json:
        out: list[dict[str, Any]] = [
            {
                "period": rule.period.name,
                "project": rule.project,
                "label": rule.label,
                "limit_usd": usd_string(state.limit_nanos),
                "spent_usd": usd_string(state.spent_nanos),
                "left_usd": usd_string(state.left_nanos),
                "used_percent": float(round(state.used_fraction * 100, 2)),
                "warn_at": str(rule.warn_at),
                "level": level.value,
                "since": to_iso(since),
                "resets_at": to_iso(state.resets_at),
            }
            for rule, since, state, level in rows
        ]
        app_ctx.print_json({"timezone": _zone_name(tz), "budgets": out})
        return
    if not rows:
        app_ctx.info("No budgets set. Set one with `ccgate budget set daily 20` (or weekly, monthly, 1h, ...).")
        return

    from rich.table import Table

    # Money, percentages and the reset time are never wrapped or cut; in a narrow terminal the label folds
    # and the bar shrinks instead.
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("Budget", overflow="fold", min_width=8)
    for column in ("Spent", "Limit", "Left"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("")
    table.add_column("Used", justify="right", no_wrap=True)
    table.add_column("Resets", no_wrap=True)
    colour = {BudgetLevel.OK: "green", BudgetLevel.WARN: "yellow", BudgetLevel.EXHAUSTED: "red"}
    for _rule, _since, state, level in rows:
        percent = state.used_fraction * 100
        table.add_row(
            state.label,
            format_usd(state.spent_nanos),
            format_usd(state.limit_nanos),
            format_usd(state.left_nanos),
            _UsedBar(state.used_fraction, colour[level]),
            f"{percent:.0f}%",
            format_local(state.resets_at, tz),
        )
    app_ctx.out.print(table)
    for rule, _since, state, level in rows:
        if level is BudgetLevel.EXHAUSTED:
            app_ctx.warn(
                f"{state.label} is used up: requests are refused until "
                f"{format_local(state.resets_at, tz)}. Raise it with `{rule.raise_command(state.spent_nanos)}`"
            )
        elif level is BudgetLevel.WARN:
            app_ctx.warn(
                f"{state.label} is at {state.used_fraction * 100:.0f}% "
                f"(warning from {rule.warn_at * 100:.0f}%): {format_usd(state.left_nanos)} left"
            )


def register(app: typer.Typer) -> None:
    app.add_typer(budget_app, name="budget")
