"""A scripted OpenAI-compatible chat completions upstream on 127.0.0.1, shaped like real provider chunks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class OpenAIReply:
    """Text and/or tool calls; streamed as chunks (text split in `pieces`, arguments in `arg_pieces`)."""

    text: str = "Hello from the OpenAI-format mock."
    tool_calls: Sequence[tuple[str, str, dict[str, Any]]] = ()  # (id, name, arguments)
    finish_reason: str | None = None
    prompt_tokens: int = 40
    completion_tokens: int = 12
    cached_tokens: int = 0
    pieces: int = 4
    arg_pieces: int = 3
    status: int = 200
    error_body: dict[str, Any] | None = None
    die_after_chunks: int | None = None  # close the connection after this many chunks
    end_after_chunks: int | None = None  # finish the HTTP response cleanly after this many chunks (reply cut short)
    hang_after_chunks: int | None = None  # send nothing more after this many chunks, until the mock stops
    usage_chunk: bool = True
    omit_usage: bool = False  # non-streaming reply without a `usage` object

    @property
    def finish(self) -> str:
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    json: Any


@dataclass
class OpenAIUpstream:
    replies: list[OpenAIReply] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> OpenAIUpstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> OpenAIUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Recorded(request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        reply = self.replies.pop(0) if self.replies else OpenAIReply()
        if reply.status != 200:
            error = reply.error_body or {"error": {"message": "mock failure", "type": "server_error", "code": None}}
            return web.json_response(error, status=reply.status)
        completion_id = f"chatcmpl-{len(self.requests)}"
        created = int(time.time())
        usage = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
        }
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if reply.tool_calls:
                message["tool_calls"] = [
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                    for call_id, name, args in reply.tool_calls
                ]
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": reply.finish}],
                    **({} if reply.omit_usage else {"usage": usage}),
                }
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **extra,
            }
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        chunks = [chunk({"role": "assistant", "content": ""})]
        if reply.text:
            size = max(1, -(-len(reply.text) // reply.pieces))
            chunks += [chunk({"content": reply.text[i : i + size]}) for i in range(0, len(reply.text), size)]
        for index, (call_id, name, args) in enumerate(reply.tool_calls):
            arguments = json.dumps(args)
            size = max(1, -(-len(arguments) // reply.arg_pieces))
            first = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
            chunks.append(chunk({"tool_calls": [first]}))
            chunks += [
                chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[i : i + size]}}]})
                for i in range(0, len(arguments), size)
            ]
        chunks.append(chunk({}, reply.finish))
        if reply.usage_chunk:
            usage_payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
                "choices": [],
                "usage": usage,
            }
            chunks.append(b"data: " + json.dumps(usage_payload).encode() + b"\n\n")
        chunks.append(b"data: [DONE]\n\n")
        for index, data in enumerate(chunks):
            if reply.die_after_chunks is not None and index >= reply.die_after_chunks:
                assert request.transport is not None
                request.transport.close()
                return response
            if reply.end_after_chunks is not None and index >= reply.end_after_chunks:
                break
            if reply.hang_after_chunks is not None and index >= reply.hang_after_chunks:
                await asyncio.sleep(3600)  # cancelled when the mock stops or the caller goes away
            await response.write(data)
            await asyncio.sleep(0)
        await response.write_eof()
        return response
