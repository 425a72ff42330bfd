"""A lean mock upstream for the benchmark: Anthropic SSE on /v1/messages, OpenAI SSE on /v1/chat/completions.

    python benchmarks/mock_upstream.py --port-file F [--openai-chunks 200]

Replies are pre-encoded bytes written event by event (one `write` per event, as a real provider flushes them),
so the mock's own cost is small and the same for every path the benchmark compares. It records nothing: the
scripted upstream in tests/support is for correctness, this one is for speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

MODEL = "claude-sonnet-4-5"
TEXT_DELTAS = 15  # message_start, block start, ping, 15 deltas, block stop, message_delta, message_stop = 21


def _sse(event: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def anthropic_events(model: str = MODEL, deltas: int = TEXT_DELTAS) -> list[bytes]:
    """A real-shaped streaming reply: one text block, cache usage in message_start, final usage in message_delta."""
    usage_start = {
        "input_tokens": 12_500,
        "cache_creation_input_tokens": 1_200,
        "cache_read_input_tokens": 40_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1_200, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 1,
        "service_tier": "standard",
    }
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_01BenchMockReply000000000",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_start,
        },
    }
    events = [
        _sse("message_start", start),
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        _sse("ping", {"type": "ping"}),
    ]
    for n in range(deltas):
        delta = {"type": "text_delta", "text": f"word{n} of a benchmark reply, "}
        events.append(_sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    final_usage = {
        "input_tokens": 12_500,
        "cache_creation_input_tokens": 1_200,
        "cache_read_input_tokens": 40_000,
        "output_tokens": 10 * deltas,
    }
    events.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": final_usage,
            },
        )
    )
    events.append(_sse("message_stop", {"type": "message_stop"}))
    return events


def openai_chunks(chunks: int, model: str = "gpt-x") -> list[bytes]:
    """`chunks` content deltas (the first with the role), a finish chunk, a usage chunk and [DONE]."""
    base = {"id": "chatcmpl-bench000000", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model}
    out: list[bytes] = []
    for n in range(chunks):
        delta: dict[str, Any] = {"content": f"tok{n} "}
        if n == 0:
            delta["role"] = "assistant"
        out.append(_sse(None, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
    out.append(_sse(None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    usage = {"prompt_tokens": 12_500, "completion_tokens": chunks, "total_tokens": 12_500 + chunks}
    out.append(_sse(None, {**base, "choices": [], "usage": usage}))
    out.append(b"data: [DONE]\n\n")
    return out


SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "request-id": "req_benchmock"}


def create_app(openai_chunk_count: int = 200) -> web.Application:
    anthropic_reply = anthropic_events()
    openai_reply = openai_chunks(openai_chunk_count)

    async def stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    async def messages(request: web.Request) -> web.StreamResponse:
        return await stream(request, anthropic_reply)

    async def chat(request: web.Request) -> web.StreamResponse:
        return await stream(request, openai_reply)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def serve(port_file: Path, chunks: int) -> None:
    runner = web.AppRunner(create_app(chunks), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = int(runner.addresses[0][1])
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--openai-chunks", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(serve(args.port_file, args.openai_chunks))


if __name__ == "__main__":
    main()
