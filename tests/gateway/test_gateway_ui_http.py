"""The dashboard at /ui over plain HTTP, on SQLite and PostgreSQL: security headers, the session cookie, sign-in
and sign-out, CSRF and origin checks, roles, the one display of a new key, malformed input, and numbers equal to
`gateway report`."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest
from gateway_harness import ADMIN_TOKEN, Gateway, running_gateway
from ui_testing import UiClient, seed_dashboard, seed_rows
from yarl import URL

from ccgate.core.records import utcnow
from ccgate.gateway.ui.app import CSP
from ccgate.storage.reports import report_to_json

PAGES = ("/ui/", "/ui/teams", "/ui/teams/core", "/ui/keys", "/ui/requests", "/ui/audit")


@pytest.fixture
async def gateway(db_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(db_url) as served:
        await seed_dashboard(served.store)
        yield served


async def _signed_in(gateway: Gateway, token: str = ADMIN_TOKEN) -> UiClient:
    ui = UiClient(gateway.url)
    response = await ui.sign_in(token)
    assert response.status == 303, response.status
    return ui


async def test_every_page_has_the_security_headers_and_server_timing(gateway: Gateway) -> None:
    async with await _signed_in(gateway) as ui:
        for path in (*PAGES, "/ui/login", "/ui/nope"):
            response, text = await ui.get(path)
            assert response.status in (200, 303, 404), (path, response.status)
            assert response.headers["Content-Security-Policy"] == CSP
            assert response.headers["X-Frame-Options"] == "DENY"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Cache-Control"] == "no-store", path
            assert re.fullmatch(r"app;dur=\d+(\.\d+)?", response.headers["Server-Timing"]), path
            assert "<script" not in text and " style=" not in text, path  # nothing the CSP would block


async def test_the_session_cookie_is_httponly_strict_and_scoped(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.post(gateway.url + "/ui/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/ui/"
        cookie = response.headers["Set-Cookie"]
        parts = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "samesite", "path"} <= parts
        assert "SameSite=Strict" in cookie and "Path=/ui" in cookie
        assert "secure" not in parts  # plain http here; https adds it (request.secure)
        assert ADMIN_TOKEN not in cookie
        # only the cookie's hash is stored
        value = cookie.split(";")[0].split("=", 1)[1]
        stored = await gateway.store.db.fetch("SELECT id_hash, token_name FROM ui_sessions")
        assert [row[1] for row in stored] == ["env"] and value not in str(stored)


async def test_without_a_session_pages_send_you_to_sign_in_and_changes_are_refused(gateway: Gateway) -> None:
    async with UiClient(gateway.url) as ui:
        for path in PAGES:
            response, _ = await ui.get(path)
            assert response.status == 303 and response.headers["Location"] == "/ui/login"
        team = await gateway.store.get_team("core")
        response, text = await ui.post("/ui/keys", {"team": team.id, "name": "eve"}, csrf=False)
        assert response.status == 401 and "sign in" in text
        response = await ui.sign_in("cg-wrong-token")
        assert response.status == 401
        assert not ui.http.cookie_jar.filter_cookies(URL(gateway.url + "/ui/"))
    assert [k.name for k in await gateway.store.list_keys()].count("eve") == 0


async def test_sign_out_deletes_the_session_and_the_old_cookie_is_refused(gateway: Gateway) -> None:
    async with await _signed_in(gateway) as ui:
        cookie = ui.http.cookie_jar.filter_cookies(URL(gateway.url + "/ui/"))["ccgate_ui"].value
        response, _ = await ui.post("/ui/logout")
        assert response.status == 303 and response.headers["Location"] == "/ui/login"
    assert await gateway.store.db.fetch("SELECT * FROM ui_sessions") == []
    async with aiohttp.ClientSession(cookies={"ccgate_ui": cookie}) as http:
        response = await http.get(gateway.url + "/ui/keys", allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/ui/login"


async def test_a_revoked_admin_token_ends_its_sessions(gateway: Gateway) -> None:
    created = await gateway.store.create_admin_token("finance", role="viewer")
    async with await _signed_in(gateway, created.plaintext) as ui:
        response, _ = await ui.get("/ui/keys")
        assert response.status == 200
        await gateway.store.revoke_admin_token("finance")
        response, _ = await ui.get("/ui/keys")
        assert response.status == 303


async def test_forms_need_the_csrf_token_and_this_origin(gateway: Gateway) -> None:
    team = await gateway.store.get_team("core")
    form = {"team": team.id, "name": "mallory", "mode": "proxy"}
    async with await _signed_in(gateway) as ui:
        await ui.get("/ui/keys")
        for data, headers in (
            ({**form, "csrf": ""}, None),
            ({**form, "csrf": "x" * 43}, None),
            (form, {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}),
            (form, {"Sec-Fetch-Site": "cross-site"}),
            (form, {"Sec-Fetch-Site": "same-site"}),
            (form, {"Origin": "null"}),
        ):
            response, text = await ui.post("/ui/keys", data, headers=headers)
            assert response.status == 403, (data, headers, response.status)
            assert "mallory" not in text
        response, _ = await ui.post("/ui/keys", form)
        assert response.status == 200
    assert [k.name for k in await gateway.store.list_keys()].count("mallory") == 1


async def test_a_new_key_is_shown_once_never_again_and_audited_with_the_signed_in_name(gateway: Gateway) -> None:
    created = await gateway.store.create_admin_token("lead", role="admin")
    team = await gateway.store.get_team("core")
    async with await _signed_in(gateway, created.plaintext) as ui:
        _, page = await ui.get("/ui/keys")
        assert 'value="report"' in page  # an admin may create report-mode keys (a team admin is not offered it)
        response, text = await ui.post("/ui/keys", {"team": team.id, "name": "dee", "mode": "proxy"})
        assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
        secret = re.search(r'id="new-key">(sk-cg-[^<]+)<', text)
        assert secret is not None
        key = await gateway.store.get_key("dee")
        for path in (*PAGES, f"/ui/keys/{key.id}", "/ui/keys?export=keys", "/ui/audit?export=audit"):
            _, body = await ui.get(path)
            assert secret.group(1) not in body, path
        entries = await gateway.store.list_audit(action="key.create")
        assert [(e.actor, e.target) for e in entries][:1] == [("lead", "dee")]
        assert secret.group(1) not in str(entries)
        # rotation shows the new secret once too
        response, text = await ui.post(f"/ui/keys/{key.id}/rotate", {"grace": "0"})
        rotated = re.search(r'id="new-key">(sk-cg-[^<]+)<', text)
        assert response.status == 200 and rotated is not None and rotated.group(1) != secret.group(1)
        _, body = await ui.get(f"/ui/keys/{key.id}")
        assert rotated.group(1) not in body


async def test_a_viewer_sees_every_page_without_change_buttons_and_cannot_change(gateway: Gateway) -> None:
    viewer = await gateway.store.create_admin_token("finance", role="viewer")
    key = await gateway.store.get_key("ada")
    team = await gateway.store.get_team("core")
    before = await gateway.store.list_audit()
    async with await _signed_in(gateway, viewer.plaintext) as ui:
        for path in (*PAGES, f"/ui/keys/{key.id}"):
            response, text = await ui.get(path)
            assert response.status == 200, path
            assert 'method="post"' not in text.replace('method="post" action="/ui/logout"', ""), path
        for path, data in (
            ("/ui/keys", {"team": team.id, "name": "eve"}),
            (f"/ui/keys/{key.id}/revoke", {}),
            (f"/ui/keys/{key.id}/rotate", {"grace": "0"}),
            (f"/ui/keys/{key.id}/budget", {"amount": "5", "period": "1d"}),
            (f"/ui/keys/{key.id}/ratelimit", {"rpm": "1"}),
            ("/ui/teams/core/budget", {"amount": "5", "period": "1d"}),
            ("/ui/teams/core/ratelimit", {"rpm": "1"}),
        ):
            response, text = await ui.post(path, data)
            assert response.status == 403, path
            assert "viewer" in text
    assert await gateway.store.list_audit() == before
    assert (await gateway.store.get_key("ada")).revoked_at is None


async def test_a_team_admin_sees_and_changes_only_its_team(gateway: Gateway) -> None:
    token = await gateway.store.create_admin_token("core-lead", role="team_admin", team="core")
    other = await gateway.store.get_key("cy")
    own = await gateway.store.get_key("ada")
    now = utcnow()
    month = datetime(now.year, now.month, 1, tzinfo=UTC)
    core = await gateway.store.get_team("core")
    own_total = report_to_json(await gateway.store.report(since=month, until=now, by=None, team_id=core.id))["total"]
    async with await _signed_in(gateway, token.plaintext) as ui:
        _, text = await ui.get("/ui/")
        card = re.search(r'id="card-3"[^>]*data-requests="(\d+)".*?data-usd="([0-9.]+)"', text, re.S)
        assert card is not None and (int(card.group(1)), card.group(2)) == (
            own_total["requests"],
            own_total["cost_usd"],
        )
        _, text = await ui.get("/ui/keys")
        assert "ada" in text and ">cy<" not in text
        for path in ("/ui/teams/web", f"/ui/keys/{other.id}", "/ui/audit"):
            response, _ = await ui.get(path)
            assert response.status == 403, path
        _, text = await ui.get("/ui/requests")
        assert "/work/api" in text and ">cy<" not in text
        response, _ = await ui.get("/ui/requests?team=" + (await gateway.store.get_team("web")).id)
        assert response.status == 403
        response, _ = await ui.post(f"/ui/keys/{other.id}/revoke", {})
        assert response.status == 403
        response, _ = await ui.post(f"/ui/keys/{own.id}/budget", {"amount": "3.50", "period": "1d"})
        assert response.status == 303
    assert (await gateway.store.get_key("cy")).revoked_at is None
    budgets = await gateway.store.list_budgets(level="key", target=own.id)
    assert [b.limit_nanos for b in budgets] == [3_500_000_000]


async def test_the_dashboard_cannot_create_a_key_named_like_a_live_one(gateway: Gateway) -> None:
    """The dashboard has no name check of its own: the database's folded-name index (0008) refuses the twin."""
    own = await gateway.store.get_key("ada")
    async with await _signed_in(gateway) as ui:
        for twin in ("ADA", "Ａda"):
            response, text = await ui.post("/ui/keys", {"team": own.team_id, "name": twin})
            assert response.status == 409 and "already exists" in text, twin
    assert [k.name for k in await gateway.store.list_keys() if k.name.casefold() in ("ada", "ａda")] == ["ada"]


