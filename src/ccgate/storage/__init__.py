"""Local storage: the SQLite request ledger, its single writer, and the reports read from it."""

from __future__ import annotations

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
