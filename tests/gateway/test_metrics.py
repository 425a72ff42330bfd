"""`/metrics`: behind an admin token, bounded labels, per-key series only when asked, summed over workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import anthropic
import pytest
from gateway_harness import ADMIN_TOKEN, running_gateway
from scripted_upstream import ScriptedUpstream, TextReply, Usage

from ccgate.storage.gateway import GatewayStore

MODEL = "claude-sonnet-4-5"


async def _scrape(http: aiohttp.ClientSession, url: str, token: str | None = ADMIN_TOKEN) -> tuple[int, str]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{url}/metrics", headers=headers) as reply:
        return reply.status, await reply.text()


async def test_metrics_need_an_admin_token_and_keep_labels_bounded(db_url: str) -> None:
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        gateway.upstream.handler = lambda _: TextReply("ok", usage=Usage(input_tokens=1000, output_tokens=10))
        client = gateway.client(gateway.keys["ada"])
        for model in (MODEL, MODEL, "claude-made-up-name-9"):
            await client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "x"}])
        await gateway.flush()
        assert (await _scrape(http, gateway.url, None))[0] == 401
        assert (await _scrape(http, gateway.url, "cg-admin-wrong"))[0] == 401
        status, text = await _scrape(http, gateway.url)
        assert status == 200
        lines = [line for line in text.splitlines() if not line.startswith("#")]
        ok = f'ccgate_gateway_requests_total{{model="{MODEL}",provider="anthropic",status_class="2xx",team="core"}} 2.0'
        assert ok in lines
        assert any(line.startswith('ccgate_gateway_requests_total{model="other"') for line in lines)
        assert any(line.startswith("ccgate_gateway_cost_usd_total{") for line in lines)
        assert any(f'model="{MODEL}"' in line and 'type="input"' in line and line.endswith(" 2000.0") for line in lines)
        assert any(line.startswith("ccgate_gateway_request_duration_seconds_bucket{") for line in lines)
        assert "ada" not in text and 'key="' not in text
        named = await gateway.store.create_admin_token("finance", role="viewer")
        assert (await _scrape(http, gateway.url, named.plaintext))[0] == 200


async def test_per_key_series_only_when_turned_on(db_url: str) -> None:
    async with running_gateway(db_url, metrics_per_key=True) as gateway, aiohttp.ClientSession() as http:
        client = gateway.client(gateway.keys["ada"])
        await client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
        await gateway.flush()
        _, text = await _scrape(http, gateway.url)
        assert 'ccgate_gateway_key_requests_total{key="ada",team="core"} 1.0' in text
        histogram = [line for line in text.splitlines() if "duration_seconds" in line]
        assert histogram and not any("key=" in line for line in histogram)


async def test_workers_share_one_port_and_their_metrics_add_up(db_url: str, tmp_path: Path) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("--workers needs PostgreSQL (refusal tested in test_cli_gateway)")
    store = await GatewayStore.open(db_url)
    await store.create_team("core")
    key = (await store.create_key(team="core", name="ada")).plaintext
    await store.close()
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    async with ScriptedUpstream() as upstream:
        env = {
            **os.environ,
            "CCGATE_ANTHROPIC_BASE_URL": upstream.url,
            "CCGATE_ANTHROPIC_API_KEY": "sk-ant-provider",
            "CCGATE_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        command = [sys.executable, "-m", "ccgate", "gateway", "serve", "--db", db_url, "--port", str(port)]
        process = subprocess.Popen([*command, "--workers", "2"], env=env, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                for _ in range(300):
                    try:
                        async with http.get(f"{url}/readyz") as reply:
                            if reply.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
                client = anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)
                for _ in range(12):  # new connections each time: the kernel spreads them over the workers
                    fresh = client.with_options(http_client=None)
                    await fresh.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
                await asyncio.sleep(1.0)  # each worker's ledger writes its rows
                for _ in range(3):  # whichever worker answers, it reports both workers' requests
                    async with aiohttp.ClientSession() as fresh_http:
                        status, text = await _scrape(fresh_http, url)
                    assert status == 200
                    assert 'status_class="2xx",team="core"} 12.0' in text, text[-2000:]
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_budget_left_is_read_from_the_database_at_scrape_time(db_url: str) -> None:
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        store = gateway.store
        await store.create_budget(level="team", target="core", limit_nanos=5 * 10**9, period="1d")
        await store.create_budget(level="key", target="ada", limit_nanos=10**9, period="1d")
        _, text = await _scrape(http, gateway.url)
        team = [line for line in text.splitlines() if line.startswith("ccgate_gateway_budget_left_usd{")]
        assert len(team) == 1 and 'level="team"' in team[0] and 'target="core"' in team[0]
        assert team[0].endswith(" 5.0")
        assert "ada" not in text  # key budgets only with per-key series on
        gateway.upstream.handler = lambda _: TextReply("ok", usage=Usage(input_tokens=1000, output_tokens=10))
        client = gateway.client(gateway.keys["ada"])
        await client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
        await gateway.flush()
        for _ in range(100):  # the settle runs after the reply
            _, text = await _scrape(http, gateway.url)
            (line,) = [x for x in text.splitlines() if x.startswith("ccgate_gateway_budget_left_usd{")]
            if not line.endswith(" 5.0"):
                break
            await asyncio.sleep(0.05)
        assert float(line.rsplit(" ", 1)[1]) < 5.0
    async with running_gateway(db_url, org=False, metrics_per_key=True) as gateway, aiohttp.ClientSession() as http:
        _, text = await _scrape(http, gateway.url)
        assert any('level="key"' in x and 'target="ada"' in x for x in text.splitlines())
