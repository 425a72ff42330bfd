"""Block boundaries from the ledger agree with the transcripts the real Claude Code wrote for the same requests."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from e2e.harness import E2E

pytestmark = pytest.mark.e2e


def _transcript_times(home: Path) -> list[datetime]:
    """Timestamps of the assistant replies in Claude Code's own transcripts (what transcript readers count)."""
    times = []
    for path in (home / ".claude" / "projects").rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("type") == "assistant" and entry.get("timestamp"):
                times.append(datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")))
    return sorted(times)


async def test_the_window_of_a_real_session_matches_its_transcript(e2e: E2E) -> None:
    result = await e2e.claude("-p", "say hi", "--output-format", "json")
    assert result.returncode == 0, result.explain()
    e2e.stop_sidecar()
    replies = _transcript_times(Path(e2e.env["HOME"]))
    assert replies, "Claude Code wrote no transcript"

    blocks = await e2e.run("blocks", "--json")
    assert blocks.returncode == 0, blocks.explain()
    (block,) = blocks.json()["blocks"]
    start = datetime.fromisoformat(block["start"])
    # the transcript's first reply opens the window at its hour (UTC), five hours long, holding every reply;
    # the request went out a moment before the reply, so across a full hour it may be the hour before
    hour = replies[0].replace(minute=0, second=0, microsecond=0)
    first_request = datetime.fromisoformat(block["first_request"])
    assert start == hour or (start == hour - timedelta(hours=1) and first_request < hour)
    assert datetime.fromisoformat(block["end"]) - start == timedelta(hours=5)
    assert all(start <= reply < start + timedelta(hours=5) for reply in replies)
    assert first_request <= replies[0]
    assert block["requests"] == len(e2e.upstream.messages_requests) and block["active"] is True
