"""The admin API over HTTP on SQLite and PostgreSQL: routes, validation, roles, audit, and no secret leaking."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from admin_testing import BOOTSTRAP, AdminCaller, admin_parent_app, error_of
from aiohttp.test_utils import TestClient

from ccgate.storage.gateway import GatewayStore, KeyCipher

Client = Any  # the aiohttp_client fixture's factory


@pytest.fixture
async def api(store: GatewayStore, aiohttp_client: Client) -> AdminCaller:
    client: TestClient[Any, Any] = await aiohttp_client(admin_parent_app(store))
    return AdminCaller(client)


async def _org(api: AdminCaller) -> None:
    assert (await api("POST", "/customers", {"name": "acme"}))[0] == 201
    assert (await api("POST", "/teams", {"name": "core", "customer": "acme"}))[0] == 201
    assert (await api("POST", "/teams", {"name": "web"}))[0] == 201


async def test_missing_or_wrong_admin_token_is_401_and_nothing_is_stored(api: AdminCaller, store: GatewayStore) -> None:
    for token in (None, "", "wrong", BOOTSTRAP + "x", BOOTSTRAP[:-1], "sk-cg-abc"):
        status, body = await api("POST", "/customers", {"name": "acme"}, token=token)
        assert status == 401, token
        assert "admin token" in error_of(body)
        assert body["error"]["type"] == "authentication_error"
    status, body = await api("GET", "/customers", token=None)
    assert status == 401
    # an unknown route is not revealed to a caller without a token either
    assert (await api("GET", "/nothing-here", token="wrong"))[0] == 401
    assert (await api("GET", "/nothing-here"))[0] == 404
    assert await store.list_customers() == []
    assert await store.list_audit() == []


async def test_no_bootstrap_token_configured_refuses_everything(store: GatewayStore, aiohttp_client: Client) -> None:
    api = AdminCaller(await aiohttp_client(admin_parent_app(store, bootstrap=None)))
    assert (await api("GET", "/customers"))[0] == 401
    assert (await api("GET", "/customers", token=""))[0] == 401


async def test_round_trip_of_customers_teams_and_keys(api: AdminCaller, store: GatewayStore) -> None:
    await _org(api)
    status, body = await api("GET", "/whoami")
    assert (status, body) == (200, {"name": "env", "role": "admin", "team": None})
    status, body = await api("GET", "/teams")
    assert [(t["name"], t["customer"]) for t in body["teams"]] == [("core", "acme"), ("web", None)]
    status, created = await api(
        "POST",
        "/keys",
        {
            "team": "core",
            "name": "alice",
            "mode": "report",
            "allowed_models": ["claude-sonnet-4-5"],
            "tier_overrides": {"haiku": "groq/llama-3.3-70b"},
            "expires_at": "2099-01-31",
        },
    )
    assert status == 201, created
    assert created["key"].startswith("sk-cg-")
    assert (created["name"], created["team"], created["mode"]) == ("alice", "core", "report")
    assert created["expires_at"] == "2099-01-31T00:00:00.000000Z"
    assert await store.authenticate_key(created["key"]) is not None
    status, listed = await api("GET", "/keys")
    assert [k["name"] for k in listed["keys"]] == ["alice"]
    assert "key" not in listed["keys"][0]
    status, updated = await api("PATCH", "/keys/alice", {"allowed_models": None, "mode": "proxy"})
    assert status == 200 and updated["allowed_models"] is None and updated["mode"] == "proxy"
    status, rotated = await api("POST", "/keys/alice/rotate", {"grace": "1h"})
    assert status == 200 and rotated["key"] != created["key"]
    identity = await store.authenticate_key(created["key"])
    assert identity is not None and identity.via_previous  # the old key works in its grace
    status, revoked = await api("POST", "/keys/alice/revoke")
    assert status == 200 and revoked["revoked_at"] is not None
    assert await store.authenticate_key(rotated["key"]) is None
    assert (await api("GET", "/keys", params={"include_revoked": "true"}))[1]["keys"][0]["name"] == "alice"
    actions = [e.action for e in await store.list_audit()]
    assert actions == [
        "key.revoke",
        "key.rotate",
        "key.update",
        "key.create",
        "team.create",
        "team.create",
        "customer.create",
    ]
    assert {e.actor for e in await store.list_audit()} == {"env"}


async def test_budgets_rate_limits_override_and_reset(api: AdminCaller, store: GatewayStore) -> None:
    await _org(api)
    await api("POST", "/keys", {"team": "core", "name": "alice"})
    status, body = await api(
        "POST",
        "/budgets",
        {
            "level": "team",
            "target": "core",
            "amount_usd": "20.50",
            "period": "daily",
            "thresholds": ["0.8", 1],
            "webhook_url": "https://hooks.example/x",
        },
    )
    assert status == 201, body
    (budget,) = body["budgets"]
    assert (budget["target"], budget["amount_usd"], budget["period"], budget["rolling"]) == (
        "core",
        "20.500000000",
        "1d",
        False,
    )
    assert budget["thresholds"] == ["0.8", "1"]
    assert budget["spent_usd"] == "0E-9" or budget["spent_usd"] == "0.000000000"
    status, body = await api(
        "POST", "/budgets", {"level": "key", "target": "alice", "amount_usd": "5", "period": "1w", "rolling": True}
    )
    assert status == 201 and body["budgets"][0]["rolling"] is True
    status, body = await api("GET", "/budgets", params={"level": "team", "target": "core"})
    assert [b["id"] for b in body["budgets"]] == [budget["id"]]
    status, body = await api("POST", f"/budgets/{budget['id']}/override", {"amount_usd": "100"})
    assert status == 200 and body["budgets"][0]["limit_usd"] == "100.000000000"
    assert body["budgets"][0]["override_until"] is not None
    assert (await api("POST", f"/budgets/{budget['id']}/reset"))[0] == 200
    status, body = await api("PATCH", f"/budgets/{budget['id']}", {"amount_usd": "30"})
    assert status == 200 and body["budgets"][0]["amount_usd"] == "30.000000000"
    assert (await api("DELETE", f"/budgets/{budget['id']}"))[0] == 200
    assert len(await store.list_budgets()) == 1

    status, body = await api("PUT", "/ratelimits/team/core", {"rpm": 60, "tpm": 200000})
    assert status == 200 and (body["target"], body["rpm"], body["tpm"]) == ("core", 60, 200000)
    status, body = await api("PUT", "/ratelimits/key/alice", {"rpm": None, "tpm": 1000})
    assert status == 200
    assert len((await api("GET", "/ratelimits"))[1]["rate_limits"]) == 2
    assert (await api("DELETE", "/ratelimits/key/alice"))[0] == 200
    assert (await api("PUT", "/ratelimits/org/x", {"rpm": 1, "tpm": 1}))[0] == 404
    actions = {e.action for e in await store.list_audit()}
    assert {"budget.create", "budget.override", "budget.reset", "budget.update", "budget.delete"} <= actions
    assert {"ratelimit.set", "ratelimit.delete"} <= actions


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/customers", {"name": "x", "color": "red"}, "unknown field(s): 'color'"),
        ("/customers", {}, "missing field(s): 'name'"),
        ("/customers", {"name": ""}, "'name' must be a non-empty string"),
        ("/customers", {"name": 5}, "'name' must be a non-empty string"),
        ("/customers", {"name": "a\nb"}, "control characters"),
        ("/teams", {"name": "t", "customer": "nobody"}, "no customer 'nobody'"),
        ("/teams", {"name": "t", "tier_overrides": {"giant": "a/b"}}, "tier_overrides"),
        ("/teams", {"name": "t", "tier_overrides": {"haiku": "no-slash"}}, "tier_overrides"),
        ("/keys", {"team": "core", "name": "k", "mode": "steal"}, "'mode' must be proxy or report"),
        ("/keys", {"team": "core", "name": "k", "expires_at": "tomorrow"}, "ISO-8601"),
        ("/keys", {"team": "core", "name": "k", "expires_at": "2001-01-01"}, "in the past"),
        ("/keys", {"team": "core", "name": "k", "allowed_models": "all"}, "list"),
        ("/keys", {"team": "nope", "name": "k"}, "no team 'nope'"),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": "-1", "period": "1d"}, "from 0"),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": "1e12", "period": "1d"}, "from 0"),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": "NaN", "period": "1d"}, "from 0"),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": "abc", "period": "1d"}, "decimal string"),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": [1], "period": "1d"}, "decimal string"),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": "0.0000000001", "period": "1d"}, "nine"),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": True, "period": "1d"}, "decimal string"),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": "1", "period": "fortnight"}, "not a period"),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": "1", "period": "0d"}, "out of range"),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": "1", "period": "99999y"}, "out of range"),
        ("/budgets", {"level": "org", "target": "core", "amount_usd": "1", "period": "1d"}, "'level' must be"),
        (
            "/budgets",
            {"level": "team", "target": "core", "amount_usd": "1", "period": "1d", "timezone": "Mars/X"},
            "timezone",
        ),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": "1", "period": "1d", "thresholds": [0]}, "frac"),
        ("/budgets", {"level": "team", "target": "core", "amount_usd": "1", "period": "1d", "webhook_url": "x"}, "URL"),
        ("/tokens", {"name": "t", "role": "root"}, "'role' must be admin, viewer or team_admin"),
        ("/tokens", {"name": "t", "role": "team_admin"}, "needs --team"),
    ],
)
async def test_bad_input_is_refused_with_a_clear_error_and_nothing_stored(
    api: AdminCaller, store: GatewayStore, path: str, body: dict[str, Any], words: str
) -> None:
    await _org(api)
    before = (len(await store.list_audit()), await store.list_keys(), await store.list_budgets())
    status, answer = await api("POST", path, body)
    assert status in (400, 404), answer
    message = error_of(answer)
    assert words.lower() in message.lower() or words.lower() in (answer["error"]["hint"] or "").lower(), message
    assert answer["error"]["hint"]
    after = (len(await store.list_audit()), await store.list_keys(), await store.list_budgets())
    assert after == before
    assert [c.name for c in await store.list_customers()] == ["acme"]
    assert [t.name for t in await store.list_teams()] == ["core", "web"]
    assert await store.list_admin_tokens() == []


async def test_malformed_and_oversized_bodies(api: AdminCaller, store: GatewayStore) -> None:
    for raw in (b"{", b"[]", b'"name"', b"NaN", b'{"name": NaN}', b"[" * 60_000):
        status, body = await api("POST", "/customers", raw=raw)
        assert status == 400, raw[:20]
        error_of(body)
    status, body = await api("POST", "/customers", raw=b'{"name": "' + b"x" * 70_000 + b'"}')
    assert status == 413
    status, body = await api("GET", "/keys", params={"colour": "red"})
    assert status == 400 and "colour" in error_of(body)
    assert await store.list_customers() == []


async def test_names_with_quotes_and_sql_are_stored_verbatim(api: AdminCaller, store: GatewayStore) -> None:
    names = ['O\'Brien "Bob"', "x'; DROP TABLE customers; --", "a/b?c#d", "%41 + ünïcode ☃", "Robert') OR 1=1--"]
    for name in names:
        status, body = await api("POST", "/customers", {"name": name})
        assert (status, body["name"]) == (201, name)
        status, body = await api("POST", "/teams", {"name": name, "customer": name})
        assert (status, body["customer"]) == (201, name)
        from urllib.parse import quote

        status, body = await api("GET", "/teams/" + quote(name, safe=""))
        assert (status, body["name"]) == (200, name)
        status, body = await api("POST", "/keys", {"team": name, "name": name})
        assert status == 201 and body["name"] == name
        status, body = await api("PUT", "/ratelimits/key/" + quote(name, safe=""), {"rpm": 1, "tpm": None})
        assert status == 200 and body["target"] == name
    assert sorted(c.name for c in await store.list_customers()) == sorted(names)
    assert sorted(k.name for k in await store.list_keys()) == sorted(names)
    status, body = await api("POST", "/customers", {"name": names[1]})
    assert status == 409 and "already exists" in error_of(body)


async def test_provider_key_is_write_only_and_needs_the_encryption_key(open_store: Any, aiohttp_client: Client) -> None:
    keyless = await open_store(cipher=None)
    api = AdminCaller(await aiohttp_client(admin_parent_app(keyless)))
    status, body = await api("PUT", "/providers/anthropic", {"kind": "anthropic", "api_key": "sk-ant-secret-77"})
    assert status == 500 and "CCGATE_GATEWAY_SECRET_KEY is not set" in error_of(body)
    assert "Fernet" in body["error"]["hint"]
    assert await keyless.list_providers() == []
    assert await keyless.list_audit() == []
    # without a key the config itself can be stored
    status, body = await api("PUT", "/providers/groq", {"kind": "openai", "base_url": "https://api.groq.example/v1"})
    assert status == 200 and body["has_api_key"] is False
    status, body = await api("PUT", "/providers/groq", {"kind": "grpc"})
    assert status == 400 and "'kind' must be anthropic or openai" in error_of(body)


async def test_provider_configs_never_return_the_key(api: AdminCaller, store: GatewayStore) -> None:
    status, body = await api(
        "PUT", "/providers/anthropic", {"kind": "anthropic", "base_url": "https://x.example", "api_key": "sk-ant-9"}
    )
    assert status == 200 and body["has_api_key"] is True and "api_key" not in body
    status, body = await api("PUT", "/providers/anthropic", {"kind": "anthropic"})  # keeps the stored key
    assert body["has_api_key"] is True and await store.provider_api_key("anthropic") == "sk-ant-9"
    assert (await api("GET", "/providers"))[1]["providers"][0]["name"] == "anthropic"
    assert all("sk-ant-9" not in text for text in api.seen)


async def test_viewer_reads_but_cannot_change(api: AdminCaller, store: GatewayStore) -> None:
    await _org(api)
    status, token = await api("POST", "/tokens", {"name": "finance", "role": "viewer"})
    assert status == 201 and token["token"].startswith("cg-admin-")
    viewer = token["token"]
    for path in ("/customers", "/teams", "/keys", "/budgets", "/ratelimits", "/providers", "/audit", "/report"):
        status, body = await api("GET", path, token=viewer)
        assert status == 200, (path, body)
    assert (await api("GET", "/whoami", token=viewer))[1] == {"name": "finance", "role": "viewer", "team": None}
    audit_count = len(await store.list_audit())
    writes: list[tuple[str, str, Any]] = [
        ("POST", "/customers", {"name": "x"}),
        ("DELETE", "/customers/acme", None),
        ("POST", "/teams", {"name": "x"}),
        ("PATCH", "/teams/core", {"customer": "acme"}),
        ("POST", "/keys", {"team": "core", "name": "x"}),
        ("POST", "/budgets", {"level": "team", "target": "core", "amount_usd": "1", "period": "1d"}),
        ("PUT", "/ratelimits/team/core", {"rpm": 1, "tpm": 1}),
        ("PUT", "/providers/p", {"kind": "openai"}),
        ("POST", "/tokens", {"name": "x", "role": "admin"}),
        ("GET", "/tokens", None),
        ("POST", "/tokens/finance/revoke", None),
    ]
    for method, path, body in writes:
        status, answer = await api(method, path, body, token=viewer)
        assert status == 403, (method, path, answer)
        assert "finance" in error_of(answer) and answer["error"]["type"] == "permission_error"
    assert len(await store.list_audit()) == audit_count
    # revoked: refused at once
    assert (await api("POST", "/tokens/finance/revoke"))[0] == 200
    assert (await api("GET", "/customers", token=viewer))[0] == 401


async def test_team_admin_manages_only_its_own_team(api: AdminCaller, store: GatewayStore) -> None:
    await _org(api)
    await api("POST", "/keys", {"team": "web", "name": "walt"})
    status, token = await api("POST", "/tokens", {"name": "core-lead", "role": "team_admin", "team": "core"})
    assert status == 201 and token["team"] == "core"
    lead = token["token"]
    status, _key = await api("POST", "/keys", {"team": "core", "name": "carl"}, token=lead)
    assert status == 201
    ok = [
        ("GET", "/keys", None),
        ("GET", "/keys/carl", None),
        ("POST", "/keys/carl/rotate", {"grace": "0"}),
        ("POST", "/budgets", {"level": "team", "target": "core", "amount_usd": "1", "period": "1d"}),
        ("POST", "/budgets", {"level": "key", "target": "carl", "amount_usd": "1", "period": "1d"}),
        ("PUT", "/ratelimits/team/core", {"rpm": 5, "tpm": None}),
        ("PUT", "/ratelimits/key/carl", {"rpm": 5, "tpm": None}),
        ("GET", "/teams/core", None),
        ("GET", "/report", None),
    ]
    for method, path, body in ok:
        status, answer = await api(method, path, body, token=lead)
        assert status in (200, 201), (method, path, answer)
    assert [k["name"] for k in (await api("GET", "/keys", token=lead))[1]["keys"]] == ["carl"]
    assert [t["name"] for t in (await api("GET", "/teams", token=lead))[1]["teams"]] == ["core"]
    await api("POST", "/budgets", {"level": "team", "target": "web", "amount_usd": "1", "period": "1d"})
    web_budget = (await api("GET", "/budgets", params={"level": "team", "target": "web"}))[1]["budgets"][0]["id"]
    assert len((await api("GET", "/budgets", token=lead))[1]["budgets"]) == 2
    assert (await api("GET", "/keys", token=lead, params={"team": "web"}))[0] == 403
    denied: list[tuple[str, str, Any]] = [
        ("POST", "/keys", {"team": "web", "name": "x"}),
        ("GET", "/keys/walt", None),
        ("POST", "/keys/walt/revoke", None),
        ("PATCH", "/keys/walt", {"mode": "report"}),
        ("POST", "/budgets", {"level": "team", "target": "web", "amount_usd": "1", "period": "1d"}),
        ("POST", "/budgets", {"level": "customer", "target": "acme", "amount_usd": "1", "period": "1d"}),
        ("POST", f"/budgets/{web_budget}/reset", None),
        ("DELETE", f"/budgets/{web_budget}", None),
        ("PUT", "/ratelimits/team/web", {"rpm": 1, "tpm": 1}),
        ("PUT", "/ratelimits/key/walt", {"rpm": 1, "tpm": 1}),
        ("GET", "/teams/web", None),
        ("GET", "/customers", None),
        ("POST", "/teams", {"name": "mine"}),
        ("GET", "/providers", None),
        ("GET", "/audit", None),
        ("POST", "/tokens", {"name": "x", "role": "admin"}),
    ]
    audit_count = len(await store.list_audit())
    for method, path, body in denied:
        status, answer = await api(method, path, body, token=lead)
        assert status == 403, (method, path, answer)
    assert len(await store.list_audit()) == audit_count
    assert (await store.get_key("walt")).revoked_at is None
    assert {e.actor for e in await store.list_audit(actor="core-lead")} == {"core-lead"}


async def test_audit_filters_and_pages(api: AdminCaller) -> None:
    for n in range(5):
        await api("POST", "/customers", {"name": f"c{n}"})
    await api("POST", "/teams", {"name": "t"})
    status, page = await api("GET", "/audit", params={"limit": "2"})
    assert status == 200 and len(page["entries"]) == 2 and page["next"]
    assert page["entries"][0]["action"] == "team.create"
    seen = [e["id"] for e in page["entries"]]
    while page["next"]:
        page = (await api("GET", "/audit", params={"limit": "2", "before": page["next"]}))[1]
        seen += [e["id"] for e in page["entries"]]
    assert len(seen) == len(set(seen)) == 6
    status, page = await api("GET", "/audit", params={"action": "customer."})
    assert [e["target"] for e in page["entries"]] == ["c4", "c3", "c2", "c1", "c0"]
    assert page["entries"][0]["after"]["name"] == "c4" and page["entries"][0]["before"] is None
    assert (await api("GET", "/audit", params={"actor": "nobody"}))[1]["entries"] == []
    assert (await api("GET", "/audit", params={"limit": "0"}))[0] == 400
    assert (await api("GET", "/audit", params={"since": "yesterday"}))[0] == 400


async def test_report_has_the_cost_json_shape(api: AdminCaller) -> None:
    status, body = await api("GET", "/report", params={"by": "team"})
    assert status == 200
    assert set(body) == {"since", "until", "by", "total", "groups"}
    assert body["by"] == "team" and body["groups"] == []
    assert body["total"]["cost_usd"] == "0.000000000"
    for by in ("key", "customer", "project", "model", "provider", "day", "session", "tag:ticket"):
        assert (await api("GET", "/report", params={"by": by}))[0] == 200, by
    status, body = await api("GET", "/report", params={"by": "colour"})
    assert status == 400 and "cannot group by 'colour'" in error_of(body)
    status, body = await api("GET", "/report", params={"since": "2030-01-02", "until": "2030-01-01"})
    assert status == 400 and "empty" in error_of(body)


async def test_no_secret_in_any_response_audit_entry_report_or_log_line(
    api: AdminCaller, store: GatewayStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await _org(api)
    secrets: list[str] = [BOOTSTRAP]
    _, body = await api("POST", "/keys", {"team": "core", "name": "alice"})
    secrets.append(body.pop("key"))
    _, body = await api("POST", "/keys/alice/rotate", {"grace": "1d"})
    secrets.append(body.pop("key"))
    _, body = await api("POST", "/tokens", {"name": "ops", "role": "admin"})
    ops = body.pop("token")
    secrets.append(ops)
    _, body = await api("POST", "/tokens", {"name": "fin", "role": "viewer"}, token=ops)
    secrets.append(body.pop("token"))
    provider_key = "sk-ant-api03-provider-secret-value"
    await api("PUT", "/providers/anthropic", {"kind": "anthropic", "api_key": provider_key}, token=ops)
    secrets.append(provider_key)
    await api("POST", "/budgets", {"level": "team", "target": "core", "amount_usd": "1", "period": "1d"})
    for path in ("/customers", "/teams", "/keys", "/keys/alice", "/budgets", "/ratelimits", "/providers", "/tokens"):
        assert (await api("GET", path))[0] == 200
    assert (await api("GET", "/audit", params={"limit": "1000"}))[0] == 200
    assert (await api("GET", "/report", params={"by": "key"}))[0] == 200
    await api("GET", "/customers", token=secrets[1])  # a virtual key offered as an admin token: 401, not echoed
    # the one-time displays were popped above; everything else the API said holds no secret
    answers = [text for text in api.seen if '"key": "sk-cg-' not in text and '"token": "cg-admin-' not in text]
    assert len(answers) >= len(api.seen) - 4
    audit = [repr(entry) for entry in await store.list_audit(limit=10_000)]
    logs = caplog.text
    assert "admin POST /admin/v1/keys by env: 201" in logs
    assert "admin PUT /admin/v1/providers/{name} by ops: 200" in logs
    assert "admin GET" not in logs
    for secret in secrets:
        for text in [*answers, *audit, logs]:
            assert secret not in text
        assert secret[:24] not in "".join(audit)


async def test_rotation_grace_and_expiry_validation(api: AdminCaller) -> None:
    await _org(api)
    await api("POST", "/keys", {"team": "core", "name": "k"})
    for grace in ("-1d", "soon", "1", ""):
        status, body = await api("POST", "/keys/k/rotate", {"grace": grace})
        assert status == 400, grace
    status, body = await api("POST", "/keys/ghost/rotate", {})
    assert status == 404 and "no live key 'ghost'" in error_of(body)


async def test_two_cipher_stores_do_not_matter_for_reads(open_store: Any, aiohttp_client: Client) -> None:
    """A gateway started without the encryption key still lists providers (has_api_key, never the key)."""
    from ccgate.storage.gateway import generate_secret_key

    writer = await open_store(cipher=KeyCipher(generate_secret_key()))
    await writer.put_provider("openai", kind="openai", api_key="sk-openai-1")
    reader = await open_store(cipher=None)
    api = AdminCaller(await aiohttp_client(admin_parent_app(reader)))
    status, body = await api("GET", "/providers/openai")
    assert status == 200 and body["has_api_key"] is True and "sk-openai-1" not in api.seen[-1]


async def test_control_characters_and_broken_unicode_are_refused_not_crashed(
    api: AdminCaller, store: GatewayStore
) -> None:
    """NUL bytes and lone surrogates would break the database driver (PostgreSQL refuses NUL in text)."""
    await _org(api)
    await api("POST", "/keys", {"team": "core", "name": "k"})
    for path in ("/customers/a%00b", "/teams/%00", "/keys/k%00", "/providers/%1b%5b2J"):
        status, body = await api("GET", path)
        assert status == 404, (path, body)
        error_of(body)
    assert (await api("PUT", "/ratelimits/team/%00", {"rpm": 1, "tpm": 1}))[0] == 404
    status, body = await api("GET", "/keys", params={"team": "a\x00b"})
    assert status == 400 and "'team'" in error_of(body)
    for field in ("team", "name"):
        status, body = await api("POST", "/keys", {"team": "core", "name": "x", field: "a\x00b"})
        assert status == 400, body
    status, body = await api("POST", "/customers", raw=b'{"name": "a\\ud800b"}')
    assert status == 400 and "'name'" in error_of(body)
    status, body = await api("POST", "/keys", raw=b'{"team": "\\udfff", "name": "x"}')
    assert status == 400
    assert [c.name for c in await store.list_customers()] == ["acme"]
    assert [k.name for k in await store.list_keys()] == ["k"]


async def test_the_bootstrap_name_cannot_be_taken_by_a_named_token(api: AdminCaller, store: GatewayStore) -> None:
    status, body = await api("POST", "/tokens", {"name": "env", "role": "admin"})
    assert status == 400 and "reserved" in error_of(body)
    assert await store.list_admin_tokens() == []


@pytest.mark.parametrize(
    "params",
    [
        {"since": "0001-01-01", "until": "0001-01-02", "by": "day"},
        {"since": "9999-12-30", "by": "day", "tz": "Pacific/Kiritimati"},
        {"since": "0001-01-01T00:00:00+14:00"},
        {"tz": "Not/AZone"},
        {"since": "2026-01-01", "until": "9999-12-31T23:59:59-12:00", "by": "day"},
    ],
)
async def test_report_edges_answer_without_crashing(api: AdminCaller, params: dict[str, str]) -> None:
    status, body = await api("GET", "/report", params=params)
    assert status in (200, 400), body
    if status == 400:
        error_of(body)


async def test_a_lone_surrogate_is_refused_and_never_breaks_the_audit_log(api: AdminCaller) -> None:
    """JSON can spell a lone surrogate; stored, it could not be encoded again and every audit read would be a 500."""
    await _org(api)
    for path, body in (
        ("/teams/core", {"tier_overrides": {"haiku": "groq/\ud800"}}),
        ("/teams/core", {"tier_overrides": {"haiku": "\udfff/llama"}}),
    ):
        status, answer = await api("PATCH", path, body)
        assert status == 400, answer
        assert "printable" in error_of(answer)
    status, answer = await api("POST", "/keys", {"team": "core", "name": "k", "tier_overrides": {"opus": "a/\ud800"}})
    assert status == 400, answer
    assert (await api("GET", "/audit"))[0] == 200
    assert (await api("GET", "/teams/core"))[0] == 200


async def test_a_key_named_like_another_teams_key_id_does_not_stand_in_for_it(api: AdminCaller) -> None:
    """A team_admin names its keys; a name equal to another team's key id must not make that id mean its key."""
    await _org(api)
    status, team_admin = await api("POST", "/tokens", {"name": "core-admin", "role": "team_admin", "team": "core"})
    assert status == 201, team_admin
    status, web_key = await api("POST", "/keys", {"team": "web", "name": "web-key"})
    assert status == 201, web_key
    status, shadow = await api("POST", "/keys", {"team": "core", "name": web_key["id"]}, token=team_admin["token"])
    assert status == 201, shadow
    # an update moves the key's row (PostgreSQL writes a new tuple at the end of the table): found after the shadow
    status, _ = await api("PATCH", f"/keys/{web_key['id']}", {"mode": "report"})
    assert status == 200
    for _ in range(3):
        status, found = await api("GET", f"/keys/{web_key['id']}")
        assert (status, found["name"], found["team"]) == (200, "web-key", "web")
    status, answer = await api(
        "PUT", f"/ratelimits/key/{web_key['id']}", {"rpm": 1, "tpm": 1}, token=team_admin["token"]
    )
    assert status == 403, answer
    status, answer = await api("POST", f"/keys/{web_key['id']}/revoke", {}, token=team_admin["token"])
    assert status == 403, answer
    status, answer = await api("POST", f"/keys/{web_key['id']}/revoke", {})
    assert status == 200 and answer["name"] == "web-key" and answer["revoked_at"]
    status, mine = await api("GET", f"/keys/{shadow['id']}", token=team_admin["token"])
    assert status == 200 and mine["revoked_at"] is None


async def test_an_admin_token_of_bytes_that_are_not_utf8_is_a_401_not_a_500(api: AdminCaller) -> None:
    """aiohttp decodes such header bytes to surrogates, which cannot be encoded again for the comparison."""
    import asyncio

    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            b"GET /admin/v1/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe"
            + BOOTSTRAP.encode()
            + b"\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
    assert b"authentication_error" in answer


async def test_a_rate_limit_too_big_for_its_column_is_a_400(api: AdminCaller, store: GatewayStore) -> None:
    await _org(api)
    status, body = await api("PUT", "/ratelimits/team/core", {"rpm": 10**12, "tpm": None})
    assert status == 400
    assert "2147483647" in error_of(body)
    assert await store.list_rate_limits() == []