async def test_a_team_admin_creates_only_proxy_keys_and_rotates_with_at_most_a_day_of_grace(gateway: Gateway) -> None:
    """The admin API's rule, through the dashboard's forms too."""
    token = await gateway.store.create_admin_token("core-lead", role="team_admin", team="core")
    own = await gateway.store.get_key("ada")
    async with await _signed_in(gateway, token.plaintext) as ui:
        _, page = await ui.get("/ui/keys")
        assert 'id="create-key-form"' in page and 'value="report"' not in page  # the form offers what it may do
        response, text = await ui.post("/ui/keys", {"team": own.team_id, "name": "rex", "mode": "report"})
        assert response.status == 403 and "report-mode key" in text
        response, text = await ui.post(f"/ui/keys/{own.id}/rotate", {"grace": "2d"})
        assert response.status == 403 and "more than 24 hours" in text
        assert await gateway.store.get_key("ada") == own
        response, _ = await ui.post(f"/ui/keys/{own.id}/rotate", {"grace": "24h"})
        assert response.status == 200
        response, _ = await ui.post("/ui/keys", {"team": own.team_id, "name": "rex", "mode": "proxy"})
        assert response.status == 200
    assert [k.mode.value for k in await gateway.store.list_keys() if k.name == "rex"] == ["proxy"]


