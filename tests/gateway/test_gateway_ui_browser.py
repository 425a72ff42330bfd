"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright), on SQLite and PostgreSQL:
sign in, every page renders with no console error and no request leaving 127.0.0.1, the numbers equal
`ccgate gateway report --json`, a key made in the browser works and is never shown again, a viewer cannot change
anything, a cross-site form post is refused, and sign-out ends the session. A screenshot of each page is kept in
test-artifacts/ui/ (or under CCGATE_TEST_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gateway_harness import ADMIN_TOKEN, Gateway, running_gateway
from scripted_upstream import TextReply, Usage
from ui_testing import seed_dashboard

from ccgate import env
from ccgate.core.records import utcnow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# read at import: the autouse `isolated_home` fixture clears CCGATE_* variables for each test
ARTIFACTS = Path(os.environ.get(env.TEST_ARTIFACTS) or Path(__file__).parents[2] / "test-artifacts") / "ui"
REQUIRE = os.environ.get(env.REQUIRE_E2E) == "1"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        if REQUIRE:
            raise
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        if REQUIRE:
            pytest.fail(f"no Chromium at {CHROMIUM} (Debian package `chromium`)")
        pytest.skip("Chromium is not installed (Debian package `chromium`)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def gateway(db_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(db_url) as served:
        await seed_dashboard(served.store)
        yield served


class Watched:
    """A page whose console errors, page errors and requests are recorded."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))

    async def open(self, path: str, shot: str | None = None) -> Any:
        response = await self.page.goto(self.base + path)
        await self.page.wait_for_load_state("load")
        if shot is not None:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        return response

    async def sign_in(self, token: str) -> None:
        await self.open("/ui/login")
        await self.page.fill("#token", token)
        await self.page.click("#login-form button[type=submit]")
        await self.page.wait_for_url(self.base + "/ui/")

    def check(self) -> None:
        assert self.errors == []
        outside = [url for url in self.requests if not url.startswith("http://127.0.0.1:")]
        assert outside == []


async def _page(browser: Any, gateway: Gateway) -> Watched:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    return Watched(await context.new_page(), gateway.url)


async def _report(gateway: Gateway, *args: str) -> dict[str, Any]:
    """`ccgate gateway report --json` as a real process against the running gateway."""
    environ = {**os.environ, env.GATEWAY_ADMIN_TOKEN: ADMIN_TOKEN, env.GATEWAY_URL: gateway.url}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ccgate",
        "gateway",
        "report",
        "--json",
        *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    data: dict[str, Any] = json.loads(out)
    return data


async def test_every_page_renders_with_no_error_no_outside_request_and_the_report_numbers(
    browser: Any, gateway: Gateway, db_url: str
) -> None:
    backend = db_url.split(":", 1)[0]
    watched = await _page(browser, gateway)
    await watched.open("/ui/login", shot=f"{backend}-login")
    await watched.sign_in(ADMIN_TOKEN)
    key = await gateway.store.get_key("ada")
    row = (await gateway.store.db.fetch("SELECT key_id, id FROM requests ORDER BY started_at LIMIT 1"))[0]
    pages = {
        "overview": "/ui/",
        "overview-90-by-model": "/ui/?days=90&stack=model",
        "teams": "/ui/teams",
        "team": "/ui/teams/core",
        "keys": "/ui/keys",
        "key": f"/ui/keys/{key.id}",
        "requests": "/ui/requests",
        "request": f"/ui/requests/{row[0]}/{row[1]}",
        "audit": "/ui/audit",
    }
    for name, path in pages.items():
        response = await watched.open(path, shot=f"{backend}-{name}")
        assert response.status == 200, name
        assert await watched.page.locator("h1").count() == 1
    watched.check()
    # a stacked bar per (day, team) with spend: core on 20 days (ada's 3-hourly rows and bob's every other day
    # overlap), at least the chart drew bars and the legend names both teams that spent
    await watched.open("/ui/")
    assert await watched.page.locator("#spend-chart rect").count() >= 10
    legend = await watched.page.locator("ul.legend").inner_text()
    assert "core" in legend

    now = utcnow()
    month = datetime(now.year, now.month, 1, tzinfo=UTC)
    report = await _report(gateway, "--since", month.isoformat())
    card = watched.page.locator("#card-3")
    assert await card.get_attribute("data-requests") == str(report["total"]["requests"])
    assert await card.locator(".usd").first.get_attribute("data-usd") == report["total"]["cost_usd"]
    by_team = await _report(gateway, "--since", month.isoformat(), "--by", "team")
    await watched.open("/ui/teams")
    for group in by_team["groups"]:
        cell = watched.page.locator(f'#teams tr[data-team="{group["key"]}"]')
        assert await cell.get_attribute("data-usd") == group["cost_usd"], group["key"]
    core = next(g for g in by_team["groups"] if g["key"] == "core")
    await watched.open("/ui/teams/core")
    assert await watched.page.locator("#team-spend").get_attribute("data-usd") == core["cost_usd"]
    assert await watched.page.locator("#team-spend").get_attribute("data-requests") == str(core["requests"])
    watched.check()


async def test_a_key_created_in_the_browser_works_and_is_never_shown_again(browser: Any, gateway: Gateway) -> None:
    watched = await _page(browser, gateway)
    await watched.sign_in(ADMIN_TOKEN)
    await watched.open("/ui/keys")
    await watched.page.fill("#new-key-name", "dora")
    await watched.page.select_option("#new-key-team", label="core")
    await watched.page.click("#create-key")
    await watched.page.wait_for_selector("#new-key")
    secret = (await watched.page.locator("#new-key").inner_text()).strip()
    assert secret.startswith("sk-cg-")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await watched.page.screenshot(path=str(ARTIFACTS / "key-created.png"))

    gateway.upstream.enqueue(TextReply("hello dora", usage=Usage(input_tokens=10, output_tokens=3)))
    message = await gateway.client(secret).messages.create(
        model="claude-sonnet-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == "hello dora"
    rows = await gateway.rows("dora")
    assert len(rows) == 1

    key = await gateway.store.get_key("dora")
    for path in ("/ui/keys", f"/ui/keys/{key.id}", "/ui/", "/ui/audit", "/ui/requests"):
        await watched.open(path)
        assert secret not in await watched.page.content(), path
        assert await watched.page.locator("#new-key").count() == 0
    watched.check()


async def test_a_viewer_has_no_change_buttons_and_the_endpoints_refuse(browser: Any, gateway: Gateway) -> None:
    viewer = await gateway.store.create_admin_token("finance", role="viewer")
    key = await gateway.store.get_key("ada")
    watched = await _page(browser, gateway)
    await watched.sign_in(viewer.plaintext)
    for path in ("/ui/keys", f"/ui/keys/{key.id}", "/ui/teams/core"):
        await watched.open(path, shot=None)
        assert await watched.page.locator("main form[method=post]").count() == 0, path
        assert await watched.page.locator("#revoke, #rotate, #create-key").count() == 0, path
    csrf = await watched.page.locator("input[name=csrf]").first.get_attribute("value")
    for action, form in (
        (f"/ui/keys/{key.id}/revoke", {}),
        (f"/ui/keys/{key.id}/budget", {"amount": "1", "period": "1d"}),
        ("/ui/keys", {"team": key.team_id, "name": "eve"}),
    ):
        reply = await watched.page.request.post(
            gateway.url + action,
            form={**form, "csrf": csrf or ""},
            headers={"Origin": gateway.url},
            max_redirects=0,
        )
        assert reply.status == 403, action
    assert (await gateway.store.get_key("ada")).revoked_at is None
    assert "eve" not in [k.name for k in await gateway.store.list_keys()]
    watched.check()


async def test_a_cross_site_form_post_is_refused(browser: Any, gateway: Gateway) -> None:
    """Another site's page posts a form at the dashboard while an admin is signed in: nothing changes, even
    with a leaked CSRF token (the browser says where the post came from)."""
    watched = await _page(browser, gateway)
    await watched.sign_in(ADMIN_TOKEN)
    key = await gateway.store.get_key("ada")
    await watched.open(f"/ui/keys/{key.id}")
    csrf = await watched.page.locator("input[name=csrf]").first.get_attribute("value")
    evil = (
        f'<form method="post" action="{gateway.url}/ui/keys/{key.id}/revoke">'
        f'<input type="hidden" name="csrf" value="{csrf}"><button id="go">win a prize</button></form>'
    )

    async def evil_page(request: web.Request) -> web.Response:
        return web.Response(text=evil, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", evil_page)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        # another port on 127.0.0.1 is another origin (and `localhost` would be another site as well)
        for host in ("127.0.0.1", "localhost"):
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[-1][1]
            await watched.page.goto(f"http://{host}:{port}/")
            async with watched.page.expect_navigation():
                await watched.page.click("#go")
            assert "/ui/keys" in watched.page.url
            status = await watched.page.locator("h1").inner_text()
            assert status in ("403", "401"), status
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await watched.page.screenshot(path=str(ARTIFACTS / f"cross-site-{host}.png"))
    finally:
        await runner.cleanup()
    assert (await gateway.store.get_key("ada")).revoked_at is None


async def test_sign_out_ends_the_session_on_the_server(browser: Any, gateway: Gateway) -> None:
    watched = await _page(browser, gateway)
    await watched.sign_in(ADMIN_TOKEN)
    cookies = await watched.page.context.cookies()
    session = next(c for c in cookies if c["name"] == "ccgate_ui")
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/ui"
    await watched.page.click("#sign-out")
    await watched.page.wait_for_url(gateway.url + "/ui/login")
    await watched.open("/ui/keys")
    assert watched.page.url == gateway.url + "/ui/login"
    async with aiohttp.ClientSession(cookies={"ccgate_ui": session["value"]}) as http:
        reply = await http.get(gateway.url + "/ui/keys", allow_redirects=False)
        assert reply.status == 303 and reply.headers["Location"] == "/ui/login"
    watched.check()


def test_the_artifacts_folder_is_ignored_by_git() -> None:
    ignored = (Path(__file__).parents[2] / ".gitignore").read_text().split()
    assert "test-artifacts/" in ignored
    assert re.fullmatch(r".+/ui", str(ARTIFACTS))
