"""Two gateway processes on one database: budgets exact across them, a killed one's holds and rows, revocation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anthropic
from gateway_process import gateway_process, instance_env
from scripted_upstream import ScriptedUpstream, TextReply, Usage

from ccgate.core.records import RequestStatus
from ccgate.storage.gateway import GatewayStore

PROVIDER_KEY = "sk-ant-provider-secret-for-instances"
MODEL = "claude-sonnet-4-5"
# 5,000 bytes of prompt bound the input at 5,000+ tokens; the upstream bills 1,000 in and 100 out:
# $0.0045 a request on Sonnet 4.5, and a reservation of about $0.0165.
PROMPT = "x" * 5000
COST = 4_500_000


async def _org(db_url: str, *, team_limit: int | None) -> tuple[GatewayStore, str]:
    store = await GatewayStore.open(db_url)
    await store.create_customer("acme")
    await store.create_team("core", customer="acme")
    key = (await store.create_key(team="core", name="ada")).plaintext
    if team_limit is not None:
        await store.create_budget(level="team", target="core", limit_nanos=team_limit, period="1d")
    return store, key


async def _team_view(store: GatewayStore) -> tuple[int, int]:
    key = await store.get_key("ada")
    (view,) = await store.budget_views(key_id=key.id, team_id=key.team_id, customer_id=None)
    return view.state.spent_nanos, view.state.reserved_nanos


async def _rows(store: GatewayStore) -> list[tuple[str, str, int, int, int]]:
    rows = await store.db.fetch("SELECT id, status, coalesce(http_status, 0), input_tokens, cost_nanos FROM requests")
    return [(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4] or 0)) for r in rows]


async def test_fifty_concurrent_requests_on_two_instances_stay_within_the_team_budget(
    db_url: str, tmp_path: Path
) -> None:
    limit = 3 * COST + COST // 10  # room for about three requests
    store, key = await _org(db_url, team_limit=limit)
    async with ScriptedUpstream() as upstream:
        upstream.handler = lambda _: TextReply("ok", usage=Usage(input_tokens=1000, output_tokens=100))
        env = instance_env(upstream.url, PROVIDER_KEY)
        async with (
            gateway_process(db_url, tmp_path / "a", environ=env) as first,
            gateway_process(db_url, tmp_path / "b", environ=env) as second,
        ):
            clients = [anthropic.AsyncAnthropic(base_url=i.url, api_key=key, max_retries=0) for i in (first, second)]

            async def one(index: int) -> int:
                try:
                    await clients[index % 2].messages.create(
                        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
                    )
                except anthropic.APIStatusError as error:
                    assert error.status_code == 402, error
                    assert error.response.headers["x-should-retry"] == "false"
                    return 402
                return 200

            statuses = await asyncio.gather(*(one(i) for i in range(50)))
        served = statuses.count(200)
        assert served >= 3
        assert statuses.count(402) == 50 - served
        # nothing that was refused reached the upstream
        assert len(upstream.messages_requests) == served
    spent, reserved = await _team_view(store)
    assert reserved == 0
    assert spent <= limit + COST
    rows = await _rows(store)
    ok = [row for row in rows if row[1] == RequestStatus.OK]
    assert len(ok) == served
    assert sum(row[4] for row in rows) == spent
    assert {row[2] for row in rows if row[1] != RequestStatus.OK} == {402}
    await store.close()


async def test_a_killed_instance_holds_lapse_and_its_rows_end_interrupted_with_the_tokens_seen(
    db_url: str, tmp_path: Path
) -> None:
    store, key = await _org(db_url, team_limit=10**9)  # $1: room for the stream's reservation, not for two
    async with ScriptedUpstream() as upstream:
        env = instance_env(upstream.url, PROVIDER_KEY)
        ttl = ("--reservation-ttl", "1.5")
        async with gateway_process(db_url, tmp_path / "b", environ=env, args=ttl) as survivor:
            async with gateway_process(db_url, tmp_path / "a", environ=env, args=ttl) as doomed:
                # message_start (1,000 input tokens), a block and a first delta; then the upstream hangs
                upstream.enqueue(
                    TextReply("a long answer", usage=Usage(input_tokens=1000), cut_after_events=3, then="hang")
                )
                client = anthropic.AsyncAnthropic(base_url=doomed.url, api_key=key, max_retries=0)
                stream_task = asyncio.create_task(_stream(client))
                await asyncio.wait_for(upstream.hanging.wait(), 30)
                for _ in range(300):  # the progress row (with message_start's usage) reaches the database
                    rows = await _rows(store)
                    if rows and rows[0][3] == 1000:
                        break
                    await asyncio.sleep(0.1)
                assert rows[0][1] == RequestStatus.PENDING
                assert (await _team_view(store))[1] > 0  # the stream holds a reservation
                doomed.kill()
                stream_task.cancel()
                await asyncio.gather(stream_task, return_exceptions=True)
            for _ in range(300):  # the survivor notices the dead instance once its heartbeat lapsed
                (row,) = await _rows(store)
                if row[1] != RequestStatus.PENDING:
                    break
                await asyncio.sleep(0.1)
            assert row[1] == RequestStatus.INTERRUPTED
            assert row[3] == 1000  # the tokens seen before the kill stay: the provider bills them
            spent, reserved = await _team_view(store)
            assert reserved == 0  # the dead instance's hold lapsed
            assert spent == row[4] > 0  # and what the cut stream cost counts
            upstream.enqueue(TextReply("after", usage=Usage(input_tokens=10, output_tokens=5)))
            after = anthropic.AsyncAnthropic(base_url=survivor.url, api_key=key, max_retries=0)
            reply = await after.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
            assert reply.content
    await store.close()


async def _stream(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(
        model=MODEL, max_tokens=64_000, messages=[{"role": "user", "content": "tell me a long story"}]
    ) as events:
        async for _ in events:
            pass


async def test_a_key_revoked_through_one_instance_is_refused_by_the_other_within_the_bound(
    db_url: str, tmp_path: Path
) -> None:
    store, key = await _org(db_url, team_limit=None)
    async with ScriptedUpstream() as upstream:
        env = instance_env(upstream.url, PROVIDER_KEY)
        async with (
            gateway_process(db_url, tmp_path / "a", environ=env) as first,
            gateway_process(db_url, tmp_path / "b", environ=env) as second,
        ):
            clients = [anthropic.AsyncAnthropic(base_url=i.url, api_key=key, max_retries=0) for i in (first, second)]
            for client in clients:  # both instances have the key in their cache now
                await client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
            await store.revoke_key("ada")  # what the admin API of either instance does
            await asyncio.sleep(2.5)  # the stated bound: 2 s (the key cache), plus a margin for a slow machine
            for client in clients:
                try:
                    await client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
                except anthropic.AuthenticationError as error:
                    assert error.response.headers["x-should-retry"] == "false"
                else:
                    raise AssertionError("a revoked key was served")
            assert len(upstream.messages_requests) == 2
    await store.close()
