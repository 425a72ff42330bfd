"""Names that differ only in case or Unicode form are one name, kept so by the database (migration 0008): two
instances creating `Core` and `core` at the same moment cannot both succeed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from admin_testing import AdminCaller, admin_parent_app, error_of
from aiohttp.test_utils import TestClient
from gateway_testing import StoreFactory

from ccgate.storage.gateway import GatewayStore

Client = Any  # the aiohttp_client fixture's factory

# eight spellings people would take for one name (the full-width ones fold by NFKC)
SPELLINGS = ("Core", "core", "CORE", "cOre", "ｃｏｒｅ", "Ｃore", "coRE", "COre")


async def _callers(open_store: StoreFactory, aiohttp_client: Client) -> tuple[list[AdminCaller], GatewayStore]:
    """Two gateway instances' admin APIs over one database."""
    stores = [await open_store(), await open_store()]
    callers = []
    for store in stores:
        client: TestClient[Any, Any] = await aiohttp_client(admin_parent_app(store))
        callers.append(AdminCaller(client))
    return callers, stores[0]


def _create(kind: str, name: str) -> tuple[str, str, dict[str, Any] | None]:
    if kind == "customer":
        return "POST", "/customers", {"name": name}
    if kind == "team":
        return "POST", "/teams", {"name": name}
    if kind == "key":
        return "POST", "/keys", {"team": "platform", "name": name}
    if kind == "token":
        return "POST", "/tokens", {"name": name, "role": "viewer"}
    return "PUT", f"/providers/{name}", {"kind": "anthropic"}


async def _names(store: GatewayStore, kind: str) -> list[str]:
    if kind == "customer":
        return [c.name for c in await store.list_customers()]
    if kind == "team":
        return [t.name for t in await store.list_teams() if t.name != "platform"]
    if kind == "key":
        return [k.name for k in await store.list_keys()]
    if kind == "token":
        return [t.name for t in await store.list_admin_tokens()]
    return [p.name for p in await store.list_providers()]


@pytest.mark.parametrize("kind", ["customer", "team", "key", "token", "provider"])
async def test_concurrent_creates_of_one_folded_name_on_two_instances_let_exactly_one_win(
    open_store: StoreFactory, aiohttp_client: Client, kind: str
) -> None:
    callers, store = await _callers(open_store, aiohttp_client)
    if kind == "key":
        assert (await callers[0]("POST", "/teams", {"name": "platform"}))[0] == 201
    attempts = [callers[i % 2](*_create(kind, name)) for i, name in enumerate(SPELLINGS)]
    answers = await asyncio.gather(*attempts)
    won = [body for status, body in answers if status in (200, 201)]
    refused = [body for status, body in answers if status == 409]
    assert len(won) == 1, [status for status, _ in answers]
    assert len(refused) == len(SPELLINGS) - 1, [status for status, _ in answers]
    for body in refused:
        message = error_of(body)
        assert "case or Unicode form" in message or "too like" in message or "already exists" in message
    assert await _names(store, kind) == [won[0]["name"]]


async def test_a_revoked_keys_name_can_be_given_again_in_another_case(store: GatewayStore) -> None:
    await store.create_team("platform")
    first = await store.create_key(team="platform", name="Ada")
    await store.revoke_key(first.key.id)
    again = await store.create_key(team="platform", name="ada")
    assert [k.name for k in await store.list_keys()] == [again.key.name]


async def test_rows_without_a_folded_name_are_folded_at_start_and_old_duplicates_stay_readable(
    open_store: StoreFactory,
) -> None:
    """What the previous release leaves: rows inserted without `name_folded` (it does not know the column), even
    two names that fold to one (written before the admin check existed). Inserting them works beside this
    release; the next start folds what it can, and the database then refuses a third spelling on its own."""
    store = await open_store()
    for row_id, name, at in (
        ("c1", "Acme", "2026-01-01T00:00:00.000000Z"),
        ("c2", "ACME", "2026-01-02T00:00:00.000000Z"),
    ):
        await store.db.execute("INSERT INTO customers (id, name, created_at) VALUES (?, ?, ?)", (row_id, name, at))
    assert {c.name for c in await store.list_customers()} == {"Acme", "ACME"}
    again = await open_store()  # a restart
    rows = await again.db.fetch("SELECT id, name_folded FROM customers ORDER BY id")
    assert [(str(r[0]), r[1]) for r in rows] == [("c1", "acme"), ("c2", None)]
    with pytest.raises(Exception, match="already exists"):
        await again.create_customer("acme")
    assert await again.fill_folded_names() == 0