async def test_budgets_and_rate_limits_set_in_the_ui_show_as_bars(gateway: Gateway) -> None:
    key = await gateway.store.get_key("ada")
    async with await _signed_in(gateway) as ui:
        await ui.get(f"/ui/keys/{key.id}")
        response, _ = await ui.post(f"/ui/keys/{key.id}/budget", {"amount": "0.01", "period": "1d"})
        assert response.status == 303
        response, _ = await ui.post(f"/ui/keys/{key.id}/ratelimit", {"rpm": "60", "tpm": ""})
        assert response.status == 303
        _, text = await ui.get(f"/ui/keys/{key.id}?done=budget")
        assert 'class="bar-over"' in text or 'class="bar-warn"' in text or 'class="bar-ok"' in text
        assert "60 requests/min" in text and "no tokens/min" in text
        response, _ = await ui.post(f"/ui/keys/{key.id}/revoke", {})
        assert response.status == 303
    assert (await gateway.store.get_key(key.id)).revoked_at is not None
    limits = [r for r in await gateway.store.list_rate_limits() if r.target_id == key.id]
    assert [(r.rpm, r.tpm) for r in limits] == [(60, None)]
    assert {e.actor for e in await gateway.store.list_audit(action="key.")} == {"env"}


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        ("/budget", {"amount": "-1", "period": "1d"}, 400),
        ("/budget", {"amount": "1e400", "period": "1d"}, 400),
        ("/budget", {"amount": "five", "period": "1d"}, 400),
        ("/budget", {"amount": "5", "period": "fortnight"}, 400),
        ("/ratelimit", {"rpm": "-3"}, 400),
        ("/ratelimit", {"rpm": "99999999999"}, 400),
        ("/rotate", {"grace": "forever"}, 400),
    ],
)
async def test_bad_form_values_are_one_clear_error_and_change_nothing(
    gateway: Gateway, path: str, data: dict[str, str], status: int
) -> None:
    key = await gateway.store.get_key("ada")
    before = await gateway.store.list_audit()
    async with await _signed_in(gateway) as ui:
        await ui.get("/ui/keys")
        response, text = await ui.post(f"/ui/keys/{key.id}{path}", data)
        assert response.status == status
        assert 'id="error-message"' in text and "Traceback" not in text
    assert await gateway.store.list_audit() == before


