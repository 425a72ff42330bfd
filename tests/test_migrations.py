"""Migration sets: named, ordered, and a duplicate name refused when it is defined (not when a ledger opens)."""

from __future__ import annotations

import pytest

from ccgate.storage import migrations
from ccgate.storage.migrations import LEDGER, MigrationSet, SqlDatabase


def test_a_duplicate_name_is_refused_at_definition() -> None:
    demo = MigrationSet("demo")

    @demo
    def m001_first(db: SqlDatabase) -> None:
        pass

    with pytest.raises(ValueError, match=r"'m001_first' is already in the 'demo' set"):

        @demo
        def m001_first(db: SqlDatabase) -> None:
            pass

    assert demo.names() == ["m001_first"]


def test_the_ledger_set_refuses_a_second_m001_and_stays_as_it_was() -> None:
    before = LEDGER.names()
    with pytest.raises(ValueError, match="'ledger' set"):

        @migrations.migration
        def m001_requests(db: SqlDatabase) -> None:
            pass

    assert LEDGER.names() == before and before[0] == "m001_requests"
    assert len(set(before)) == len(before)
