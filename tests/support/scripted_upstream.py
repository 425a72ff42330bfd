"""A scripted upstream that plays Anthropic's Messages API on 127.0.0.1, for tests, the e2e suite and benchmarks.

In a test::

    async with ScriptedUpstream() as upstream:
        upstream.enqueue(TextReply("hi", usage=Usage(input_tokens=10, output_tokens=3)))
        client = anthropic.AsyncAnthropic(base_url=upstream.url, api_key="sk-ant-dummy")
        ...
        assert upstream.messages_requests[0].headers["x-api-key"] == "sk-ant-dummy"

As a process (benchmarks, manual runs)::

    python tests/support/scripted_upstream.py --port-file F [--record requests.jsonl]

Every request is recorded. A request to `POST /v1/messages` takes the first queued `Script` that matches it,
else asks the `handler`, else gets the default reply: a final text when the last user message carries a
`tool_result`, a `Bash` tool_use (`echo hello-from-tool`) when it contains the tool trigger (default
"run echo") and the request offers a `Bash` tool, and a plain text answer otherwise. Streaming requests get a
real-shaped SSE stream, the others a JSON message; the reply always echoes the request's `model`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Awaitable

DEFAULT_TEXT = "Hello from the scripted upstream."
DEFAULT_MODEL = "claude-sonnet-4-5"
TOOL_TRIGGER = "run echo"
TOOL_COMMAND = "echo hello-from-tool"

Then = Literal["end", "hang", "close"]
Chunking = Literal["event", "single"] | Sequence[int]


# --------------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the upstream saw it: headers as sent (lower-cased names), raw body, parsed JSON."""

    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    json: Any
    # the request target exactly as it arrived, still percent-encoded (path and query)
    raw_path: str = ""

    @property
    def stream(self) -> bool:
        return isinstance(self.json, dict) and bool(self.json.get("stream"))

    @property
    def model(self) -> str | None:
        return self.json.get("model") if isinstance(self.json, dict) else None

    def last_user_text(self) -> str:
        """All text of the last user message (string content or text blocks), joined by newlines."""
        message = _last_user_message(self.json)
        if message is None:
            return ""
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "\n".join(
                str(block.get("text", ""))
                for block in content
                if isinstance(block, dict) and block.get("type") == "text"
            )
        return ""

    def tool_results(self) -> list[dict[str, Any]]:
        """The tool_result blocks of the last user message."""
        message = _last_user_message(self.json)
        content = message.get("content") if message else None
        if not isinstance(content, list):
            return []
        return [block for block in content if isinstance(block, dict) and block.get("type") == "tool_result"]

    def tool_names(self) -> list[str]:
        tools = self.json.get("tools") if isinstance(self.json, dict) else None
        if not isinstance(tools, list):
            return []
        return [str(tool.get("name")) for tool in tools if isinstance(tool, dict)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (for the --record log): headers, body size and parsed body."""
        return {
            "method": self.method,
            "path": self.path,
            "query_string": self.query_string,
            "raw_path": self.raw_path,
            "headers": self.headers,
            "body_size": len(self.body),
            "json": self.json,
        }


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one reply; `message_start` and the final `message_delta` both carry them."""

    input_tokens: int = 100
    output_tokens: int = 20
    cache_read_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    # What message_start reports as output so far (Anthropic sends a small number there).
    start_output_tokens: int = 1
    # `usage.speed` of a fast-mode reply ("fast"); None leaves the field out
    speed: str | None = None

    @property
    def cache_creation_input_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    def as_dict(self, output_tokens: int | None = None) -> dict[str, Any]:
        speed = {} if self.speed is None else {"speed": self.speed}
        return speed | {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write_5m_tokens,
                "ephemeral_1h_input_tokens": self.cache_write_1h_tokens,
            },
            "output_tokens": self.output_tokens if output_tokens is None else output_tokens,
            "service_tier": "standard",
        }

    def delta_dict(self) -> dict[str, Any]:
        speed = {} if self.speed is None else {"speed": self.speed}
        return speed | {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass(frozen=True, slots=True)
class SSE:
    """One server-sent event; `delay` seconds pass before it is written (with per-event chunking)."""

    event: str
    data: dict[str, Any]
    delay: float = 0.0

    def encode(self) -> bytes:
        payload = json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)
        return f"event: {self.event}\ndata: {payload}\n\n".encode()


