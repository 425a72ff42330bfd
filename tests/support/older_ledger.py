"""A ledger as an older ccgate left it: only the migrations up to a given one applied."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlite_utils import Database

from ccgate.core.records import RequestRecord
from ccgate.storage import migrations
from ccgate.storage.ledger import open_ledger, record_to_row


def open_ledger_as_of(path: Path, last_migration: str) -> Database:
    """Open `path` migrated only up to `last_migration` (inclusive); a later `open_ledger` applies the rest."""
    ledger = migrations.LEDGER
    everything = ledger.steps
    ledger.steps = everything[: ledger.names().index(last_migration) + 1]
    try:
        return open_ledger(path)
    finally:
        ledger.steps = everything


def insert_into_older_ledger(db: Database, records: Iterable[RequestRecord]) -> None:
    """Rows as that older ccgate wrote them: only the columns its schema has."""
    columns = set(db["requests"].columns_dict)
    rows = [{key: value for key, value in record_to_row(record).items() if key in columns} for record in records]
    db["requests"].insert_all(rows)  # type: ignore[union-attr]
