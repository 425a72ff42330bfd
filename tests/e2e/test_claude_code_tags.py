"""The real Claude Code, launched with tags: every request of that launch carries them, the next launch none."""

from __future__ import annotations

import pytest

from e2e.harness import E2E

pytestmark = pytest.mark.e2e


async def test_a_tagged_launch_tags_its_requests_and_the_next_launch_is_untagged(e2e: E2E) -> None:
    tagged = await e2e.run("launch", "--tag", "ticket=ABC-123", "--tag", "team=payments", "claude", "-p", "hi")
    assert tagged.returncode == 0, tagged.explain()
    tagged_count = len(e2e.upstream.messages_requests)
    plain = await e2e.claude("-p", "hi again", "--output-format", "json")
    assert plain.returncode == 0, plain.explain()
    plain_count = len(e2e.upstream.messages_requests) - tagged_count
    assert tagged_count >= 1 and plain_count >= 1
    e2e.stop_sidecar()

    by_ticket = await e2e.cost("--by", "tag:ticket")
    groups = {group["key"]: group["requests"] for group in by_ticket["groups"]}
    assert groups == {"ABC-123": tagged_count, "(none)": plain_count}
    by_team = await e2e.cost("--by", "tag:team")
    assert {group["key"]: group["requests"] for group in by_team["groups"]} == {
        "payments": tagged_count,
        "(none)": plain_count,
    }
    logs = await e2e.run("logs", "--tag", "ticket=ABC-123", "--json")
    assert logs.returncode == 0, logs.explain()
    assert len(logs.stdout.splitlines()) == tagged_count