async def test_malformed_requests_get_error_pages_not_tracebacks(gateway: Gateway) -> None:
    async with await _signed_in(gateway) as ui:
        for path, status in (
            ("/ui/requests?after=garbage", 400),
            ("/ui/requests?status=<b>", 400),
            ("/ui/requests?since=yesterday", 400),
            ("/ui/requests?until=0001-01-01T00:00:00%2B05:00", 400),
            ("/ui/requests?project=%00", 400),
            ("/ui/?export=secrets", 404),
            ("/ui/keys/no-such-key", 404),
            ("/ui/teams/%3Cscript%3E", 404),
            ("/ui/requests/a/b", 404),
        ):
            response, text = await ui.get(path)
            assert response.status == status, (path, response.status)
            assert "<script>" not in text and "Traceback" not in text
        await ui.get("/ui/keys")
        big = {"name": "x" * 20_000, "team": "core"}
        response, _ = await ui.post("/ui/keys", big)
        assert response.status == 400
        raw = await ui.http.post(
            gateway.url + "/ui/keys",
            data=f"csrf={ui.csrf}&name=a&name=b&team=core",
            headers={**ui.same_origin, "Content-Type": "application/x-www-form-urlencoded"},
            allow_redirects=False,
        )
        assert raw.status == 400
        raw = await ui.http.post(
            gateway.url + "/ui/keys",
            data=f"csrf={ui.csrf}&name=a%01b&team=core".encode(),
            headers={**ui.same_origin, "Content-Type": "application/x-www-form-urlencoded"},
            allow_redirects=False,
        )
        assert raw.status == 400


async def test_names_are_escaped_everywhere(gateway: Gateway) -> None:
    evil = "<img src=x onerror=alert(1)>\"'"
    await gateway.store.create_team("t-evil")
    await gateway.store.create_team("a/b c")
    await gateway.store.create_team('über"')
    await gateway.store.create_key(team="t-evil", name=evil)
    await seed_rows(gateway.store, evil, [utcnow()], project=evil, model=evil)
    async with await _signed_in(gateway) as ui:
        for path in (*PAGES, "/ui/?stack=model", "/ui/teams/t-evil", "/ui/teams/a%2Fb%20c"):
            response, text = await ui.get(path)
            assert response.status == 200, path
            assert "<img src=x" not in text, path
        _, text = await ui.get("/ui/teams")
        assert 'href="/ui/teams/a%2Fb%20c"' in text  # a name with a slash is one path segment
        evil_key = await gateway.store.get_key(evil)
        response, _ = await ui.get(f"/ui/keys/{evil_key.id}?export=models")
        assert response.status == 200
        assert (
            response.headers["Content-Disposition"]
            == 'attachment; filename="ccgate-key-_img_src_x_onerror_alert_1____-models.csv"'
        )
        response, _ = await ui.get("/ui/teams/%C3%BCber%22?export=keys")
        assert response.status == 200 and response.headers["Content-Disposition"].endswith('team-_ber_-keys.csv"')
        _, text = await ui.get("/ui/keys?export=keys")
        # CSV keeps the exact value (it cannot start a formula)
        assert evil in [row["key"] for row in csv.DictReader(io.StringIO(text))]


