"""A team_admin adds and tightens its team's limits but never raises or removes one (the server enforces it)."""

from __future__ import annotations

from typing import Any

import pytest
from admin_testing import AdminCaller, admin_parent_app, error_of

from ccgate.storage.gateway import GatewayStore


@pytest.fixture
async def api(store: GatewayStore, aiohttp_client: Any) -> AdminCaller:
    return AdminCaller(await aiohttp_client(admin_parent_app(store)))


async def _setup(api: AdminCaller, store: GatewayStore) -> tuple[str, str]:
    """Team core with key ada (two models, an expiry), an admin's $10 team budget and rate limit; the lead's token."""
    assert (await api("POST", "/teams", {"name": "core"}))[0] == 201
    key = {"team": "core", "name": "ada", "allowed_models": ["m1", "m2"], "expires_at": "2099-01-01"}
    assert (await api("POST", "/keys", key))[0] == 201
    status, body = await api(
        "POST", "/budgets", {"level": "team", "target": "core", "amount_usd": "10", "period": "1d"}
    )
    assert status == 201
    assert (await api("PUT", "/ratelimits/team/core", {"rpm": 60, "tpm": 1000}))[0] == 200
    lead = await store.create_admin_token("lead", role="team_admin", team="core")
    return body["budgets"][0]["id"], lead.plaintext


async def test_a_team_admin_cannot_lift_the_limits_an_admin_set(api: AdminCaller, store: GatewayStore) -> None:
    budget, lead = await _setup(api, store)
    refused = [
        ("PATCH", f"/budgets/{budget}", {"amount_usd": "10.01"}),
        ("PATCH", f"/budgets/{budget}", {"webhook_url": "https://hooks.example.com/x"}),
        ("PATCH", f"/budgets/{budget}", {"thresholds": []}),
        ("POST", f"/budgets/{budget}/override", {"amount_usd": "50"}),
        ("POST", f"/budgets/{budget}/reset", {}),
        ("DELETE", f"/budgets/{budget}", None),
        ("PUT", "/ratelimits/team/core", {"rpm": 61, "tpm": 1000}),
        ("PUT", "/ratelimits/team/core", {"rpm": 60, "tpm": None}),
        ("DELETE", "/ratelimits/team/core", None),
        ("PATCH", "/keys/ada", {"allowed_models": None}),
        ("PATCH", "/keys/ada", {"allowed_models": ["m1", "m3"]}),
        ("PATCH", "/keys/ada", {"expires_at": None}),
        ("PATCH", "/keys/ada", {"expires_at": "2100-01-01"}),
        ("PATCH", "/keys/ada", {"mode": "report"}),
    ]
    before_budget = await store.get_budget(budget)
    before_limits = await store.list_rate_limits()
    before_key = await store.get_key("ada")
    for method, path, body in refused:
        status, answer = await api(method, path, body, token=lead)
        assert status == 403, (method, path, body, answer)
        assert "team admin may only add or tighten" in answer["error"]["hint"]
        assert "may not" in error_of(answer)
    assert await store.get_budget(budget) == before_budget
    assert await store.list_rate_limits() == before_limits
    assert await store.get_key("ada") == before_key
    # a raised override cleared by an admin stays the admin's business: the lead cannot clear a lowering one
    assert (await api("POST", f"/budgets/{budget}/override", {"amount_usd": "5"}, token=lead))[0] == 200
    assert (await api("POST", f"/budgets/{budget}/override", {"amount_usd": None}, token=lead))[0] == 403


async def test_a_team_admin_can_add_and_tighten(api: AdminCaller, store: GatewayStore) -> None:
    budget, lead = await _setup(api, store)
    allowed = [
        ("PATCH", f"/budgets/{budget}", {"amount_usd": "8"}),
        ("POST", f"/budgets/{budget}/override", {"amount_usd": "5"}),
        ("PUT", "/ratelimits/team/core", {"rpm": 30, "tpm": 500}),
        ("PUT", "/ratelimits/key/ada", {"rpm": 10, "tpm": None}),  # a new limit where there was none
        ("PUT", "/ratelimits/key/ada", {"rpm": 5, "tpm": 100}),
        ("PATCH", "/keys/ada", {"allowed_models": ["m1"], "expires_at": "2098-01-01"}),
        ("POST", "/budgets", {"level": "key", "target": "ada", "amount_usd": "1", "period": "1d"}),
    ]
    for method, path, body in allowed:
        status, answer = await api(method, path, body, token=lead)
        assert status in (200, 201), (method, path, body, answer)
    views = await store.budget_states([await store.get_budget(budget)])
    assert views[0].state.limit_nanos == 5_000_000_000
    # an admin raised it for today: clearing that override tightens, so the lead may
    assert (await api("POST", f"/budgets/{budget}/override", {"amount_usd": "100"}))[0] == 200
    assert (await api("POST", f"/budgets/{budget}/override", {"amount_usd": None}, token=lead))[0] == 200
    # and an admin may still do anything
    assert (await api("PATCH", f"/budgets/{budget}", {"amount_usd": "50"}))[0] == 200
    assert (await api("DELETE", "/ratelimits/team/core"))[0] == 200


async def test_a_team_admin_creates_only_proxy_keys_and_rotates_with_at_most_a_day_of_grace(
    api: AdminCaller, store: GatewayStore
) -> None:
    """A report-mode key's budgets are enforced only by the developer's own sidecar, and a long grace keeps a
    rotated-out (perhaps leaked) key working: both are an admin's call."""
    _, lead = await _setup(api, store)
    status, answer = await api("POST", "/keys", {"team": "core", "name": "bob", "mode": "report"}, token=lead)
    assert status == 403, answer
    assert "report-mode key" in error_of(answer) and "team admin may only add or tighten" in answer["error"]["hint"]
    assert [k.name for k in await store.list_keys()] == ["ada"]
    assert (await api("POST", "/keys", {"team": "core", "name": "bob", "mode": "proxy"}, token=lead))[0] == 201
    assert (await api("POST", "/keys", {"team": "core", "name": "cy"}, token=lead))[0] == 201
    before = await store.get_key("ada")
    for grace in ("2d", "25h", "1w", "1mo"):
        status, answer = await api("POST", "/keys/ada/rotate", {"grace": grace}, token=lead)
        assert status == 403, (grace, answer)
        assert "more than 24 hours" in error_of(answer)
    assert await store.get_key("ada") == before  # nothing rotated
    for allowed in (None, "24h", "1d", "1h", "0"):
        status, answer = await api(
            "POST", "/keys/ada/rotate", {} if allowed is None else {"grace": allowed}, token=lead
        )
        assert status == 200, (allowed, answer)
    # an admin is not capped, and may create report-mode keys
    assert (await api("POST", "/keys/ada/rotate", {"grace": "1w"}))[0] == 200
    assert (await api("POST", "/keys", {"team": "core", "name": "dee", "mode": "report"}))[0] == 201