@dataclass(frozen=True, slots=True)
class _StreamOptions:
    chunking: Chunking = "event"
    chunk_delay: float = 0.0
    cut_after_events: int | None = None
    then: Then = "end"


@dataclass(frozen=True, slots=True)
class TextReply:
    """A normal assistant text answer: SSE when the request streams, a JSON message otherwise.

    `cut_after_events` + `then` make a stream stop mid-way and then hang or drop the connection; a
    non-streaming request with `then != "end"` gets no response at all (hang or dropped connection).
    """

    text: str = DEFAULT_TEXT
    usage: Usage = field(default_factory=Usage)
    stop_reason: str = "end_turn"
    pieces: Sequence[str] | None = None
    event_delay: float = 0.0
    chunking: Chunking = "event"
    chunk_delay: float = 0.0
    cut_after_events: int | None = None
    then: Then = "end"
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> list[dict[str, Any]]:
        return [{"type": "text", "text": self.text}]

    def events(self, model: str | None, message_id: str | None = None) -> list[SSE]:
        return text_events(
            self.text,
            model=model,
            usage=self.usage,
            stop_reason=self.stop_reason,
            pieces=self.pieces,
            message_id=message_id,
            delay=self.event_delay,
        )

    def options(self) -> _StreamOptions:
        return _StreamOptions(self.chunking, self.chunk_delay, self.cut_after_events, self.then)


@dataclass(frozen=True, slots=True)
class ToolUseReply:
    """An assistant turn that calls a tool: optional lead-in text, then a tool_use block, stop_reason tool_use."""

    name: str = "Bash"
    input: dict[str, Any] = field(default_factory=lambda: {"command": TOOL_COMMAND, "description": "echo"})
    tool_use_id: str | None = None
    text: str | None = None
    usage: Usage = field(default_factory=Usage)
    json_pieces: int = 3
    event_delay: float = 0.0
    chunking: Chunking = "event"
    chunk_delay: float = 0.0
    cut_after_events: int | None = None
    then: Then = "end"
    headers: dict[str, str] = field(default_factory=dict)

    def _id(self) -> str:
        return self.tool_use_id or new_id("toolu_01")

    def content(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": self.text}] if self.text else []
        blocks.append({"type": "tool_use", "id": self._id(), "name": self.name, "input": self.input})
        return blocks

    def events(self, model: str | None, message_id: str | None = None) -> list[SSE]:
        return tool_use_events(
            self.name,
            self.input,
            model=model,
            tool_use_id=self._id(),
            text=self.text,
            usage=self.usage,
            pieces=self.json_pieces,
            message_id=message_id,
            delay=self.event_delay,
        )

    def options(self) -> _StreamOptions:
        return _StreamOptions(self.chunking, self.chunk_delay, self.cut_after_events, self.then)


@dataclass(frozen=True, slots=True)
class StreamReply:
    """Exactly these SSE events (status 200), whatever the request asked for.

    A `message_start` whose message has `model: None` / `id: None` gets the request's model / a fresh id.
    `chunking`: "event" writes each event on its own (honouring its delay), "single" writes all in one
    write, a sequence of ints re-cuts the bytes into pieces of those sizes (the rest in one last piece)
    with `chunk_delay` between them. `then`: "end" finishes the response, "hang" keeps the connection open
    without another byte until the upstream stops, "close" drops the connection without finishing it.
    """

    events: Sequence[SSE]
    chunking: Chunking = "event"
    chunk_delay: float = 0.0
    then: Then = "end"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An HTTP error with Anthropic's envelope, e.g. ErrorReply(429, "rate_limit_error", headers={...})."""

    status: int
    error_type: str = "api_error"
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, request_id: str) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": self.error_type, "message": self.message},
            "request_id": request_id,
        }


