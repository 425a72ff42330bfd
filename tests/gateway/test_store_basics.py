"""Customers, teams, keys, admin tokens and provider configs on both backends."""

from __future__ import annotations

import pytest

from ccgate.errors import NotFoundError
from ccgate.storage.gateway import ConstraintError, GatewayStore, KeyMode


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
