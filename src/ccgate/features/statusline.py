"""`ccgate statusline`: one line for Claude Code's status bar, from the JSON it pipes in and the ledger.

Claude Code runs the statusLine command on every prompt update, so this path is kept to the standard library
plus ccgate's light modules: the ledger is read with plain sqlite3 (read-only), config with tomllib. It never
fails loudly: whatever goes wrong, one short line is printed and the exit code is 0 (Claude Code shows stdout).

Also here: installing and removing the `statusLine` entry in Claude Code's settings file (JSON merge with a
timestamped backup), without rich or typer so tests and the CLI share it.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from ccgate.core.display import printable
from ccgate.core.records import format_usd, utcnow
from ccgate.errors import UserInputError

if TYPE_CHECKING:
    from sqlite_utils import Database

    from ccgate.core.settings import Config, TierSettings

SEPARATOR = " · "
STATUSLINE_KEY = "statusLine"
FALLBACK = "ccgate"
MAX_STDIN_BYTES = 1_000_000
# seconds the read-only ledger connection waits for a writer's lock before giving up
LEDGER_TIMEOUT_S = 0.25


def claude_config_dir(environ: Mapping[str, str], home: Path | None = None) -> Path:
    """Claude Code's own directory: `$CLAUDE_CONFIG_DIR` if set, else `.claude` in `home` (default: `$HOME`)."""
    configured = environ.get("CLAUDE_CONFIG_DIR")
    if configured:
        return Path(configured).expanduser()
    if home is None:
        home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    return home / ".claude"


def claude_settings_file(environ: Mapping[str, str]) -> Path:
    return claude_config_dir(environ) / "settings.json"


# --- what Claude Code sends -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusInput:
    """The parts of Claude Code's statusLine JSON that ccgate uses; every field may be missing."""

    session_id: str | None = None
    model_id: str | None = None
    model_name: str | None = None
    cwd: str | None = None
    project_dir: str | None = None
    claude_cost_usd: float | None = None

    @property
    def model_label(self) -> str | None:
        return self.model_name or self.model_id


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_input(text: str) -> StatusInput:
    """Tolerant: garbage or a partial object gives a StatusInput with what could be read."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError):
        return StatusInput()
    if not isinstance(raw, dict):
        return StatusInput()
    model, workspace, cost = _dict(raw.get("model")), _dict(raw.get("workspace")), _dict(raw.get("cost"))
    total = cost.get("total_cost_usd")
    return StatusInput(
        session_id=_str(raw.get("session_id")),
        model_id=_str(model.get("id")),
        model_name=_str(model.get("display_name")),
        cwd=_str(workspace.get("current_dir")) or _str(raw.get("cwd")),
        project_dir=_str(workspace.get("project_dir")),
        claude_cost_usd=float(total) if isinstance(total, (int, float)) and not isinstance(total, bool) else None,
    )


# --- figures from the ledger and config -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spend:
    """Priced (and estimated) nano-dollars plus how many requests had no price or an estimated one."""

    nanos: int = 0
    unpriced: int = 0
    requests: int = 0
    estimated: int = 0


@dataclass(frozen=True, slots=True)
class BudgetLeft:
    label: str
    limit_nanos: int
    spent_nanos: int

    @property
    def left_nanos(self) -> int:
        return max(0, self.limit_nanos - self.spent_nanos)


@dataclass(frozen=True, slots=True)
class Figures:
    session: Spend | None
    today: Spend
    budget: BudgetLeft | None
    routes: tuple[str, ...] = ()
    org_budget: BudgetLeft | None = None
    problems: tuple[str, ...] = field(default_factory=tuple)
    # with `[statusline] block = true`: the 5-hour window in progress, or NO_BLOCK when none is open
    block: ActiveBlock | None = None


@dataclass(frozen=True, slots=True)
class ActiveBlock:
    """The 5-hour window in progress: minutes left and what it cost so far (`minutes_left` None: none open)."""

    minutes_left: int | None
    spend: Spend = field(default_factory=Spend)


NO_BLOCK = ActiveBlock(minutes_left=None)


def open_ledger_readonly(path: Path) -> sqlite3.Connection | None:
    """None when there is no ledger yet (nothing is created: this is a reader)."""
    if not path.exists():
        return None
    # SQLite URI filenames: only %, ? and # need escaping (urllib.parse would cost milliseconds to import)
    escaped = str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    conn = sqlite3.connect(f"file:{escaped}?mode=ro", uri=True, timeout=LEDGER_TIMEOUT_S)
    conn.execute(f"PRAGMA busy_timeout = {int(LEDGER_TIMEOUT_S * 1000)}")
    return conn


def _as_db(conn: sqlite3.Connection) -> Database:
    """The report queries only call `execute(sql, params)`, which a plain connection has too (no sqlite-utils)."""
    return cast("Database", conn)


def _session_spend(conn: sqlite3.Connection, session_id: str) -> Spend:
    nanos, unpriced, requests, estimated = conn.execute(
        "SELECT coalesce(sum(cost_nanos), 0), coalesce(sum(cost_nanos IS NULL), 0), count(*), "
        "coalesce(sum(cost_nanos IS NOT NULL AND price_quality = 'estimated'), 0) FROM requests "
        "WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    return Spend(int(nanos), int(unpriced), int(requests), int(estimated))


def local_day(now: datetime, tz: tzinfo) -> tuple[datetime, datetime]:
    """[local midnight, next local midnight) holding `now`: the budgets' daily window, so both agree."""
    from ccgate.core.budgets import Period, PeriodUnit, window

    return window(Period(1, PeriodUnit.DAY), now, tz)


