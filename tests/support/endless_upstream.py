"""A scripted upstream whose every reply starts something and never ends it, on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

SENT_AT_MOST = 16 * 2**20  # what the endless upstream gives up at, so a test without the limit still ends
CHUNK = b"a" * 65536
START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"claude-opus-4-5","content":[],"stop_reason":null,'
    b'"usage":{"input_tokens":1234,"output_tokens":1}}}\n\n'
)


@asynccontextmanager
async def endless_upstream(how: str) -> AsyncIterator[tuple[str, list[int], asyncio.Event]]:
    """Answers every POST with a 200 that starts something and never ends it:
    `line` (Anthropic: an event after a whole message_start), `start` (message_start itself never ends), `pings`
    (whole ping events for ever, no message_start), `openai` (a chat-completions stream), `json` (a non-streamed
    reply), or `declared` (a non-streamed 2 MiB reply whose content-length says so). Yields its URL, the bytes
    each reply got out, and an event set when a reply ends."""
    sent: list[int] = []
    ended = asyncio.Event()

    async def reply(request: web.Request) -> web.StreamResponse:
        await request.read()
        if how == "declared":
            body = b'{"id": "msg_huge", "type": "message", "content": [{"type": "text", "text": "' + b"a" * 2**21
            sent.append(len(body))
            ended.set()
            return web.Response(body=body, content_type="application/json")
        kind = "application/json" if how == "json" else "text/event-stream"
        response = web.StreamResponse(headers={"content-type": kind})
        await response.prepare(request)
        total = 0
        if how == "openai":
            head = b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":'
            head += b'{"role":"assistant","content":"hi"}}]}\n\ndata: {"id":"c1","choices":[{"delta":{"content":"'
            piece = CHUNK
        elif how == "json":  # a whole (non-streamed) reply that never ends
            head, piece = b'{"id": "msg_huge", "type": "message", "content": [{"type": "text", "text": "', CHUNK
        elif how == "pings":
            head, piece = b"", b'event: ping\ndata: {"type": "ping"}\n\n' * 2000
        elif how == "start":
            head, piece = START[:60], CHUNK
        else:
            head, piece = START + b'event: content_block_delta\ndata: {"type":"content_block_delta","x":"', CHUNK
        try:
            await response.write(head)
            while total < SENT_AT_MOST:
                await response.write(piece)
                total += len(piece)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        finally:
            sent.append(total)
            ended.set()
        return response

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", reply)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", sent, ended
    finally:
        await runner.cleanup()
