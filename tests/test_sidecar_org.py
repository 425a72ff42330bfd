"""The sidecar in org mode, in process: proxy mode through a real gateway, report mode's org budgets, and the
background sync."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anthropic
import pytest
from gateway_harness import PROVIDER_KEY, Gateway, running_gateway
from sidecar_harness import Harness, running_sidecar

from ccgate.client.org import login, sync
from ccgate.features.statusline import render
from ccgate.local.config_file import load_config
from ccgate.local.paths import resolve_paths
from ccgate.sidecar.app import STATE

OWN_KEY = "sk-ant-developer-own-key-0123456789"
MODEL = "claude-sonnet-4-5"


async def _login(gateway: Gateway, name: str) -> None:
    paths = resolve_paths().ensure()
    await asyncio.to_thread(login, paths, load_config(paths.config_file), gateway.url, gateway.keys[name])


def _client(harness: Harness) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=harness.url, api_key=OWN_KEY, default_headers=harness.headers, max_retries=0
    )


async def _until(condition: object, what: str) -> None:
    for _ in range(600):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_proxy_mode_goes_through_the_gateway_with_the_org_key(tmp_path: Path) -> None:
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}") as gateway:
        await _login(gateway, "ada")
        virtual_key = gateway.keys["ada"]
        async with running_sidecar(environ={"CCGATE_SYNC_INTERVAL_SECONDS": "3600"}) as harness:
            assert harness.app[STATE].org.proxy_mode
            client = _client(harness)
            reply = await client.messages.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.content
            async with client.messages.stream(
                model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "again"}]
            ) as stream:
                await stream.get_final_message()
            assert harness.upstream.requests == []  # the sidecar's own upstream is never used
            seen = gateway.upstream.messages_requests
            assert len(seen) == 2
            for request in seen:
                assert request.headers["x-api-key"] == PROVIDER_KEY
                text = repr(request.headers) + request.body.decode()
                assert OWN_KEY not in text and virtual_key not in text
            local = harness.rows()
            assert all(row["status"] == "ok" for row in local)
            rows = await gateway.rows("ada")
            assert sorted(r.record.id for r in rows) == sorted(row["id"] for row in local)

            paths = resolve_paths()
            result = await asyncio.to_thread(sync, paths, load_config(paths.config_file))
            # the sidecar's own sync loop may have sent some first (it wakes on a config reload): known to it
            assert (result.sent, result.rejected) == (0, ()) and result.known <= 2
            assert all(row["synced_at"] for row in harness.rows())
            assert sorted(r.record.id for r in await gateway.rows("ada")) == sorted(row["id"] for row in local)


async def test_proxy_mode_with_the_gateway_down_names_it(tmp_path: Path) -> None:
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}") as gateway:
        await _login(gateway, "ada")
    async with running_sidecar(environ={"CCGATE_SYNC_INTERVAL_SECONDS": "3600"}) as harness:
        with pytest.raises(anthropic.APIStatusError) as raised:
            await _client(harness).messages.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
        message = str(raised.value)
        assert "cannot reach the org gateway" in message and gateway.url in message and "ccgate doctor" in message


async def test_report_mode_syncs_in_the_background_and_holds_the_org_budget(tmp_path: Path) -> None:
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}") as gateway:
        created = await gateway.store.create_key(team="core", name="rita", mode="report")
        gateway.keys["rita"] = created.plaintext
        await gateway.store.create_budget(level="key", target="rita", limit_nanos=1000, period="1d")
        await _login(gateway, "rita")
        async with running_sidecar(environ={"CCGATE_SYNC_INTERVAL_SECONDS": "0.2"}) as harness:
            org = harness.app[STATE].org
            assert org.report_mode
            await _until(lambda: org.identity is not None, "the org budgets")
            client = _client(harness)
            await client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
            assert OWN_KEY in repr(harness.upstream.messages_requests[0].headers)  # the developer's own key
            with pytest.raises(anthropic.APIStatusError) as raised:
                await client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "more"}])
            assert raised.value.status_code == 402
            assert "org budget 'daily key budget' (key, 1d) is used up" in str(raised.value)
            assert raised.value.response.headers.get("x-should-retry") == "false"
            local = harness.rows()
            for _ in range(200):
                rows = await gateway.rows("rita")
                if len(rows) == len(local):
                    break
                await asyncio.sleep(0.1)
            assert sorted(r.record.id for r in rows) == sorted(row["id"] for row in local)
            assert len(harness.upstream.messages_requests) == 1
            # the status line shows it too, from what the sidecar last heard (it never calls the gateway)
            await _until(lambda: "org budget used up (daily key budget)" in render("{}"), "the status line")


async def test_proxy_mode_with_a_revoked_key_is_one_error_without_retries(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}", seen=seen, key_cache_seconds=0) as gateway:
        await _login(gateway, "ada")
        await gateway.store.revoke_key("ada")
        async with running_sidecar(environ={"CCGATE_SYNC_INTERVAL_SECONDS": "3600"}) as harness:
            client = anthropic.AsyncAnthropic(
                base_url=harness.url, api_key=OWN_KEY, default_headers=harness.headers, max_retries=3
            )
            with pytest.raises(anthropic.AuthenticationError) as raised:
                await client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
            assert raised.value.response.headers.get("x-should-retry") == "false"
            assert gateway.keys["ada"] not in str(raised.value)
            assert [path for _, path in seen if path == "/v1/messages"] == ["/v1/messages"]
            assert gateway.upstream.messages_requests == []


async def test_a_rotated_key_keeps_working_while_whoami_and_launch_say_to_log_in_again(tmp_path: Path) -> None:
    from datetime import timedelta

    from ccgate.client.org import whoami
    from ccgate.features.launching import org_notices

    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}", key_cache_seconds=0) as gateway:
        await _login(gateway, "ada")
        rotated = await gateway.store.rotate_key("ada", grace=timedelta(hours=1))
        paths = resolve_paths()
        identity = await asyncio.to_thread(whoami, paths, load_config(paths.config_file))
        assert identity.notice is not None and "rotated" in identity.notice and "ccgate login" in identity.notice
        # the gateway's word, not a guess from the key's prefix: the old key in its grace period, until when
        assert identity.rotated is True and identity.grace_until is not None
        assert f"until {identity.grace_until}" in identity.notice
        async with running_sidecar(environ={"CCGATE_SYNC_INTERVAL_SECONDS": "3600"}) as harness:
            org = harness.app[STATE].org
            await _until(lambda: org.identity is not None, "the sidecar's first look at /v1/me")
            summary = org.summary()
            assert summary is not None
            assert any(n.startswith("! your org rotated this key") for n in org_notices(summary, own_upstream=None))
            reply = await _client(harness).messages.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "still works"}]
            )
            assert reply.content
        await asyncio.to_thread(login, paths, load_config(paths.config_file), gateway.url, rotated.plaintext)
        identity = await asyncio.to_thread(whoami, paths, load_config(paths.config_file))
        assert (identity.rotated, identity.grace_until, identity.notice) == (False, None, None)