def _routes(tiers: Mapping[str, TierSettings]) -> tuple[str, ...]:
    """`haiku→groq` for every tier whose primary target is not plain Anthropic."""
    out = []
    for tier, settings in sorted(tiers.items()):
        if not settings.targets:
            continue
        provider, _, model = settings.targets[0].partition("/")
        out.append(f"{tier}→{provider}" if provider != "anthropic" else f"{tier}→{model}")
    return tuple(out)


def gather(
    status: StatusInput,
    *,
    ledger_file: Path,
    config_file: Path,
    now: datetime | None = None,
    environ: Mapping[str, str] | None = None,
) -> Figures:
    """Session and today's spend, the tightest budget left and tier overrides; problems are collected, not raised."""
    from ccgate.core.settings import Config
    from ccgate.errors import CcgateError
    from ccgate.local.config_file import load_config
    from ccgate.local.timezone import resolve_timezone

    now = now or utcnow()
    problems: list[str] = []
    try:
        config = load_config(config_file)
    except CcgateError:
        config = Config()
        problems.append("config error")
    try:
        tz = resolve_timezone(config.timezone, environ)
    except CcgateError:
        tz = resolve_timezone(None, environ)
        problems.append("bad timezone")

    session: Spend | None = None
    today = Spend()
    budget: BudgetLeft | None = None
    org_budget: BudgetLeft | None = None
    block = NO_BLOCK if config.statusline_block else None
    project = status.project_dir
    conn = open_ledger_readonly(ledger_file)
    try:
        if conn is not None:
            from ccgate.storage.migrations import schema_is_current

            if not schema_is_current(conn):  # read-only here; any other ccgate command migrates it
                raise UserInputError("older ledger, run `ccgate cost` once")
            from ccgate.storage.reports import cost_report

            day_start, day_end = local_day(now, tz)
            # the reports' own query: whole hours from the roll-ups, the ragged ends from the rows
            totals = cost_report(_as_db(conn), since=day_start, until=day_end, by=None).total
            today = Spend(totals.cost_nanos, totals.unpriced_requests, totals.requests, totals.estimated_requests)
            if status.session_id:
                session = _session_spend(conn, status.session_id)
                row = conn.execute(
                    "SELECT project FROM requests WHERE session_id = ? AND project IS NOT NULL LIMIT 1",
                    (status.session_id,),
                ).fetchone()
                if row is not None:
                    project = row[0]
            if config.statusline_block:
                block = _active_block(conn, now)
        budget = _tightest_budget(config, conn, now, tz, project, problems)
        org_budget = _org_budget(conn) if conn is not None and config.gateway_url else None
    finally:
        if conn is not None:
            conn.close()
    return Figures(
        session=session,
        today=today,
        budget=budget,
        routes=_routes(config.tiers),
        problems=tuple(problems),
        org_budget=org_budget,
        block=block,
    )


