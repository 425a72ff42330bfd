"""Local storage: the SQLite request ledger, its single writer, and the reports read from it.

Nothing is imported eagerly: `ccgate statusline` reads the ledger through `storage.ledger` alone and must not pay
for the writer (threads, spills) or the reports. The names below resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ccgate.storage.ledger import (
        check_integrity,
        insert_records,
        open_ledger,
        record_to_row,
        recover_pending,
        row_to_record,
    )
    from ccgate.storage.reports import CostReport, Totals, cost_report, report_to_json, spent_nanos
    from ccgate.storage.writer import LedgerWriter

_HOMES = {
    "CostReport": "reports",
    "LedgerWriter": "writer",
    "Totals": "reports",
    "check_integrity": "ledger",
    "cost_report": "reports",
    "insert_records": "ledger",
    "open_ledger": "ledger",
    "record_to_row": "ledger",
    "recover_pending": "ledger",
    "report_to_json": "reports",
    "row_to_record": "ledger",
    "spent_nanos": "reports",
}

__all__ = [
    "CostReport",
    "LedgerWriter",
    "Totals",
    "check_integrity",
    "cost_report",
    "insert_records",
    "open_ledger",
    "record_to_row",
    "recover_pending",
    "report_to_json",
    "row_to_record",
    "spent_nanos",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
