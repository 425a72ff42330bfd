"""`ccgate gateway report`: the org's spend from the gateway, in the shape of `cost --json`, as CSV or a table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ccgate.cli._app import ctx
from ccgate.cli.gateway_admin import TOKEN_FILE_OPTION, URL_OPTION, client_for, field, moment_arg, show_table, usd_cell
from ccgate.errors import UserInputError


def report(
    url: str | None = URL_OPTION,
    token_file: Path | None = TOKEN_FILE_OPTION,
    by: str | None = typer.Option(
        None, "--by", help="key, team, customer, project, model, provider, day, session or tag:NAME."
    ),
    since: str | None = typer.Option(None, "--since", help="Start: date or ISO time (UTC; default: all time)."),
    until: str | None = typer.Option(None, "--until", help="End: ISO time, or a date (that day included)."),
    tz: str | None = typer.Option(None, "--tz", help="IANA zone for --by day (default UTC)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the shape of `cost --json`)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV: one row per group and a (total) row."),
) -> None:
    """Org spend from the gateway: tokens and dollars per key, team, customer, project, model, provider or day."""
    if as_json and as_csv:
        raise UserInputError("--json and --csv cannot be combined", hint="pick one output format")
    query = {"by": by, "since": moment_arg(since), "until": moment_arg(until, end=True), "tz": tz}
    data = client_for(url, token_file).get("/report", query)
    if as_json:
        ctx().print_json(data)
    elif as_csv:
        _report_csv(data)
    else:
        _report_table(data)


def _report_csv(data: dict[str, Any]) -> None:
    import csv
    import io

    from ccgate.cli.cost import csv_text

    fields = ["key", *data["total"]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for group in data["groups"]:
        writer.writerow({**group, "key": csv_text(str(group["key"]))})
    writer.writerow({**data["total"], "key": "(total)"})
    sys.stdout.write(buffer.getvalue())
    sys.stdout.flush()


def _report_table(data: dict[str, Any]) -> None:
    from ccgate.cli.cost import compact

    by = data["by"] or "total"
    rows = data["groups"] or []
    columns: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        (by, field("key")),
        ("reqs", lambda r: f"{r['requests']:,}"),
        ("input", lambda r: compact(r["input_tokens"])),
        ("output", lambda r: compact(r["output_tokens"])),
        ("cache read", lambda r: compact(r["cache_read_tokens"])),
        ("cache write", lambda r: compact(r["cache_write_tokens"])),
        ("cost", usd_cell("cost_usd")),
        ("unpriced", field("unpriced_requests")),
    ]
    ctx().info(f"gateway spend from {data['since'][:16]} to {data['until'][:16]}")
    show_table([*rows, {**data["total"], "key": "Total"}], columns)


def register(gateway_app: typer.Typer) -> None:
    gateway_app.command("report")(report)
