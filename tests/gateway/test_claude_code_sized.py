"""Claude Code-sized requests against a $5 daily budget: requests wait rather than fail while real spend is under it.

An 80 KB body with `max_tokens` 64,000 on Opus reserves about $2 but costs about $0.11: without waiting (and
shrinking at message_start) a handful of parallel sub-agents would get 402 with almost all of the budget unspent.
"""

from __future__ import annotations

import asyncio

import anthropic
from gateway_harness import running_gateway
from scripted_upstream import TextReply, Usage

MODEL = "claude-opus-4-5"
LIMIT = 5_000_000_000  # $5
BODY = "x" * 80_000


async def test_no_402_while_spent_is_under_five_dollars_and_at_most_one_request_over(db_url: str) -> None:
    async with running_gateway(db_url) as gateway:
        gateway.upstream.handler = lambda _: TextReply(
            "done", usage=Usage(input_tokens=20_000, output_tokens=500), event_delay=0.01
        )
        await gateway.store.create_budget(level="key", target="ada", limit_nanos=LIMIT, period="1d")
        client = gateway.client(gateway.keys["ada"], timeout=600)
        refused_at: list[int] = []

        async def one() -> bool:
            try:
                async with client.messages.stream(
                    model=MODEL, max_tokens=64_000, messages=[{"role": "user", "content": BODY}]
                ) as events:
                    await events.get_final_message()
            except anthropic.APIStatusError as error:
                assert error.status_code == 402, error
                assert "fully reserved" not in str(error)  # refused for spend, never for waiting too long
                rows = await gateway.rows("ada")
                refused_at.append(sum(row.record.cost.nanos or 0 for row in rows))
                return False
            return True

        served = await asyncio.gather(*(one() for _ in range(60)))
        rows = await gateway.rows("ada")
        costs = [row.record.cost.nanos or 0 for row in rows if row.record.http_status == 200]
        assert len(costs) == served.count(True)
        one_request = max(costs)
        assert one_request < 200_000_000  # ~$0.11 each, against a ~$2 reservation
        spent = sum(costs)
        # every request was served until the real spend reached $5, and the overshoot is at most one request
        assert LIMIT <= spent <= LIMIT + one_request
        assert all(at >= LIMIT for at in refused_at)
        (view,) = await gateway.store.budget_views(key_id=await gateway.key_id("ada"), team_id=None, customer_id=None)
        assert (view.state.spent_nanos, view.state.reserved_nanos) == (spent, 0)