def _active_block(conn: sqlite3.Connection, now: datetime) -> ActiveBlock:
    """The window in progress from the last day's hourly roll-ups (`blocks.active_block`), never the whole ledger."""
    from ccgate.storage.blocks import active_block

    found = active_block(_as_db(conn), now)
    if found is None:
        return NO_BLOCK
    totals = found.totals
    spend = Spend(totals.cost_nanos, totals.unpriced_requests, totals.requests, totals.estimated_requests)
    return ActiveBlock(minutes_left=int((found.end - now).total_seconds() // 60), spend=spend)


def _org_budget(conn: sqlite3.Connection) -> BudgetLeft | None:
    """The org budget with the least left, from what the sidecar last heard from the gateway (no network here)."""
    from ccgate.storage.org_sync import tightest_budget

    found = tightest_budget(conn)
    return None if found is None else BudgetLeft(*found)


def _tightest_budget(
    config: Config, conn: sqlite3.Connection | None, now: datetime, tz: tzinfo, project: str | None, problems: list[str]
) -> BudgetLeft | None:
    """The applicable budget with the least left, from the same rules the sidecar enforces."""
    from ccgate.core.budgets import rules_from_config, window
    from ccgate.errors import CcgateError

    try:
        rules = rules_from_config(config)
    except CcgateError:
        problems.append("bad budget period")
        return None
    best: BudgetLeft | None = None
    for rule in rules:
        if not rule.applies_to(project):
            continue
        since, until = window(rule.period, now, tz)
        spent = 0
        if conn is not None:
            from ccgate.storage.reports import spent_nanos

            spent = spent_nanos(_as_db(conn), since=since, until=until, project=rule.project)
        candidate = BudgetLeft(label=rule.short_label, limit_nanos=rule.limit_nanos, spent_nanos=spent)
        if best is None or candidate.left_nanos < best.left_nanos:
            best = candidate
    return best


# --- the line ---------------------------------------------------------------------------------------------------


def _money(spend: Spend) -> str:
    """`$0.42`; `~$0.42` when part of it is estimated (a same-family price); `unpriced` if every request lacks
    a price; `$0.40 +2 unpriced` for a mix (never a silent $0)."""
    if spend.requests and spend.unpriced == spend.requests:
        return "unpriced"
    text = ("~" if spend.estimated else "") + format_usd(spend.nanos)
    return f"{text} +{spend.unpriced} unpriced" if spend.unpriced else text


def format_line(status: StatusInput, figures: Figures) -> str:
    parts = [status.model_label or "Claude"]
    if figures.session is not None and figures.session.requests:
        parts.append(f"session {_money(figures.session)}")
    elif status.claude_cost_usd is not None:
        # nothing of this session went through ccgate: show Claude Code's own estimate, labelled as such
        parts.append(f"session ~${status.claude_cost_usd:.2f} unmetered")
    parts.append(f"today {_money(figures.today)}")
    if figures.budget is not None:
        if figures.budget.left_nanos == 0:
            parts.append(f"budget used up ({figures.budget.label})")
        else:
            parts.append(f"budget {format_usd(figures.budget.left_nanos)} left ({figures.budget.label})")
    if figures.org_budget is not None:
        if figures.org_budget.left_nanos == 0:
            parts.append(f"org budget used up ({figures.org_budget.label})")
        else:
            parts.append(f"org {format_usd(figures.org_budget.left_nanos)} left ({figures.org_budget.label})")
    if figures.block is not None:
        parts.extend(_block_parts(figures.block))
    parts.extend(figures.routes)
    parts.extend(f"ccgate: {problem}" for problem in figures.problems)
    return SEPARATOR.join(parts)


def _block_parts(block: ActiveBlock) -> list[str]:
    """`block 2h13m left`, `$4.20`: time left in the 5-hour window and its spend so far."""
    if block.minutes_left is None:
        return ["no active block"]
    hours, minutes = divmod(max(block.minutes_left, 0), 60)
    left = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
    return [f"block {left} left", _money(block.spend)]


def render(text: str, *, environ: Mapping[str, str] | None = None, now: datetime | None = None) -> str:
    """The status line for stdin `text`; never raises (a short fallback line names the problem)."""
    status = StatusInput()
    try:
        from ccgate.local.paths import resolve_paths

        status = parse_input(text)
        paths = resolve_paths(dict(os.environ if environ is None else environ))
        figures = gather(status, ledger_file=paths.ledger_file, config_file=paths.config_file, now=now, environ=environ)
        return format_line(status, figures)
    except Exception as error:  # the status bar must always get a line, never a traceback
        if isinstance(error, sqlite3.OperationalError):
            reason = "ledger busy"
        else:
            reason = str(error) if isinstance(error, UserInputError) else type(error).__name__
        return f"{status.model_label or 'Claude'}{SEPARATOR}{FALLBACK}: unavailable ({reason})"


def main(stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """Entry point for `ccgate statusline` (dispatched before typer loads); always exits 0."""
    source = sys.stdin if stdin is None else stdin
    sink = sys.stdout if stdout is None else stdout
    try:
        text = "" if source is None or source.isatty() else source.read(MAX_STDIN_BYTES)
    except (OSError, ValueError, UnicodeDecodeError):
        text = ""
    try:
        # the model name and the rest come from outside: no control character reaches Claude Code's status bar
        sink.write(printable(render(text)) + "\n")
        sink.flush()
    except (OSError, ValueError):
        pass
    return 0


# --- install into Claude Code's settings ------------------------------------------------------------------------


def is_ccgate_command(command: Any) -> bool:
    """True for `ccgate statusline`, `/path/to/ccgate statusline` or `python -m ccgate statusline`."""
    if not isinstance(command, str):
        return False
    try:
        words = shlex.split(command)
    except ValueError:
        return False
    if len(words) < 2 or words[-1] != "statusline":
        return False
    return Path(words[-2]).name == "ccgate"


def _is_ours(entry: Any) -> bool:
    return isinstance(entry, dict) and is_ccgate_command(entry.get("command"))


@dataclass(frozen=True, slots=True)
class SettingsChange:
    """What install/uninstall did: `changed` False means the file was left untouched."""

    path: Path
    changed: bool
    backup: Path | None = None
    message: str = ""


def _read_settings(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserInputError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from exc
    except UnicodeDecodeError as exc:
        raise UserInputError(
            f"{path} is not UTF-8 text (byte {exc.start})",
            hint="fix the file first; ccgate never overwrites a file it cannot read",
        ) from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UserInputError(
            f"{path} is not valid JSON ({exc})",
            hint="fix the file first; ccgate never overwrites a file it cannot read",
        ) from exc
    if not isinstance(data, dict):
        raise UserInputError(f"{path} does not hold a JSON object", hint="fix the file first")
    return data


def _backup(path: Path, now: datetime) -> Path:
    """Private like the install backups (`claude_settings.write_backup`): settings may hold API keys."""
    from ccgate.local.claude_settings import write_backup

    try:
        return write_backup(path, path.read_bytes(), stat.S_IMODE(path.stat().st_mode), now)
    except OSError as exc:
        raise UserInputError(f"cannot back up {path}: {exc.strerror}; nothing was changed") from exc


def _write_settings(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic replace, keeping the original file's mode."""
    from ccgate.local.atomic import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n", mode=None)
    except OSError as exc:
        raise UserInputError(f"cannot write {path}: {exc.strerror}", hint="check the directory's permissions") from exc


def _previous_file(state_dir: Path) -> Path:
    return state_dir / "statusline-previous.json"


def _load_previous(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads(_previous_file(state_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_previous(state_dir: Path, data: Mapping[str, Any]) -> None:
    path = _previous_file(state_dir)
    if not data:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(data), indent=2), encoding="utf-8")


def install_statusline(
    settings_path: Path, command: str, *, state_dir: Path, force: bool = False, now: datetime | None = None
) -> SettingsChange:
    """Point Claude Code's `statusLine` at `command`, keeping every other setting and a backup of the file.

    A different statusLine already there is kept unless `force`; then it is remembered in `state_dir` so
    `uninstall_statusline` can put it back.
    """
    now = now or utcnow()
    data = _read_settings(settings_path)
    current = None if data is None else data.get(STATUSLINE_KEY)
    entry = {"type": "command", "command": command, "padding": 0}
    if isinstance(current, dict) and current.get("command") == command and current.get("type") == "command":
        return SettingsChange(settings_path, changed=False, message="already installed")
    if current is not None and not _is_ours(current):
        if not force:
            shown = current.get("command") if isinstance(current, dict) else current
            raise UserInputError(
                f"{settings_path} already has a statusLine ({shown!r})",
                hint="pass --force to replace it (it is backed up and `statusline uninstall` restores it)",
            )
        previous = _load_previous(state_dir)
        previous[str(settings_path)] = current
        _save_previous(state_dir, previous)
    backup = _backup(settings_path, now) if data is not None else None
    merged = dict(data or {})
    if isinstance(current, dict) and _is_ours(current):
        entry = {**current, **entry, "padding": current.get("padding", 0)}
    merged[STATUSLINE_KEY] = entry
    _write_settings(settings_path, merged)
    return SettingsChange(settings_path, changed=True, backup=backup, message="installed")


def uninstall_statusline(settings_path: Path, *, state_dir: Path, now: datetime | None = None) -> SettingsChange:
    """Remove ccgate's statusLine (restoring one that `install --force` replaced); anything else is left alone."""
    now = now or utcnow()
    data = _read_settings(settings_path)
    current = None if data is None else data.get(STATUSLINE_KEY)
    if data is None or current is None:
        return SettingsChange(settings_path, changed=False, message="no statusLine installed")
    if not _is_ours(current):
        return SettingsChange(settings_path, changed=False, message="the statusLine there is not ccgate's; left alone")
    previous = _load_previous(state_dir)
    restored = previous.pop(str(settings_path), None)
    backup = _backup(settings_path, now)
    merged = dict(data)
    if restored is not None:
        merged[STATUSLINE_KEY] = restored
    else:
        del merged[STATUSLINE_KEY]
    _write_settings(settings_path, merged)
    _save_previous(state_dir, previous)
    message = "removed; the previous statusLine is restored" if restored is not None else "removed"
    return SettingsChange(settings_path, changed=True, backup=backup, message=message)
