"""`ccgate import claude-code`: backfill the ledger from Claude Code's transcripts, with a progress bar."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ccgate.cli._app import ctx

if TYPE_CHECKING:
    from pathlib import Path

    from ccgate.cli._app import AppContext
    from ccgate.features.importer import ImportStats

import_app = typer.Typer(help="Import usage recorded elsewhere into the ledger.", no_args_is_help=True)


@import_app.command("claude-code")
def claude_code(
    path: str | None = typer.Option(
        None, "--path", help="Transcript directory (default: ~/.claude/projects) or one .jsonl file."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as one JSON object."),
) -> None:
    """Read ~/.claude/projects/**/*.jsonl and add each request not already in the ledger (safe to re-run)."""
    from pathlib import Path

    from ccgate.features.importer import ImportStats, default_projects_dir, stat_files, transcript_files, unchanged
    from ccgate.storage.importing import peek_marks

    app_ctx = ctx()
    root = Path(path).expanduser() if path else default_projects_dir(app_ctx.environ)
    files = transcript_files(root)
    statuses = stat_files(files)
    marks = peek_marks(app_ctx.paths.ledger_file)
    if marks is not None and len(unchanged(marks, statuses)) == len(files):
        # nothing new: answer without opening the ledger for writing or loading the price catalog
        stats = ImportStats(unchanged_files=len(files))
    else:
        total_bytes = sum(status.st_size for _file, status in statuses if status is not None)
        stats = _run(app_ctx, files, total_bytes, show_progress=not as_json and bool(files))

    if as_json:
        from ccgate.core.records import nanos_to_usd

        app_ctx.print_json({"path": str(root), **stats.to_json(), "cost_usd": f"{nanos_to_usd(stats.cost_nanos):f}"})
        return
    summary = (
        f"{stats.files} file(s) read, {stats.entries} entries, {stats.imported} imported, "
        f"{stats.duplicates} duplicates, {stats.already_metered} already metered, "
        f"{stats.already_imported} already imported, {stats.malformed} malformed"
    )
    app_ctx.success(summary)
    if stats.imported:
        from ccgate.core.records import format_usd

        cost = format_usd(stats.cost_nanos)
        unpriced = f" (+{stats.unpriced} unpriced)" if stats.unpriced else ""
        app_ctx.info(f"  imported requests cost {cost}{unpriced}; see them with `ccgate cost all --by day`")
    if stats.synthetic:
        app_ctx.info(f"  skipped {stats.synthetic} placeholder (<synthetic>) entries")


def _run(app_ctx: AppContext, files: list[Path], total_bytes: int, *, show_progress: bool) -> ImportStats:
    import time

    from ccgate.core.pricing import PriceCatalog
    from ccgate.features.importer import Importer, default_workers
    from ccgate.storage.ledger import open_plain_ledger

    catalog = PriceCatalog(app_ctx.config.prices)
    db = open_plain_ledger(app_ctx.paths.ledger_file)  # every statement of an import is plain SQL
    try:
        importer = Importer(db=db, catalog=catalog, workers=default_workers())
        if not show_progress:
            return importer.run(files)
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        # refreshed from here, not by rich's thread: the importer forks worker processes, and a fork copies
        # only the calling thread (a lock the refresh thread held would stay held in the children)
        with Progress(
            TextColumn("reading transcripts"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=app_ctx.err,
            transient=True,
            auto_refresh=False,
        ) as bar:
            task = bar.add_task("read", total=total_bytes)
            shown = [0.0]

            def advance(size: int) -> None:
                bar.advance(task, size)
                now = time.monotonic()
                if now - shown[0] >= 0.1:
                    shown[0] = now
                    bar.refresh()

            return importer.run(files, progress=advance)
    finally:
        db.close()


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
