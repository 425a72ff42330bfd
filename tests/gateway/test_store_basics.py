"""Customers, teams, keys, admin tokens and provider configs on both backends."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ccgate.errors import NotFoundError, UserInputError
from ccgate.storage.gateway import ConstraintError, DatabaseUnavailableError, GatewayStore, KeyMode


async def test_customer_team_key_round_trip(store: GatewayStore) -> None:
    customer = await store.create_customer("Acme", actor="root")
    team = await store.create_team("platform", customer="Acme", tier_overrides={"haiku": "groq/llama"})
    created = await store.create_key(team="platform", name="alice", mode="report", allowed_models=["claude-x"])
    assert created.plaintext.startswith("sk-cg-")
    assert created.key.key_prefix == created.plaintext[:12]
    identity = await store.authenticate_key(created.plaintext)
    assert identity is not None
    assert identity.key.name == "alice"
    assert identity.key.mode is KeyMode.REPORT
    assert identity.team.id == team.id
    assert identity.customer is not None and identity.customer.id == customer.id
    assert identity.tier_overrides == {"haiku": "groq/llama"}
    assert await store.authenticate_key("sk-cg-nope") is None
    with pytest.raises(ConstraintError):
        await store.create_customer("Acme")
    with pytest.raises(NotFoundError):
        await store.create_team("x", customer="nobody")


async def test_an_unreachable_database_is_reported_as_unavailable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DatabaseUnavailableError) as caught:
        await GatewayStore.open(f"postgresql://postgres:hunter2@127.0.0.1:{port}/gw")
    assert "hunter2" not in caught.value.full_message()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DatabaseUnavailableError):
        await GatewayStore.open(f"sqlite://{blocker}/gateway.db")
    with pytest.raises(UserInputError):
        await GatewayStore.open("mysql://127.0.0.1/gw")
    with pytest.raises(UserInputError):
        await GatewayStore.open("sqlite://relative.db")


async def test_unknown_choices_are_user_errors(store: GatewayStore) -> None:
    await store.create_team("core")
    with pytest.raises(UserInputError, match="unknown key mode") as caught:
        await store.create_key(team="core", name="x", mode="turbo")
    assert caught.value.hint == "use one of: proxy, report"
    with pytest.raises(UserInputError, match="unknown role"):
        await store.create_admin_token("x", role="root")
    with pytest.raises(UserInputError, match="unknown budget level"):
        await store.create_budget(level="org", target="core", limit_nanos=1, period="1d")
    with pytest.raises(UserInputError):
        await store.set_rate_limit(level="customer", target="core", rpm=1, tpm=None)


async def test_a_rate_limit_past_the_32_bit_columns_is_a_user_error_not_a_driver_error(store: GatewayStore) -> None:
    """rpm/tpm are INTEGER columns (32-bit on PostgreSQL): the store refuses what they cannot hold, clearly."""
    await store.create_team("core")
    for rpm, tpm in ((2**31, None), (None, 10**12)):
        with pytest.raises(UserInputError, match="2147483647"):
            await store.set_rate_limit(level="team", target="core", rpm=rpm, tpm=tpm)
    assert await store.list_rate_limits() == []
    limit = await store.set_rate_limit(level="team", target="core", rpm=2**31 - 1, tpm=2**31 - 1)
    assert (limit.rpm, limit.tpm) == (2**31 - 1, 2**31 - 1)