@dataclass(frozen=True, slots=True)
class JSONReply:
    """Any JSON body with any status."""

    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RawReply:
    """These bytes as the body, whatever they are (a reply that is not JSON, or JSON `json` cannot write)."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"


Reply = TextReply | ToolUseReply | StreamReply | ErrorReply | JSONReply | RawReply
Handler = Callable[[RecordedRequest], "Reply | Awaitable[Reply | None] | None"]


@dataclass(slots=True)
class Script:
    """A queued reply, used once by the first request that matches (path, then `match` if given)."""

    reply: Reply
    match: Callable[[RecordedRequest], bool] | None = None
    path: str = "/v1/messages"

    def matches(self, request: RecordedRequest) -> bool:
        return request.path == self.path and (self.match is None or self.match(request))


# --------------------------------------------------------------------------------------------------- builders


def new_id(prefix: str) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(22))


def _message_start(model: str | None, usage: Usage, message_id: str | None) -> SSE:
    return SSE(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage.as_dict(output_tokens=usage.start_output_tokens),
            },
        },
    )


def _split(text: str, parts: int) -> list[str]:
    if parts <= 1 or len(text) <= 1:
        return [text]
    size = -(-len(text) // parts)
    return [text[i : i + size] for i in range(0, len(text), size)]


def text_events(
    text: str = DEFAULT_TEXT,
    *,
    model: str | None = None,
    usage: Usage | None = None,
    stop_reason: str = "end_turn",
    pieces: Sequence[str] | None = None,
    message_id: str | None = None,
    delay: float = 0.0,
) -> list[SSE]:
    """The full event sequence of a text answer, as Anthropic sends it."""
    usage = usage or Usage()
    chunks = list(pieces) if pieces is not None else _split(text, 3)
    events = [
        _message_start(model, usage, message_id),
        SSE(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        SSE("ping", {"type": "ping"}),
    ]
    events += [
        SSE(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": c}},
        )
        for c in chunks
    ]
    events += _ending(0, stop_reason, usage)
    return [SSE(e.event, e.data, delay) for e in events]


def tool_use_events(
    name: str,
    tool_input: dict[str, Any],
    *,
    model: str | None = None,
    tool_use_id: str | None = None,
    text: str | None = None,
    usage: Usage | None = None,
    pieces: int = 3,
    message_id: str | None = None,
    delay: float = 0.0,
) -> list[SSE]:
    """The event sequence of a tool call: [text block,] tool_use block with input_json_delta pieces."""
    usage = usage or Usage()
    events = [_message_start(model, usage, message_id)]
    index = 0
    if text:
        events += [
            SSE(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            SSE(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
            ),
            SSE("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ]
        index = 1
    block = {"type": "tool_use", "id": tool_use_id or new_id("toolu_01"), "name": name, "input": {}}
    events.append(SSE("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))
    events.append(SSE("ping", {"type": "ping"}))
    for piece in _split(json.dumps(tool_input, separators=(",", ":")), pieces):
        delta = {"type": "input_json_delta", "partial_json": piece}
        events.append(SSE("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
    events += _ending(index, "tool_use", usage)
    return [SSE(e.event, e.data, delay) for e in events]


def _ending(index: int, stop_reason: str, usage: Usage) -> list[SSE]:
    return [
        SSE("content_block_stop", {"type": "content_block_stop", "index": index}),
        SSE(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": usage.delta_dict(),
            },
        ),
        SSE("message_stop", {"type": "message_stop"}),
    ]


def error_event(error_type: str = "overloaded_error", message: str = "Overloaded") -> SSE:
    """An in-stream error event (Anthropic sends these after a 200 when it fails mid-way)."""
    return SSE("error", {"type": "error", "error": {"type": error_type, "message": message}})


def message_json(reply: TextReply | ToolUseReply, model: str | None, message_id: str) -> dict[str, Any]:
    stop_reason = reply.stop_reason if isinstance(reply, TextReply) else "tool_use"
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model or DEFAULT_MODEL,
        "content": reply.content(),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": reply.usage.as_dict(),
    }


def default_reply(request: RecordedRequest, tool_trigger: str = TOOL_TRIGGER) -> Reply:
    """What Claude Code needs: a final answer after a tool ran, a Bash call when asked for one, text otherwise."""
    results = request.tool_results()
    if results:
        return TextReply(f"The tool said: {_tool_result_text(results[-1])}")
    if tool_trigger and tool_trigger in request.last_user_text() and "Bash" in request.tool_names():
        return ToolUseReply()
    return TextReply()


def _tool_result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict)).strip()
    return ""


def _last_user_message(body: Any) -> dict[str, Any] | None:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message
    return None


# --------------------------------------------------------------------------------------------------- server


class ScriptedUpstream:
    """An aiohttp server on 127.0.0.1 (port 0 by default) that records requests and answers from a script."""

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tool_trigger: str = TOOL_TRIGGER,
        count_tokens: int | None = None,
        on_request: Callable[[RecordedRequest], None] | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.tool_trigger = tool_trigger
        self.count_tokens = count_tokens
        self.on_request = on_request
        self.requests: list[RecordedRequest] = []
        self.scripts: list[Script] = []
        # Set when a stream reaches its hang point (after its last scripted byte was written).
        self.hanging = asyncio.Event()
        self._release = asyncio.Event()
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> ScriptedUpstream:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- scripting
    def enqueue(self, *replies: Reply | Script) -> None:
        """Queue replies for the next `POST /v1/messages` requests, in order (a Script can match others)."""
        for reply in replies:
            self.scripts.append(reply if isinstance(reply, Script) else Script(reply))

    async def wait_for_requests(self, count: int, *, path: str | None = "/v1/messages", timeout: float = 30.0) -> None:
        """Wait until `count` requests (to `path`, or any with None) have arrived; TimeoutError otherwise."""

        async def arrived() -> None:
            while sum(1 for r in self.requests if path is None or r.path == path) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(arrived(), timeout)

    @property
    def messages_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    # -- handling
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed: Any = json.loads(body) if body else None
        except (ValueError, RecursionError):
            parsed = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query_string=request.query_string,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            json=parsed,
            raw_path=request.raw_path,
        )
        self.requests.append(recorded)
        self._arrived.set()
        if self.on_request is not None:
            self.on_request(recorded)
        reply = await self._choose(recorded)
        if reply is not None:
            return await self._send(request, recorded, reply)
        if request.path in ("/", "") and request.method in ("GET", "HEAD"):
            return web.Response(status=200, text="ok", headers=_base_headers())
        if request.method == "POST" and request.path == "/v1/messages/count_tokens":
            tokens = self.count_tokens if self.count_tokens is not None else max(1, len(body) // 4)
            return web.json_response({"input_tokens": tokens}, headers=_base_headers())
        if request.method == "POST" and request.path == "/v1/messages":
            return await self._send(request, recorded, default_reply(recorded, self.tool_trigger))
        error = ErrorReply(404, "not_found_error", f"scripted upstream: no route for {request.method} {request.path}")
        return await self._send(request, recorded, error)

    async def _choose(self, recorded: RecordedRequest) -> Reply | None:
        for index, script in enumerate(self.scripts):
            if script.matches(recorded):
                del self.scripts[index]
                return script.reply
        if self.handler is not None and recorded.path == "/v1/messages":
            result = self.handler(recorded)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
            return result  # type: ignore[return-value]
        return None

    async def _send(self, request: web.Request, recorded: RecordedRequest, reply: Reply) -> web.StreamResponse:
        headers = _base_headers()
        if isinstance(reply, ErrorReply):
            headers.update(reply.headers)
            return web.json_response(reply.body(headers["request-id"]), status=reply.status, headers=headers)
        if isinstance(reply, RawReply):
            headers["Content-Type"] = reply.content_type
            return web.Response(body=reply.body, status=reply.status, headers=headers)
        if isinstance(reply, JSONReply):
            headers.update(reply.headers)
            return web.json_response(reply.body, status=reply.status, headers=headers)
        if isinstance(reply, StreamReply):
            headers.update(reply.headers)
            events = [_fill_message_start(e, recorded.model) for e in reply.events]
            return await self._stream(
                request, events, headers, reply.status, reply.chunking, reply.chunk_delay, reply.then
            )
        headers.update(reply.headers)
        options = reply.options()
        message_id = new_id("msg_01")
        if not recorded.stream:
            if options.then != "end":
                return await self._abandon(request, options.then)
            return web.json_response(message_json(reply, recorded.model, message_id), headers=headers)
        events = reply.events(recorded.model or DEFAULT_MODEL, message_id)
        if options.cut_after_events is not None:
            events = events[: options.cut_after_events]
        return await self._stream(request, events, headers, 200, options.chunking, options.chunk_delay, options.then)

    async def _stream(
        self,
        request: web.Request,
        events: Sequence[SSE],
        headers: dict[str, str],
        status: int,
        chunking: Chunking,
        chunk_delay: float,
        then: Then,
    ) -> web.StreamResponse:
        headers = {**headers, "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if chunking == "event":
            for event in events:
                if event.delay:
                    await asyncio.sleep(event.delay)
                await response.write(event.encode())
        else:
            payload = b"".join(event.encode() for event in events)
            for i, piece in enumerate(_cut(payload, chunking)):
                if i and chunk_delay:
                    await asyncio.sleep(chunk_delay)
                await response.write(piece)
        if then != "end":
            return await self._abandon(request, then, response)
        await response.write_eof()
        return response

    async def _abandon(
        self, request: web.Request, then: Then, response: web.StreamResponse | None = None
    ) -> web.StreamResponse:
        if then == "hang":
            self.hanging.set()
            await self._release.wait()
        transport = request.transport
        if transport is not None:
            transport.abort()
        # The connection is gone; aiohttp cannot send anything after this.
        raise asyncio.CancelledError


def _cut(payload: bytes, chunking: Chunking) -> list[bytes]:
    if chunking == "single":
        return [payload]
    assert not isinstance(chunking, str)
    pieces: list[bytes] = []
    start = 0
    for size in chunking:
        if start >= len(payload):
            break
        pieces.append(payload[start : start + size])
        start += size
    if start < len(payload):
        pieces.append(payload[start:])
    return pieces


def _fill_message_start(event: SSE, model: str | None) -> SSE:
    if event.event != "message_start":
        return event
    message = dict(event.data.get("message") or {})
    if message.get("model") is None:
        message["model"] = model or DEFAULT_MODEL
    if message.get("id") is None:
        message["id"] = new_id("msg_01")
    return SSE(event.event, {**event.data, "message": message}, event.delay)


def _base_headers() -> dict[str, str]:
    return {"request-id": new_id("req_01"), "anthropic-organization-id": "scripted-upstream"}


# --------------------------------------------------------------------------------------------------- standalone


async def _serve(args: argparse.Namespace) -> None:
    record = Path(args.record).open("a", encoding="utf-8") if args.record else None  # noqa: SIM115

    def log(request: RecordedRequest) -> None:
        if record is not None:
            record.write(json.dumps(request.to_dict()) + "\n")
            record.flush()

    upstream = ScriptedUpstream(host=args.host, port=args.port, tool_trigger=args.tool_trigger, on_request=log)
    await upstream.start()
    if args.port_file:
        target = Path(args.port_file)
        temp = target.with_name(target.name + ".tmp")
        temp.write_text(str(upstream.port))
        os.replace(temp, target)
    print(upstream.url, flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        await upstream.stop()
        if record is not None:
            record.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A scripted Anthropic Messages API upstream on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--record", help="append one JSON line per request to this file")
    parser.add_argument("--tool-trigger", default=TOOL_TRIGGER, help="prompt text that triggers a Bash tool_use")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
