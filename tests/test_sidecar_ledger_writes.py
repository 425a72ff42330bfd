"""A sidecar whose ledger cannot be written: requests are still served, wait in memory, show in the status, and
reach the ledger once it can be written again."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import aiohttp
import pytest
from sidecar_harness import Harness, running_sidecar

from ccgate.storage import ledger as ledger_module


async def ledger_writes(session: aiohttp.ClientSession, harness: Harness) -> dict[str, Any]:
    async with session.get(f"{harness.url}/_ccgate/status", headers=harness.headers) as resp:
        status = await resp.json()
    assert status["ledger"] == str(harness.paths.ledger_file)  # the path stays where it was
    writes: dict[str, Any] = status["ledger_writes"]
    return writes


async def wait_for_unsaved(session: aiohttp.ClientSession, harness: Harness, unsaved: int) -> dict[str, Any]:
    for _ in range(750):
        writes = await ledger_writes(session, harness)
        if writes["unsaved"] == unsaved:
            return writes
        await asyncio.sleep(0.02)
    raise AssertionError(f"the sidecar never had {unsaved} unsaved request(s): {writes}")


async def test_requests_wait_in_memory_while_another_process_holds_the_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "BUSY_TIMEOUT_S", 0.2)  # "locked for too long" after 0.2 s, not 10
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with running_sidecar() as harness, aiohttp.ClientSession() as session:
        assert await ledger_writes(session, harness) == {"unsaved": 0, "dropped": 0, "last_error": None}
        other = sqlite3.connect(harness.paths.ledger_file, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's write lock, held as long as it likes
            for _ in range(5):
                async with session.post(f"{harness.url}/v1/messages", json=body, headers=harness.headers) as resp:
                    assert resp.status == 200
                    assert b"message_stop" in await resp.read()
            writes = await wait_for_unsaved(session, harness, 5)
            assert writes["dropped"] == 0
            assert writes["last_error"] == "database is locked (SQLITE_BUSY)"
        finally:
            other.execute("ROLLBACK")
            other.close()
        writes = await wait_for_unsaved(session, harness, 0)  # retried within a second, with no new request
        assert writes["dropped"] == 0
        rows = harness.rows()
        assert [row["status"] for row in rows] == ["ok"] * 5
        assert all(row["input_tokens"] > 0 and row["cost_nanos"] > 0 for row in rows)
