"""Generate a large synthetic ledger for benchmarking `ccgate cost` and `ccgate logs`.

    .venv/bin/python benchmarks/make_ledger.py --rows 1000000 --days 30
    time .venv/bin/ccgate cost month
    time .venv/bin/ccgate cost month --by day

Rows go to the ledger under the current CCGATE_HOME (or --path). They end now and go back --days days,
spread evenly, so `--days 30` puts (almost) every row inside `cost month`'s range on most days of the
month: the worst case for the query. Deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from ccgate.core.records import Attempt, Cost, PriceQuality, RequestRecord, RequestStatus, Usage, utcnow
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import insert_records, open_ledger

MODELS = (
    ("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5", 3_000, 15_000),
    ("claude-opus-4-1", "anthropic", "claude-opus-4-1", 15_000, 75_000),
    ("claude-haiku-4-5", "groq", "llama-3.3-70b-versatile", 590, 790),
    ("claude-haiku-4-5", "anthropic", "claude-haiku-4-5", 1_000, 5_000),
    ("claude-sonnet-4-5", "ollama", "qwen3-coder", 0, 0),
)


SESSION_LENGTH = 200


def generate(rows: int, days: float, seed: int) -> Iterator[RequestRecord]:
    rng = random.Random(seed)
    end = utcnow()
    step = timedelta(days=days) / max(rows, 1)
    projects = [f"/home/dev/src/project-{n:02d}" for n in range(20)]
    session, project = "", ""
    for index in range(rows):
        if index % SESSION_LENGTH == 0:  # sessions are contiguous runs of requests in one project
            session, project = str(uuid.UUID(int=rng.getrandbits(128))), rng.choice(projects)
        requested, provider, routed, input_rate, output_rate = rng.choice(MODELS)
        started = end - step * (rows - index)
        usage = Usage(
            input_tokens=rng.randint(1, 4_000),
            output_tokens=rng.randint(1, 2_000),
            cache_read_tokens=rng.randint(0, 80_000),
            cache_write_5m_tokens=rng.randint(0, 5_000),
        )
        if provider == "ollama" and index % 7 == 0:
            cost = Cost(nanos=None, quality=PriceQuality.UNPRICED)
        else:
            nanos = (usage.input_tokens * input_rate + usage.output_tokens * output_rate) + (
                usage.cache_read_tokens * input_rate // 10
            )
            quality = PriceQuality.ESTIMATED if provider == "groq" and index % 5 == 0 else PriceQuality.PRICED
            cost = Cost(nanos=nanos, quality=quality, priced_model=routed)
        yield RequestRecord(
            id=str(uuid.UUID(int=rng.getrandbits(128))),
            started_at=started,
            ended_at=started + timedelta(seconds=rng.uniform(0.5, 40)),
            session_id=session,
            project=project,
            launch_id=f"launch-{index // 5000}",
            tier=requested.split("-")[1],
            requested_model=requested,
            provider=provider,
            routed_model=routed,
            stream=True,
            status=RequestStatus.OK if index % 50 else RequestStatus.ERROR,
            http_status=200 if index % 50 else 529,
            usage=usage,
            cost=cost,
            ttfb_ms=rng.uniform(200, 2_000),
            latency_ms=rng.uniform(500, 40_000),
            upstream_message_id=f"msg_{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}",
            attempts=(Attempt(provider=provider, model=routed, status=200),),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0, help="time span the rows cover, ending now")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--path", type=Path, default=None, help="ledger file (default: the CCGATE_HOME ledger)")
    args = parser.parse_args(argv)
    path: Path = args.path or resolve_paths().ensure().ledger_file
    db = open_ledger(path)
    db.execute("PRAGMA synchronous=OFF")  # bulk load only; the real writer keeps NORMAL
    began = time.perf_counter()
    inserted = insert_records(db, generate(args.rows, args.days, args.seed), batch_size=2_000)
    db.close()
    sys.stderr.write(f"inserted {inserted:,} rows into {path} in {time.perf_counter() - began:.1f} s\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
