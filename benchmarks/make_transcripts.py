"""Generate a Claude Code transcript corpus for benchmarking `ccgate import claude-code`.

    .venv/bin/python benchmarks/make_transcripts.py --lines 200000 --out /tmp/projects

Shaped like real `~/.claude/projects/**/*.jsonl`: sessions of user turns (some with large tool results) and
assistant replies written once per content block (the same message id on 1-3 lines, output growing), about
1.25 KB a line on average, so 200,000 lines are about 250 MB holding about 43,000 replies. Deterministic.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

MODELS = ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5")


def session_lines(rng: random.Random, session: str, start: datetime, lines: int) -> list[str]:
    out: list[str] = []
    moment = start
    cwd = f"/home/dev/src/project-{rng.randint(0, 19):02d}"
    while len(out) < lines:
        moment += timedelta(seconds=rng.randint(5, 120))
        # a user turn or two: most are tool results, some of them large
        for _ in range(rng.randint(1, 2)):
            size = rng.choice((200, 400, 800, 1500, 3500))
            user = {
                "type": "user",
                "sessionId": session,
                "cwd": cwd,
                "timestamp": moment.isoformat().replace("+00:00", "Z"),
                "message": {"role": "user", "content": [{"type": "tool_result", "content": "x" * size}]},
            }
            out.append(json.dumps(user, separators=(",", ":")))
        message_id = f"msg_{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}"
        request_id = f"req_{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}"
        model = rng.choice(MODELS)
        writes, fresh, read = rng.randint(0, 5000), rng.randint(1, 4000), rng.randint(0, 80000)
        output = 0
        for block in range(rng.randint(1, 5)):
            output += rng.randint(10, 400)
            usage: dict[str, Any] = {
                "input_tokens": fresh,
                "cache_creation_input_tokens": writes,
                "cache_read_input_tokens": read,
                "cache_creation": {"ephemeral_5m_input_tokens": writes, "ephemeral_1h_input_tokens": 0},
                "output_tokens": output,
            }
            entry = {
                "type": "assistant",
                "sessionId": session,
                "cwd": cwd,
                "requestId": request_id,
                "timestamp": (moment + timedelta(seconds=block)).isoformat().replace("+00:00", "Z"),
                "message": {
                    "id": message_id,
                    "model": model,
                    "role": "assistant",
                    "type": "message",
                    "content": [{"type": "text", "text": "y" * rng.choice((100, 300, 900))}],
                    "usage": usage,
                },
            }
            out.append(json.dumps(entry, separators=(",", ":")))
    return out[:lines]


def generate(root: Path, lines: int, seed: int = 1) -> int:
    """Write about `lines` lines in sessions of ~400 lines; returns the bytes written."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=30)
    written = 0
    made = 0
    index = 0
    while made < lines:
        session = str(uuid.UUID(int=rng.getrandbits(128)))
        project = root / f"-home-dev-src-project-{index % 20:02d}"
        project.mkdir(parents=True, exist_ok=True)
        chunk = session_lines(rng, session, start + timedelta(hours=index), min(400, lines - made))
        text = "\n".join(chunk) + "\n"
        (project / f"{session}.jsonl").write_text(text)
        written += len(text.encode())
        made += len(chunk)
        index += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    written = generate(args.out, args.lines)
    sys.stderr.write(f"wrote {args.lines:,} lines, {written / 1e6:.0f} MB under {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
