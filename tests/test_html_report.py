"""`ccgate report --html`: the page renders in a real headless Chromium, its numbers match `cost --json`, and
opening it makes no network request. Ledger text cannot inject markup or script."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_main

from ccgate.core.display import printable
from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.core.tags import encode
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import insert_records, open_ledger

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
EVIL = '<script>window.pwned=1</script><img src="http://198.51.100.1/x.png">\x1b[2J'
RANGE = ("--since", "2025-03-01", "--until", "2025-03-31")


def _row(day: int, model: str, nanos: int | None, **fields: Any) -> RequestRecord:
    cost = Cost(nanos=nanos, quality=PriceQuality.PRICED) if nanos is not None else Cost(None, PriceQuality.UNPRICED)
    record = RequestRecord(
        started_at=datetime(2025, 3, day, 9 + day % 5, 15, tzinfo=UTC),
        requested_model=model,
        status=RequestStatus.OK,
        usage=Usage(input_tokens=100 * day, output_tokens=10 * day, cache_read_tokens=1000),
        cost=cost,
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record


@pytest.fixture
def page() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CCGATE_REQUIRE_E2E") == "1":
            raise
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CCGATE_REQUIRE_E2E") == "1":
            pytest.fail(f"no Chromium at {CHROMIUM} (Debian package `chromium`)")
        pytest.skip("Chromium is not installed (Debian package `chromium`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1000, "height": 900})
        finally:
            browser.close()


def _usd(text: str) -> int:
    return int(text.replace(".", ""))


def test_the_report_renders_matches_cost_json_and_makes_no_request(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, page: Any
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    db = open_ledger(resolve_paths().ensure().ledger_file)
    insert_records(
        db,
        [
            *(_row(day, "claude-sonnet-4-5", 1_234_567 * day, project="/w/api", session_id="s-a") for day in (1, 3, 4)),
            *(_row(day, "claude-haiku-4-5", 98_765 * day, project="/w/web", session_id="s-b") for day in (2, 3, 9)),
            _row(5, "claude-opus-4-1", 50_000_000, project="/w/api", tags=encode({"ticket": "ABC-1"})),
            _row(6, EVIL, None, project=EVIL, session_id=EVIL, tags=encode({"ticket": "ABC-2"})),
            _row(20, "claude-opus-4-1", 7, status=RequestStatus.PENDING, tags=encode({"team": "pay"})),
        ],
    )
    db.close()
    target = tmp_path / "spend.html"
    code, _, err = run_main(capsys, monkeypatch, "report", "--html", str(target), *RANGE)
    assert code == 0, err
    assert "wrote" in err and target.stat().st_size > 1000

    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(target.as_uri())
    page.wait_for_load_state("load")
    assert requests == [target.as_uri()]  # the page itself, nothing else: no image, font, script or style fetch
    assert page.evaluate("window.pwned") is None and page.locator("script").count() == 0
    assert page.title() == "ccgate spend from 2025-03-01 00:00 to 2025-04-01 00:00"
    chart = page.locator("#spend-chart").bounding_box()
    assert chart is not None and chart["height"] > 100 and chart["width"] > 500
    # one bar segment per (day, model) with spend: 3 sonnet, 3 haiku, 2 opus (the unpriced one has none)
    assert page.locator("#spend-chart rect").count() == 8
    # by project: 3 days of /w/api sonnet, 3 of /w/web haiku, /w/api opus on day 5, (none) on day 20
    assert page.locator("#project-chart rect").count() == 8

    def cost(*args: str) -> dict[str, Any]:
        code, out, err = run_main(capsys, monkeypatch, "cost", *RANGE, "--json", *args)
        assert code == 0, err
        data: dict[str, Any] = json.loads(out)
        return data

    def table(table_id: str) -> dict[str, tuple[int, str]]:
        rows = page.locator(f"#{table_id} tbody tr")
        found = {}
        for index in range(rows.count()):
            row = rows.nth(index)
            key = row.get_attribute("data-key")
            requests_cell = row.locator("[data-requests]").get_attribute("data-requests")
            usd = row.locator("td[data-usd]").get_attribute("data-usd")
            assert key is not None and requests_cell is not None and usd is not None
            found[key] = (int(requests_cell), usd)
        return found

    def expected(data: dict[str, Any]) -> dict[str, tuple[int, str]]:
        # the page shows ledger text with its control characters escaped, as the terminal does
        return {
            printable(group["key"], newlines=True): (
                group["requests"],
                "" if group["requests"] == group["unpriced_requests"] else group["cost_usd"],
            )
            for group in data["groups"]
        }

    by_model = cost("--by", "model")
    assert table("by-model") == expected(by_model)
    assert table("by-project") == expected(cost("--by", "project"))
    assert table("tag-ticket") == expected(cost("--by", "tag:ticket"))
    assert table("tag-team") == expected(cost("--by", "tag:team"))
    total = by_model["total"]
    assert page.locator("#total-cost").get_attribute("data-usd") == total["cost_usd"]
    assert page.locator("#total-requests").get_attribute("data-requests") == str(total["requests"])
    assert page.locator("#total-cost b").inner_text() == "$0.06"  # 9,876,536 + 1,382,710 + 50,000,007 nanos
    # the shown amounts are the exact ones rounded
    shown = page.locator("#by-model tbody tr td[data-usd]").all_inner_texts()
    assert "$0.05" in shown and "unpriced" in shown
    # blocks: one window per day with requests, summing to the total
    block_cells = page.locator("#blocks tbody td[data-usd]")
    block_nanos = [_usd(block_cells.nth(i).get_attribute("data-usd") or "0") for i in range(block_cells.count())]
    assert sum(block_nanos) == _usd(total["cost_usd"])
    # top sessions with their details; the hostile one shown as text
    sessions = page.locator("#sessions").inner_text()
    assert "/w/api" in sessions and "claude-haiku-4-5" in sessions
    body = page.locator("body").inner_text()
    assert "<script>window.pwned=1</script>" in body and "\\x1b[2J" in body and "\x1b" not in body
    assert page.locator("img").count() == 0
    assert errors == []


def test_an_unwritable_target_is_one_line_and_a_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, _, err = run_main(capsys, monkeypatch, "report", "--html", str(tmp_path / "missing" / "x.html"))
    assert code == 1 and err.startswith("ccgate: error: cannot write") and "hint:" in err
    (tmp_path / "dir.html").mkdir()
    code, _, err = run_main(capsys, monkeypatch, "report", "--html", str(tmp_path / "dir.html"))
    assert code == 1 and "cannot write" in err and not list(tmp_path.glob(".*"))


def test_the_page_replaces_a_report_atomically_keeping_its_permissions(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A report the user made private (0600) stays private when it is written again; a new one is 0644 less the
    umask, like any file the user creates; no temporary file is left behind."""
    private = tmp_path / "private.html"
    private.write_text("old")
    private.chmod(0o600)
    code, _, err = run_main(capsys, monkeypatch, "report", "--html", str(private))
    assert code == 0, err
    assert private.stat().st_mode & 0o777 == 0o600
    assert private.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    old_mask = os.umask(0o027)
    try:
        code, _, err = run_main(capsys, monkeypatch, "report", "--html", str(tmp_path / "new.html"))
    finally:
        os.umask(old_mask)
    assert code == 0, err
    assert (tmp_path / "new.html").stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.glob(".*"))
