"""The gateway runs the same proxy core as the sidecar, with its own reply limit (`gateway serve --max-reply-mb`):
a whole reply past it is a 502, a stream event that never ends is cut, and the gateway carries on."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import anthropic
import pytest
from endless_upstream import SENT_AT_MOST, endless_upstream
from gateway_harness import PROVIDER_KEY, running_gateway

from ccgate.storage.gateway import GatewayStore

MODEL = "claude-opus-4-5"


async def test_a_stream_event_past_the_limit_is_cut_and_metered(db_url: str) -> None:
    async with endless_upstream("line") as (url, sent, ended):
        environ = {"CCGATE_ANTHROPIC_BASE_URL": url}
        async with running_gateway(db_url, environ=environ, max_reply_mb=1) as gateway, aiohttp.ClientSession() as http:
            body = {"model": MODEL, "max_tokens": 300, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            headers = {"x-api-key": gateway.keys["ada"], "anthropic-version": "2023-06-01"}
            async with http.post(f"{gateway.url}/v1/messages", json=body, headers=headers) as reply:
                assert reply.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):  # the client holds the endless event's start
                    await reply.read()
            await asyncio.wait_for(ended.wait(), 60)
            assert sent[-1] < SENT_AT_MOST  # the gateway stopped reading
            (row,) = await gateway.rows()
            assert (row.record.status, row.record.error_type) == ("interrupted", "event_too_large")
            assert "gateway serve --max-reply-mb" in (row.record.error_message or "")
            assert row.record.usage.input_tokens == 1234 and row.record.usage.output_tokens > 1


async def test_a_whole_reply_past_the_limit_is_a_502_naming_the_flag(db_url: str) -> None:
    async with endless_upstream("json") as (url, sent, ended):
        environ = {"CCGATE_ANTHROPIC_BASE_URL": url}
        async with running_gateway(db_url, environ=environ, max_reply_mb=1) as gateway:
            client = gateway.client(gateway.keys["ada"])
            with pytest.raises(anthropic.APIStatusError) as failed:
                await client.messages.create(model=MODEL, max_tokens=300, messages=[{"role": "user", "content": "hi"}])
            assert failed.value.status_code == 502
            message = json.loads(failed.value.response.text)["error"]["message"]
            assert "larger than 1 MiB" in message and "--max-reply-mb" in message
            await asyncio.wait_for(ended.wait(), 60)
            assert sent[-1] < SENT_AT_MOST


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - our own loopback server
            return int(reply.status)
    except OSError:
        return 0


async def test_gateway_serve_takes_max_reply_mb(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path / 'g.db'}"
    store = await GatewayStore.open(db)
    try:
        await store.create_customer("acme")
        await store.create_team("core", customer="acme")
        key = (await store.create_key(team="core", name="ada")).plaintext
    finally:
        await store.close()
    async with endless_upstream("json") as (url, _, _):
        port = _free_port()
        command = [sys.executable, "-m", "ccgate", "gateway", "serve", "--db", db, "--port", str(port)]
        env = {**os.environ, "CCGATE_ANTHROPIC_BASE_URL": url, "CCGATE_ANTHROPIC_API_KEY": PROVIDER_KEY}
        process = subprocess.Popen(
            [*command, "--max-reply-mb", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        try:
            deadline = time.monotonic() + 60
            while await asyncio.to_thread(_status, f"http://127.0.0.1:{port}/readyz") != 200:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            client = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{port}", api_key=key, max_retries=0)
            with pytest.raises(anthropic.APIStatusError) as failed:
                await client.messages.create(model=MODEL, max_tokens=300, messages=[{"role": "user", "content": "hi"}])
            assert failed.value.status_code == 502
            assert "larger than 2 MiB" in json.loads(failed.value.response.text)["error"]["message"]
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
