"""`ccgate import claude-code`: backfill the ledger from Claude Code's transcripts, with a progress bar."""

from __future__ import annotations

import typer

from ccgate.cli._app import ctx

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

    from ccgate.core.pricing import PriceCatalog
    from ccgate.core.records import format_usd
    from ccgate.features.importer import Importer, default_projects_dir, transcript_files
    from ccgate.storage.ledger import open_ledger

    app_ctx = ctx()
    root = Path(path).expanduser() if path else default_projects_dir(app_ctx.environ)
    files = transcript_files(root)
    total_bytes = sum(file.stat().st_size for file in files)
    catalog = PriceCatalog(app_ctx.config.prices)
    db = open_ledger(app_ctx.paths.ledger_file)
    try:
        importer = Importer(db=db, catalog=catalog)
        if as_json or not files:
            stats = importer.run(files)
        else:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(
                TextColumn("reading transcripts"),
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=app_ctx.err,
                transient=True,
            ) as bar:
                task = bar.add_task("read", total=total_bytes)
                stats = importer.run(files, progress=lambda size: bar.advance(task, size))
    finally:
        db.close()

    if as_json:
        from ccgate.storage.reports import usd_string

        app_ctx.print_json({"path": str(root), **stats.to_json(), "cost_usd": usd_string(stats.cost_nanos)})
        return
    summary = (
        f"{stats.files} file(s) read, {stats.entries} entries, {stats.imported} imported, "
        f"{stats.duplicates} duplicates, {stats.already_metered} already metered, "
        f"{stats.already_imported} already imported, {stats.malformed} malformed"
    )
    app_ctx.success(summary)
    if stats.imported:
        cost = format_usd(stats.cost_nanos)
        unpriced = f" (+{stats.unpriced} unpriced)" if stats.unpriced else ""
        app_ctx.info(f"  imported requests cost {cost}{unpriced}; see them with `ccgate cost all --by day`")
    if stats.synthetic:
        app_ctx.info(f"  skipped {stats.synthetic} placeholder (<synthetic>) entries")


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
