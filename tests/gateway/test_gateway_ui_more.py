"""The dashboard's remaining edges: the cookie is `Secure` over https, an expired session is refused, the chart and
budget arithmetic, and the page-timing benchmark runs end to end on a small database."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from gateway_harness import ADMIN_TOKEN, running_gateway

from ccgate.gateway.app import GatewaySettings, create_app, create_runner
from ccgate.gateway.ui import charts
from ccgate.gateway.ui.pages import budget_lines

ROOT = Path(__file__).resolve().parents[2]


def _self_signed(folder: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


async def test_over_https_the_session_cookie_is_secure(tmp_path: Path) -> None:
    settings = GatewaySettings(
        db_url=f"sqlite://{tmp_path / 'gateway.db'}",
        environ={"CCGATE_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
        migrate=True,
    )
    runner = create_runner(create_app(settings))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_self_signed(tmp_path))
        await site.start()
        base = f"https://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as http:
            reply = await http.post(
                base + "/ui/login",
                data={"token": ADMIN_TOKEN},
                headers={"Origin": base},
                allow_redirects=False,
                ssl=False,  # the throwaway certificate above, on loopback
            )
            assert reply.status == 303
            cookie = reply.headers["Set-Cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    finally:
        await runner.cleanup()


async def test_behind_a_tls_proxy_forms_work_and_the_cookie_is_secure(db_url: str) -> None:
    """The proxy speaks http to the gateway and passes the Host header on; the browser's origin is https."""
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        host = gateway.url.removeprefix("http://")
        reply = await http.post(
            gateway.url + "/ui/login",
            data={"token": ADMIN_TOKEN},
            headers={"Origin": f"https://{host}", "Sec-Fetch-Site": "same-origin"},
            allow_redirects=False,
        )
        assert reply.status == 303 and "Secure" in reply.headers["Set-Cookie"]
        for origin in (f"https://{host}.evil.example", "https://evil.example", f"ftp://{host}", f"https://{host}/x"):
            refused = await http.post(
                gateway.url + "/ui/login",
                data={"token": ADMIN_TOKEN},
                headers={"Origin": origin},
                allow_redirects=False,
            )
            assert refused.status == 403, origin


async def test_an_expired_session_is_refused(db_url: str) -> None:
    from ui_testing import UiClient

    async with running_gateway(db_url) as gateway, UiClient(gateway.url) as ui:
        assert (await ui.sign_in(ADMIN_TOKEN)).status == 303
        response, _ = await ui.get("/ui/keys")
        assert response.status == 200
        await gateway.store.db.execute("UPDATE ui_sessions SET expires_at = '2000-01-01T00:00:00.000000Z'")
        response, _ = await ui.get("/ui/keys")
        assert response.status == 303 and response.headers["Location"] == "/ui/login"


def test_the_chart_stacks_days_and_merges_small_series_into_other() -> None:
    first = dt.date(2026, 12, 1)
    cells = {(f"2026-12-0{day}", f"team{i}"): (i + 1) * 1_000_000 for day in (1, 2, 3) for i in range(10)}
    chart = charts.stacked_days(cells, first=first, days=5, names={}, usd=str, series_limit=3)
    assert [item.label for item in chart.legend] == ["team9", "team8", "team7", "other"]
    assert sum(item.nanos for item in chart.legend) == sum(cells.values())
    assert len(chart.segments) == 3 * 4  # three days with spend, four series each
    day_one = [s for s in chart.segments if s.title.startswith("2026-12-01")]
    bottom = max(s.y + s.height for s in day_one)
    top = min(s.y for s in day_one)
    full = charts.HEIGHT - charts.TOP - charts.BOTTOM
    assert bottom == pytest.approx(charts.TOP + full)
    # the axis top is a round number at or above the tallest day
    assert (bottom - top) / full == pytest.approx(55_000_000 / charts._nice_top(55_000_000), abs=0.01)
    assert charts.tick_label(2_500_000, 10_000_000) == "$0.0025"
    assert charts.stacked_days({}, first=first, days=30, names={}, usd=str).empty


def test_budget_bars_and_when_a_budget_runs_out() -> None:
    from ccgate.core.budgets import BudgetState, parse_period
    from ccgate.storage.gateway.records import Budget, BudgetLevel, BudgetView

    now = dt.datetime(2026, 12, 11, tzinfo=dt.UTC)
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    budget = Budget("b", BudgetLevel.TEAM, "t", 100, parse_period("1mo"), True, "UTC", (), None, None, None, now, now)

    def view(spent: int, reserved: int = 0, limit: int = 100) -> BudgetView:
        state = BudgetState(key="b", label="team", limit_nanos=limit, spent_nanos=spent, reserved_nanos=reserved,
                            resets_at=dt.datetime(2027, 1, 1, tzinfo=dt.UTC))  # fmt: skip
        return BudgetView(budget, state, start)

    half, slow, over = budget_lines([view(50, 10), view(10), view(120)], {"t": "core"}, now)
    assert half.target == "core" and half.used == 0.5
    assert (half.bar.spent, half.bar.reserved, half.bar.level) == (0.5, 0.1, "ok")
    assert half.runs_out == dt.datetime(2026, 12, 21, tzinfo=dt.UTC)  # 50 in 10 days: 50 more in 10 more
    assert slow.runs_out is None  # 10 in 10 days lasts past the reset
    assert over.runs_out == now and over.bar.level == "over" and over.bar.spent == 1.0
    # a nano-dollar spent against a huge limit: the pace says "in a billion years", past any date -- not a 500
    (tiny,) = budget_lines([view(1, limit=10**18)], {}, now)
    assert tiny.runs_out is None


async def test_the_page_timing_benchmark_runs_on_a_small_database(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import dashboard_pages
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    url = f"sqlite://{tmp_path / 'gateway.db'}"
    await dashboard_pages.make_database(url, 300, teams=2, keys_per_team=3, days=10)
    timings = await dashboard_pages.time_pages(url)
    expected = {"overview", "overview_90d_by_model", "teams", "team", "keys", "key", "requests", "request", "audit"}
    assert expected <= set(timings)
    assert all(ms > 0 for ms in timings.values())