async def test_the_numbers_equal_gateway_report(gateway: Gateway) -> None:
    now = utcnow()
    month = datetime(now.year, now.month, 1, tzinfo=UTC)
    store = gateway.store
    total = report_to_json(await store.report(since=month, until=now, by=None))["total"]
    by_team = report_to_json(await store.report(since=month, until=now, by="team"))["groups"]
    by_key = report_to_json(await store.report(since=month, until=now, by="key"))["groups"]
    async with await _signed_in(gateway) as ui:
        _, text = await ui.get("/ui/")
        card = re.search(r'id="card-3"[^>]*data-requests="(\d+)".*?data-usd="([0-9.]+)"', text, re.S)
        assert card is not None
        assert (int(card.group(1)), card.group(2)) == (total["requests"], total["cost_usd"])
        _, body = await ui.get("/ui/?export=periods")
        month_row = next(row for row in csv.DictReader(io.StringIO(body)) if row["period"] == "This month")
        for field in ("requests", "input_tokens", "output_tokens", "cache_read_tokens", "cost_usd"):
            assert month_row[field] == str(total[field]), field
        _, body = await ui.get("/ui/teams?export=teams")
        teams = {row["team"]: row for row in csv.DictReader(io.StringIO(body))}
        for group in by_team:
            assert teams[group["key"]]["cost_usd"] == group["cost_usd"]
            assert teams[group["key"]]["requests"] == str(group["requests"])
        _, body = await ui.get("/ui/keys?export=keys")
        keys = {row["key"]: row for row in csv.DictReader(io.StringIO(body))}
        for group in by_key:
            assert keys[group["key"]]["cost_usd"] == group["cost_usd"]
        ada = await store.get_key("ada")
        _, body = await ui.get(f"/ui/keys/{ada.id}?export=models")
        ada_group = next(g for g in by_key if g["key"] == "ada")
        rows = list(csv.DictReader(io.StringIO(body)))
        assert sum(Decimal(row["cost_usd"]) for row in rows) == Decimal(ada_group["cost_usd"])
        assert sum(int(row["requests"]) for row in rows) == ada_group["requests"]
        _, body = await ui.get("/ui/?export=keys")
        assert next(iter(csv.reader(io.StringIO(body))))[:2] == ["key", "requests"]


async def test_the_request_list_pages_with_a_cursor_and_filters(gateway: Gateway) -> None:
    now = utcnow()
    rows = await seed_rows(gateway.store, "ada", [now - timedelta(seconds=s // 2) for s in range(130)], model="m-x")
    key = await gateway.store.get_key("ada")
    async with await _signed_in(gateway) as ui:
        seen: list[str] = []
        path: str | None = "/ui/requests?model=m-x"
        pages = 0
        while path is not None:
            response, text = await ui.get(path)
            assert response.status == 200
            seen += re.findall(r'href="/ui/requests/[^/"]+/([^"?]+)"', text)
            found = re.search(r'href="([^"]+)" id="next-page"', text)
            path = found.group(1).replace("&amp;", "&") if found else None
            pages += 1
        assert pages == 3
        assert sorted(seen) == sorted(row.record.id for row in rows) and len(set(seen)) == 130
        today, yesterday = now.date().isoformat(), (now - timedelta(days=1)).date().isoformat()
        _, text = await ui.get(f"/ui/requests?model=m-x&since={yesterday}&until={today}")
        assert 'id="next-page"' in text  # a date as `until` includes that day
        _, text = await ui.get(f"/ui/requests?key={key.id}&status=error")
        assert "No request matches." in text
        _, body = await ui.get("/ui/requests?model=m-x&export=requests")
        assert len(list(csv.DictReader(io.StringIO(body)))) == 130
        response, text = await ui.get(f"/ui/requests/{key.id}/{rows[0].record.id}")
        assert response.status == 200 and rows[0].record.id in text and "m-x" in text
