"""The admin API and ingest read as an attacker would: each input here once got a 500 or was stored wrongly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from admin_testing import AdminCaller, admin_parent_app, error_of
from gateway_harness import ADMIN_TOKEN, running_gateway

from ccgate.core.budgets import parse_period
from ccgate.core.records import new_request_id
from ccgate.errors import UserInputError
from ccgate.storage.gateway import GatewayStore

MODEL = "claude-sonnet-4-5"


@pytest.fixture
async def api(store: GatewayStore, aiohttp_client: Any) -> AdminCaller:
    caller = AdminCaller(await aiohttp_client(admin_parent_app(store)))
    assert (await caller("POST", "/teams", {"name": "core"}))[0] == 201
    return caller


@pytest.mark.parametrize("limit", ["\u00b2", "\u0661\u0660", "１０"])
async def test_a_limit_in_other_digits_is_a_400_not_a_500_or_a_number(api: AdminCaller, limit: str) -> None:
    status, body = await api("GET", "/audit", params={"limit": limit})
    assert status == 400 and "limit" in error_of(body)


@pytest.mark.parametrize("zone", ["America", "Europe", "a" * 300, "Europe/Berlin/", "localtime", "right/UTC"])
async def test_a_time_zone_that_is_not_an_iana_name_is_a_400(api: AdminCaller, zone: str) -> None:
    status, body = await api("GET", "/report", params={"tz": zone, "by": "day"})
    assert status == 400, body
    budget = {"level": "team", "target": "core", "amount_usd": "1", "period": "1d", "timezone": zone}
    status, body = await api("POST", "/budgets", budget)
    assert status == 400, body
    status, body = await api("POST", "/budgets", {**budget, "timezone": "Europe/Berlin"})
    assert status == 201 and body["budgets"][0]["timezone"] == "Europe/Berlin"


@pytest.mark.parametrize("period", ["1\u0661d", "\uff11d", "\u0661d"])
async def test_a_period_in_other_digits_is_refused(api: AdminCaller, period: str) -> None:
    status, body = await api(
        "POST", "/budgets", {"level": "team", "target": "core", "amount_usd": "1", "period": period}
    )
    assert status == 400, body
    with pytest.raises(UserInputError):
        parse_period(period)


async def test_a_threshold_with_an_absurd_exponent_is_refused(api: AdminCaller) -> None:
    budget = {"level": "team", "target": "core", "amount_usd": "1", "period": "1d"}
    for threshold in ("1E-999999", "0.00000001"):
        assert (await api("POST", "/budgets", {**budget, "thresholds": [threshold]}))[0] == 400
    assert (await api("POST", "/budgets", {**budget, "thresholds": ["0.8", "1E+1"]}))[0] == 201


@pytest.mark.parametrize(
    ("path", "field", "existing", "twin"),
    [
        ("/teams", "name", "core", "Core"),
        ("/teams", "name", "core", "\uff43\uff4f\uff52\uff45"),  # fullwidth
        ("/customers", "name", "caf\u00e9", "cafe\u0301"),  # composed beside decomposed
        ("/customers", "name", "Stra\u00dfe", "STRASSE"),
    ],
)
async def test_names_that_differ_only_in_case_or_unicode_form_are_one_name(
    api: AdminCaller, path: str, field: str, existing: str, twin: str
) -> None:
    if existing != "core":
        assert (await api("POST", path, {field: existing}))[0] == 201
    status, body = await api("POST", path, {field: twin})
    assert status == 409, body
    assert "too like" in error_of(body) or "already exists" in error_of(body)  # a decomposed twin: the database


async def test_key_token_and_provider_names_are_checked_too(api: AdminCaller, store: GatewayStore) -> None:
    assert (await api("POST", "/keys", {"team": "core", "name": "ada"}))[0] == 201
    assert (await api("POST", "/keys", {"team": "core", "name": "ADA"}))[0] == 409
    assert (await api("POST", "/tokens", {"name": "Env", "role": "admin"}))[0] == 400  # the bootstrap's name
    assert (await api("POST", "/tokens", {"name": "finance", "role": "viewer"}))[0] == 201
    assert (await api("POST", "/tokens", {"name": "Finance", "role": "admin"}))[0] == 409
    assert (await api("PUT", "/providers/groq", {"kind": "openai"}))[0] == 200
    assert (await api("PUT", "/providers/GROQ", {"kind": "openai"}))[0] == 409
    assert (await api("PUT", "/providers/groq", {"kind": "openai"}))[0] == 200  # replacing itself is fine
    assert [key.name for key in await store.list_keys()] == ["ada"]


@pytest.mark.parametrize(
    "name", ["evil\u202egnp", "zero\u200bwidth", "line\u2028break", "\u00a0padded", "padded ", "c1\u0085"]
)
async def test_names_with_invisible_characters_or_edge_spaces_are_refused(api: AdminCaller, name: str) -> None:
    status, body = await api("POST", "/customers", {"name": name})
    assert status == 400, (name, body)


async def test_a_decomposed_name_is_stored_composed(api: AdminCaller, store: GatewayStore) -> None:
    assert (await api("POST", "/customers", {"name": "cafe\u0301"}))[0] == 201
    assert [c.name for c in await store.list_customers()] == ["caf\u00e9"]


def _row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": new_request_id(),
        "started_at": (datetime.now(UTC) - timedelta(seconds=5)).isoformat(),
        "status": "ok",
        "requested_model": MODEL,
        "routed_model": MODEL,
        "input_tokens": 10,
        "output_tokens": 10,
    }
    row.update(fields)
    return row


async def test_ingested_rows_with_lone_surrogates_or_controls_are_rejected_and_reports_keep_working(
    db_url: str,
) -> None:
    bad = [
        _row(project="a\ud800"),
        _row(tags={"t": "\udfff"}),
        _row(tags={"\ud800": "x"}),
        _row(session_id="\x1b[31mred"),
        _row(launch_id="c1\x9b"),
        _row(output_tokens=10**9, input_tokens=10**9),  # billions of dollars in one request
    ]
    good = [_row(tags={"t": "ok"}, error_message="line one\nline two")]
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        raw = json.dumps({"rows": bad + good}).encode()  # json.dumps spells surrogates as \ud800 escapes
        async with http.post(
            f"{gateway.url}/v1/usage",
            data=raw,
            headers={"x-api-key": gateway.keys["ada"], "content-type": "application/json"},
        ) as reply:
            answer = await reply.json()
        assert answer["sent"] == 1 and len(answer["rejected"]) == len(bad), answer
        for by in ("tag:t", "project", "session"):
            async with http.get(
                f"{gateway.url}/admin/v1/report",
                params={"by": by},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as reply:
                assert reply.status == 200, await reply.text()
                assert (await reply.json())["total"]["requests"] == 1


async def test_a_usage_batch_of_megabytes_is_read_whole(db_url: str) -> None:
    """One read of the body returns only what has arrived: a batch over a few hundred KB used to be 'not JSON'."""
    rows = [_row(project="p" * 4000) for _ in range(300)]
    raw = json.dumps({"rows": rows}).encode()
    assert len(raw) > 1_000_000
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        headers = {"x-api-key": gateway.keys["ada"], "content-type": "application/json"}
        async with http.post(f"{gateway.url}/v1/usage", data=raw, headers=headers) as reply:
            assert reply.status == 200, await reply.text()
            assert (await reply.json())["sent"] == len(rows)

        async def chunks() -> Any:  # no Content-Length: the cap holds while reading
            for _ in range(9):
                yield b"x" * (1024 * 1024)

        async with http.post(f"{gateway.url}/v1/usage", data=chunks(), headers=headers) as reply:
            assert reply.status == 413


@pytest.mark.parametrize(
    "params",
    [
        {"since": "0001-01-01", "tz": "Etc/GMT+12", "by": "day"},
        {"since": "9999-12-31", "until": "9999-12-31T23:59:59", "tz": "Etc/GMT-14", "by": "day"},
    ],
)
async def test_a_report_at_the_edges_of_time_is_an_answer_not_a_500(api: AdminCaller, params: dict[str, str]) -> None:
    status, body = await api("GET", "/report", params=params)
    assert status in (200, 400), body
    if status == 200:
        assert body["total"]["requests"] == 0
