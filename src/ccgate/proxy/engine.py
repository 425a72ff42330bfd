"""The proxy core shared by the sidecar and the gateway: route, admit, forward, meter, record.

Servers establish who is calling (`ClientMeta`) and how budgets apply to them (an `Admission`), then hand
the request here; `ccgate.proxy.seams` holds those seams and their contracts, `ccgate.proxy.upstream` the
meaning of the HTTP client's failures. Bytes from an Anthropic-kind upstream are written to the client as they
arrive; metering reads the same chunks on the side.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from yarl import URL

from ccgate.core import attribution
from ccgate.core.providers import redact_url
from ccgate.core.records import Attempt, Cost, PriceQuality, RequestRecord, RequestStatus, Usage, utcnow
from ccgate.core.usage import MAX_PLAUSIBLE_INPUT_TOKENS, MAX_PLAUSIBLE_OUTPUT_TOKENS, implausible_usage
from ccgate.errors import AuthenticationError, CcgateError, InvalidRequestError, UpstreamError
from ccgate.proxy.responses import error_response as error_response

# the seams live in `seams`; re-exported here for code written before they moved
from ccgate.proxy.seams import Admission as Admission
from ccgate.proxy.seams import ClientMeta as ClientMeta
from ccgate.proxy.seams import LedgerSink as LedgerSink
from ccgate.proxy.seams import Pricer as Pricer
from ccgate.proxy.seams import ProxyDeps as ProxyDeps
from ccgate.proxy.seams import RouterLike as RouterLike
from ccgate.proxy.upstream import (
    FAILURES,
    HOP_BY_HOP,
    RESPONSE_DROP,
    ReplyTooLarge,
    Stage,
    UpstreamBroke,
    read_reply,
    upstream_error,
    upstream_errors,
    user_agent_skip,
    with_read_timeout,
)
from ccgate.wire import fastjson
from ccgate.wire.envelope import sse_error
from ccgate.wire.metering import AnthropicStreamMeter, error_type_of, meter_message
from ccgate.wire.sse import EventTooLarge

if TYPE_CHECKING:
    from ccgate.core.providers import ProviderSpec
    from ccgate.core.routing import Route, Target

log = logging.getLogger("ccgate.proxy.engine")

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
SSE_CONTENT_TYPE = "text/event-stream"
# Only Anthropic itself gets the client's own API key or OAuth token; every other provider gets its own key.
CLIENT_AUTH_PROVIDERS = frozenset({"anthropic"})
CLIENT_AUTH_HEADERS = frozenset({"x-api-key", "authorization"})
# ccgate's own headers (local token, launch, row id, attribution): they reach the org's ccgate gateway only, and
# only as the core sets them, never as a client sent them
CCGATE_HEADER_PREFIX = "x-ccgate-"
# Budget reservations: the output bound when a request names no usable `max_tokens`, and the most any model
# produces in one reply (today's largest limits are 64K-128K), so an absurd `max_tokens` cannot reserve more.
DEFAULT_MAX_OUTPUT_TOKENS = 64_000
MAX_OUTPUT_TOKENS = 1_000_000


@dataclass(slots=True)
class _Ctx:
    """Per-request working state."""

    deps: ProxyDeps
    meta: ClientMeta
    record: RequestRecord
    body: dict[str, Any]  # the head: model, stream, max_tokens, metadata (exact_body() for the whole)
    raw: bytes
    query: str  # raw, as the client encoded it
    headers: Mapping[str, str]
    started: float
    reservation: Any = None
    client_started: bool = False
    id_map: Any = None
    # What has been seen of the usage so far, for whatever way the request ends (cancel included).
    live_usage: Callable[[], Usage] | None = None
    exact: dict[str, Any] | None = None
    # for shrinking the reservation at message_start: the output bound, and whether input grows mid-reply
    max_output: int = DEFAULT_MAX_OUTPUT_TOKENS
    input_grows: bool = False
    upstream: aiohttp.ClientResponse | None = None
    _waiting: Any = field(default_factory=lambda: itertools.count(-1, -1))

    def progress(self) -> int:
        """The reply's bytes so far, for requests waiting on this one's reservation to see it is alive.

        Before the first byte it moves on every look: the provider is still reading the prompt (or writing a
        whole non-streamed reply), which is no sign of a stall; the upstream timeouts bound that wait.
        """
        received = self.upstream.content.total_bytes if self.upstream is not None else 0
        return received or int(next(self._waiting))

    # why the usage recorded is an estimate, when it is one for another reason than "the provider reported none"
    usage_note: str | None = None
    # loop time by which the current attempt's first byte must arrive (streams only; None: no such limit)
    first_byte_deadline: float | None = None

    def mark_first_byte(self) -> None:
        """Time to the first byte of the reply the client gets: after a failover, the last attempt's."""
        self.record.ttfb_ms = (time.perf_counter() - self.started) * 1000

    def exact_body(self) -> dict[str, Any]:
        """The body parsed by `json` (exact big integers), for routes that send it on re-encoded."""
        if self.exact is None:
            self.exact = parse_messages_body(self.raw, exact=True)
        return self.exact


class _Stream(web.StreamResponse):
    """A streamed reply whose headers go out with its first bytes, in one write (aiohttp's sends them alone):
    the first bytes are already read when the reply starts, so nothing waits for them."""

    _send_headers_immediately = False


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream's first chunk (read before the client saw anything), then the rest as it arrives."""
    yield first
    async for chunk in rest:
        yield chunk


def session_id_from(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """Claude Code sends `X-Claude-Code-Session-Id`; `metadata.user_id` (a JSON string) also holds it."""
    header = headers.get("x-claude-code-session-id")
    if header:
        return header
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        user_id = metadata.get("user_id")
        if isinstance(user_id, str) and user_id.startswith("{"):
            try:
                parsed = fastjson.loads(user_id)
            except (ValueError, RecursionError):  # best effort: a deep or broken user_id only loses the session
                return None
            if isinstance(parsed, dict) and isinstance(parsed.get("session_id"), str):
                return str(parsed["session_id"])
        elif isinstance(user_id, str) and "_session_" in user_id:
            return user_id.rsplit("_session_", 1)[1] or None
    return None


def parse_messages_body(raw: bytes, *, exact: bool = False) -> dict[str, Any]:
    """The request body; `exact` when it will be re-encoded (orjson reads integers beyond 64 bits as floats)."""
    try:
        body = json.loads(raw) if exact else fastjson.loads(raw)
    except fastjson.NestedTooDeep as exc:
        raise _too_deep() from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(
            f"request body is not valid JSON: {exc}", hint="send a Messages API JSON object"
        ) from exc
    except RecursionError as exc:
        raise _too_deep() from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object", hint="send a Messages API JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequestError("model: field required", hint="name the model in the `model` field")
    return body


def _output_bound(body: Mapping[str, Any]) -> int:
    """The most output a request can have produced: its `max_tokens`, within what any model writes."""
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is int and max_tokens > 0:
        return min(max_tokens, MAX_PLAUSIBLE_OUTPUT_TOKENS)
    return MAX_PLAUSIBLE_OUTPUT_TOKENS


def _too_deep() -> InvalidRequestError:
    """Nesting past what this interpreter's JSON code handles (~1,000 levels on Python 3.11): no real request
    comes close, and the alternative would be a 500."""
    return InvalidRequestError("request body is nested too deeply", hint="send a Messages API JSON object")


def _reencoded(body: dict[str, Any]) -> bytes:
    """A client's body sent on re-encoded (another model, another format)."""
    try:
        return fastjson.dumps(body)
    except RecursionError as exc:
        raise _too_deep() from exc


def parse_messages_head(raw: bytes) -> dict[str, Any]:
    """The fields the proxy reads (model, stream, max_tokens, metadata, speed), the whole body checked to be JSON.

    Building only these is ~3x faster than parsing a Claude Code body whole (72 KB of conversation: 28 vs
    79 µs), and the body is forwarded as received. The translated and rewritten routes parse it whole.
    """
    try:
        head = fastjson.read_head(raw)
    except ValueError:
        head = parse_messages_body(raw)  # what msgspec refuses and `json` accepts; else the clear 400
    if not isinstance(head.get("model"), str) or not head["model"]:
        raise InvalidRequestError("model: field required", hint="name the model in the `model` field")
    return head


@functools.lru_cache(maxsize=64)
def _dropped_headers(private: frozenset[str], keep_client_auth: bool) -> frozenset[str]:
    """The (lower-case) client headers not forwarded: hop-by-hop ones, the server's own, and the client's
    credentials unless they go along. One set, so each header costs one look-up."""
    return HOP_BY_HOP | private | (frozenset() if keep_client_auth else CLIENT_AUTH_HEADERS)


def _provider_auth(spec: ProviderSpec, key: str | None, *, client_auth: bool = False) -> dict[str, str]:
    """The provider's own key in the header its API reads. Without a key, a provider that needs one is an
    error, unless the client's own credentials go along (`client_auth`)."""
    if key:
        return {"Authorization": f"Bearer {key}"} if spec.auth == "bearer" else {"x-api-key": key}
    if spec.requires_key and not client_auth:
        raise AuthenticationError(
            f"no API key for provider {spec.name}",
            hint=f"store one with `ccgate provider key set {spec.name}` or set {spec.key_env}",
        )
    return {}


def _own_upstream(meta: ClientMeta, spec: ProviderSpec) -> str | None:
    """The developer's own Anthropic endpoint when this request goes there instead of the provider's."""
    return meta.anthropic_base_url if spec.name == "anthropic" and spec.kind == "anthropic" else None


def _replace_model(data: bytes, upstream_model: str | None, requested: str) -> bytes:
    """Swap the model the upstream reported (first occurrence only) for the one the client asked for."""
    if not upstream_model or upstream_model == requested:
        return data
    old, new = json.dumps(upstream_model).encode(), json.dumps(requested).encode()
    for separator in (b'"model":', b'"model": '):
        if separator + old in data:
            return data.replace(separator + old, separator + new, 1)
    return data


class Proxy:
    """One instance per server; stateless between requests apart from the in-flight set."""

    def __init__(self, deps: ProxyDeps) -> None:
        self.deps = deps
        self.inflight: set[asyncio.Task[Any]] = set()

    # ---- entry points -------------------------------------------------------------------------

    async def messages(self, request: web.Request, meta: ClientMeta) -> web.StreamResponse:
        started = time.perf_counter()
        deps = self.deps  # one consistent view of config for the whole request
        raw = await request.read()
        body = parse_messages_head(raw)
        route = deps.router.route(body["model"])
        primary = route.targets[0]
        record = RequestRecord(
            source=meta.source,
            session_id=meta.session_id or session_id_from(request.headers, body),
            project=meta.project,
            launch_id=meta.launch_id,
            tags=meta.tags,
            tier=route.tier,
            requested_model=body["model"],
            provider=primary.provider,
            routed_model=primary.model,
            stream=bool(body.get("stream")),
        )
        if meta.request_id is not None:
            record.id = meta.request_id
        ctx = _Ctx(deps, meta, record, body, raw, request.rel_url.raw_query_string, request.headers, started)
        task = asyncio.current_task()
        if task is not None:
            self.inflight.add(task)
        try:
            if deps.admission is not None and deps.admission.applies(meta):
                try:
                    # the admission sees the row id (a fresh one, or the sidecar's), so it can charge per row
                    ctx.reservation = await deps.admission.admit(
                        meta if meta.request_id == record.id else replace(meta, request_id=record.id),
                        reserve_nanos=self._reserve_nanos(ctx, route),
                        model=primary.model,
                    )
                    deps.admission.watch(ctx.reservation, ctx.progress)
                except CcgateError as refusal:
                    # refused requests are rows too, so `ccgate logs --errors` shows them; they cost nothing
                    self._finish(
                        ctx,
                        RequestStatus.ERROR,
                        http_status=refusal.status,
                        error_type=refusal.error_type,
                        error_message=refusal.message,
                        cost=Cost(0, PriceQuality.PRICED, note="refused by ccgate"),
                    )
                    raise
            deps.ledger.write_pending(record)
            return await self._run_chain(request, ctx, route)
        finally:
            if task is not None:
                self.inflight.discard(task)

    async def count_tokens(self, request: web.Request, meta: ClientMeta) -> web.StreamResponse:
        """Never budget-checked and never recorded: it costs nothing."""
        deps = self.deps
        raw = await request.read()
        body = parse_messages_head(raw)
        target = deps.router.route(body["model"]).targets[0]
        spec = self._spec(deps, target.provider, meta)
        if spec.kind == "openai":
            from ccgate.wire.translate import estimate_input_tokens

            try:
                estimate = estimate_input_tokens(parse_messages_body(raw))
            except RecursionError as exc:  # in json.dumps of a deep tool input
                raise _too_deep() from exc
            return web.json_response({"input_tokens": estimate})
        if target.model == body["model"]:
            payload = raw
        else:
            payload = _reencoded({**parse_messages_body(raw, exact=True), "model": target.model})
        url = self._anthropic_url(spec, "/v1/messages/count_tokens", request.rel_url.raw_query_string)
        headers = self._anthropic_headers(deps, meta, request.headers, spec, record=None)
        with upstream_errors(spec, Stage.CONNECT):
            async with deps.session.post(
                url, data=payload, headers=headers, allow_redirects=False, skip_auto_headers=user_agent_skip(headers)
            ) as upstream:
                try:
                    data = await read_reply(upstream, spec, deps.max_reply_bytes, setting=deps.max_reply_setting)
                except ReplyTooLarge as error:
                    upstream.close()
                    return error_response(error)
                return web.Response(body=data, status=upstream.status, headers=self._response_headers(upstream))

    # ---- chain and attempts -------------------------------------------------------------------

    def _reserve_nanos(self, ctx: _Ctx, route: Route) -> int | None:
        """The most this request can cost on any target it may fail over to; None if one is unpriced."""
        from ccgate.core.budgets import input_tokens_bound, scan_body, web_search_uses_bound

        max_tokens = ctx.body.get("max_tokens")
        # a bool is an int to Python; a limit past any model's output cannot cost more than that output
        max_output = (
            min(max_tokens, MAX_OUTPUT_TOKENS)
            if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0
            else DEFAULT_MAX_OUTPUT_TOKENS
        )
        speed = ctx.body.get("speed")  # fast mode costs a multiple of the standard rates
        # A token is never shorter than one byte of the body; what the provider adds or fetches comes on top.
        scan = scan_body(ctx.raw, ctx.body)
        ctx.max_output, ctx.input_grows = max_output, scan.input_grows
        searches = web_search_uses_bound(scan, self._tools(ctx) if scan.web_search_tools else None)
        long_context = "context-1m" in ctx.headers.get("anthropic-beta", "")
        bounds = [
            ctx.deps.pricer.max_cost_nanos(
                target.model,
                provider=target.provider,
                input_tokens=input_tokens_bound(
                    scan,
                    len(ctx.raw),
                    None if long_context else ctx.deps.pricer.context_window(target.model, provider=target.provider),
                ),
                max_output_tokens=max_output,
                speed=speed if isinstance(speed, str) else None,
                web_searches=searches,
            )
            for target in route.targets
        ]
        return None if any(bound is None for bound in bounds) else max(b for b in bounds if b is not None)

    @staticmethod
    def _tools(ctx: _Ctx) -> object:
        """The body's `tools`, parsed whole only for the rare request that offers a server tool."""
        try:
            body = fastjson.loads(ctx.raw)
        except (ValueError, RecursionError):
            return None
        return body.get("tools") if isinstance(body, dict) else None

    async def _run_chain(self, request: web.Request, ctx: _Ctx, route: Route) -> web.StreamResponse:
        record = ctx.record
        attempts: list[Attempt] = []
        last_error: CcgateError | None = None
        try:
            for index, target in enumerate(route.targets):
                is_last = index == len(route.targets) - 1
                spec = self._spec(ctx.deps, target.provider, ctx.meta)
                record.provider, record.routed_model = target.provider, target.model
                try:
                    upstream = await self._open(ctx, spec, target)
                except CcgateError as error:
                    attempts.append(Attempt(target.provider, target.model, None, error.message))
                    last_error = error
                    if not is_last:
                        log.warning("failover: %s failed (%s), trying next target", target.provider, error.message)
                    continue
                attempts.append(Attempt(target.provider, target.model, upstream.status))
                ctx.upstream = upstream  # for `progress`
                try:
                    if upstream.status in RETRYABLE_STATUSES and not is_last:
                        try:
                            error_type, _ = error_type_of(await self._read(ctx, upstream, spec))
                        except ReplyTooLarge:  # an error page that big says nothing: on to the next target
                            error_type = None
                        upstream.release()  # closes the connection when the body was not read to its end
                        attempts[-1] = Attempt(target.provider, target.model, upstream.status, error_type)
                        log.warning("failover: %s answered %s, trying next target", target.provider, upstream.status)
                        continue
                    record.attempts = tuple(attempts)
                    if spec.kind == "openai":
                        response = await self._relay_openai(request, ctx, upstream, spec)
                    else:
                        response = await self._relay_anthropic(request, ctx, upstream, target)
                except UpstreamBroke as error:
                    upstream.close()
                    attempts[-1] = Attempt(target.provider, target.model, upstream.status, error.message)
                    last_error = error
                    continue
                except ReplyTooLarge as error:
                    upstream.close()
                    attempts[-1] = Attempt(target.provider, target.model, upstream.status, error.message)
                    record.attempts = tuple(attempts)
                    return self._too_large(ctx, error, billed=upstream.status < 400)
                except BaseException:
                    upstream.close()  # a half-read stream cannot go back to the pool
                    raise
                upstream.release()
                return response
            record.attempts = tuple(attempts)
            failure = last_error or UpstreamError("every target in the route failed")
            self._finish(
                ctx,
                RequestStatus.ERROR,
                http_status=failure.status,
                error_type=failure.error_type,
                error_message=failure.message,
            )
            return error_response(failure)
        except asyncio.CancelledError:
            # the client went away (or the server is stopping); if it was already streaming, it had a 200
            http_status = 200 if ctx.client_started else None
            self._finish(ctx, RequestStatus.INTERRUPTED, http_status=http_status, error_type="cancelled")
            raise
        except BaseException as exc:
            status = RequestStatus.INTERRUPTED if ctx.client_started else RequestStatus.ERROR
            self._finish(ctx, status, error_type=type(exc).__name__, error_message=str(exc)[:300])
            raise

    async def _open(self, ctx: _Ctx, spec: ProviderSpec, target: Target) -> aiohttp.ClientResponse:
        deps = ctx.deps
        if spec.kind == "openai":
            from ccgate.wire.translate import anthropic_to_openai_request

            try:
                payload_obj, ctx.id_map = anthropic_to_openai_request(
                    ctx.exact_body(), target_model=target.model, stream_usage=spec.supports_stream_usage
                )
            except RecursionError as exc:
                raise _too_deep() from exc
            url: str | URL = spec.base_url.rstrip("/") + "/chat/completions"
            headers = {
                "content-type": "application/json",
                "accept-encoding": "identity",
                **_provider_auth(spec, deps.provider_keys.get(spec.name)),
            }
            data = _reencoded(payload_obj)
        else:
            url = self._anthropic_url(spec, "/v1/messages", ctx.query)
            headers = self._anthropic_headers(deps, ctx.meta, ctx.headers, spec, record=ctx.record)
            if target.model == ctx.body["model"]:
                data = ctx.raw
            else:
                data = _reencoded({**ctx.exact_body(), "model": target.model})
        skip = user_agent_skip(headers)
        if not ctx.record.stream:
            # a whole reply's headers come only once it is generated, which may take minutes: the session's
            # read timeout is the bound
            ctx.first_byte_deadline = None
            with upstream_errors(spec, Stage.CONNECT):
                return await deps.session.post(
                    url, data=data, headers=headers, allow_redirects=False, skip_auto_headers=skip
                )
        loop = asyncio.get_running_loop()
        ctx.first_byte_deadline = loop.time() + deps.first_byte_timeout
        # between reads of a running stream, silence past the idle timeout is a dead upstream
        timeout = with_read_timeout(deps.session.timeout, deps.stream_idle_timeout)
        first_byte = asyncio.timeout_at(ctx.first_byte_deadline)
        with upstream_errors(spec, Stage.CONNECT, limit=deps.first_byte_timeout, timer=first_byte):
            async with first_byte:
                return await deps.session.post(
                    url, data=data, headers=headers, timeout=timeout, allow_redirects=False, skip_auto_headers=skip
                )

    async def _first_chunk(self, ctx: _Ctx, upstream: aiohttp.ClientResponse, spec: ProviderSpec) -> bytes:
        """A stream's first bytes, before the client sees anything: silence or a cut here still allows failover.

        Often they came in with the response headers: then they are taken as they are, without arming a timer.
        """
        content = upstream.content
        with upstream_errors(spec, Stage.FIRST_EVENT, limit=ctx.deps.first_byte_timeout):
            first = content.read_nowait()  # what `readany` returns when something is buffered
            if not first and not content.is_eof():
                async with asyncio.timeout_at(ctx.first_byte_deadline):
                    first = await content.readany()
        if not first:
            raise UpstreamBroke(
                f"upstream {spec.name} ({redact_url(spec.base_url)}) ended the stream before sending any event"
            )
        return first

    async def _read(self, ctx: _Ctx, upstream: aiohttp.ClientResponse, spec: ProviderSpec) -> bytes:
        """A whole (non-streamed) body; a broken one is a failover-able error, not a 500; one past
        `max_reply_bytes` is `ReplyTooLarge` (see `_too_large`)."""
        return await read_reply(upstream, spec, ctx.deps.max_reply_bytes, setting=ctx.deps.max_reply_setting)

    def _too_large(self, ctx: _Ctx, error: ReplyTooLarge, *, billed: bool) -> web.Response:
        """A reply too large to read: the client gets a 502 in Anthropic's envelope, and the row the usage seen.
        A successful reply was generated, so billed: its tokens are estimated from the body and the bytes read,
        output within `max_tokens`; an error reply cost nothing."""
        if billed:
            estimate = self._estimated_usage(ctx, error.seen * 2)
            ctx.record.usage = replace(estimate, output_tokens=min(estimate.output_tokens, _output_bound(ctx.body)))
            ctx.usage_note = "tokens estimated: the reply was too large to read"
        self._finish(
            ctx, RequestStatus.ERROR, http_status=error.status, error_type=error.error_type, error_message=error.message
        )
        return error_response(error)

    # ---- relays -------------------------------------------------------------------------------

    async def _relay_anthropic(
        self, request: web.Request, ctx: _Ctx, upstream: aiohttp.ClientResponse, target: Target
    ) -> web.StreamResponse:
        record = ctx.record
        spec = self._spec(ctx.deps, target.provider, ctx.meta)
        requested = ctx.body["model"]
        rewrite = target.model != requested
        record.upstream_request_id = upstream.headers.get("request-id")
        headers = self._response_headers(upstream)
        if upstream.status >= 400 or upstream.content_type != SSE_CONTENT_TYPE:
            data = await self._read(ctx, upstream, spec)
            ctx.mark_first_byte()
            if upstream.status >= 400:
                error_type, message = error_type_of(data)
                self._finish(
                    ctx,
                    RequestStatus.ERROR,
                    http_status=upstream.status,
                    error_type=error_type or f"http_{upstream.status}",
                    error_message=message,
                )
            else:
                metered = meter_message(data)
                record.upstream_message_id = metered.message_id
                # ~4 bytes of JSON a token: the estimate a stream's bytes get, were the usage unusable
                record.usage = self._vetted(ctx, metered.usage, metered.usage_issues, len(data) * 2)
                if rewrite:
                    data = self._restore_model_json(data, requested)
                self._finish(ctx, RequestStatus.OK, http_status=upstream.status)
            return web.Response(body=data, status=upstream.status, headers=headers)

        first = await self._first_chunk(ctx, upstream, spec)
        response = _Stream(status=upstream.status, headers=headers)
        if response.headers.getall("Content-Type", None) != [SSE_CONTENT_TYPE]:  # usually already just that
            response.content_type = SSE_CONTENT_TYPE
        limit = ctx.deps.max_reply_bytes  # also the most one unfinished event may hold
        meter = AnthropicStreamMeter(limit)
        ctx.live_usage = lambda: self._cut_stream_usage(ctx, meter)
        held: list[bytes] = []  # a list, not bytes +=: a long message_start in small pieces stays linear
        held_size = 0
        tail = b""  # the upstream's last bytes: they go out with the end of the reply, in one write
        await response.prepare(request)
        ctx.client_started = True
        content = upstream.content
        if record.ttfb_ms is None:
            ctx.mark_first_byte()
        chunk = first
        try:
            # the first chunk (read before the client saw anything), then the rest as it arrives, until the end
            while chunk:
                if meter.feed(chunk) and not meter.finished:
                    self._progress(ctx, meter)
                if rewrite:
                    # hold bytes until message_start is complete, then show the client the model it asked for
                    held.append(chunk)
                    if meter.started:
                        chunk, held, rewrite = _replace_model(b"".join(held), meter.model, requested), [], False
                    else:
                        held_size += len(chunk)
                        if held_size > limit:  # complete events, but never a message_start: as bad as no end
                            raise EventTooLarge(held_size, limit)
                        chunk = b""
                if chunk and content.at_eof():  # nothing follows
                    tail = chunk
                elif chunk:
                    await response.write(chunk)
                chunk = await content.readany()
            if held:
                tail = b"".join(held)
        except EventTooLarge as exc:
            # passed through as it came, the client holds the start of the endless event: an error event would
            # only extend it, so the connection is closed (a cut stream, as from a dead upstream); held bytes
            # of a rewritten route never reached it
            cut = None if rewrite else request.transport
            return await self._event_too_large(ctx, response, upstream, spec, exc, sse_error, cut=cut)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            meter.flush()
            self._finish(
                ctx,
                RequestStatus.INTERRUPTED,
                http_status=upstream.status,
                error_type="client_disconnected",
                error_message=str(exc) or "client went away",
            )
            return response
        except FAILURES as exc:
            meter.flush()
            message = self._stream_cut(exc, ctx, spec)
            self._finish(
                ctx,
                RequestStatus.INTERRUPTED,
                http_status=upstream.status,
                error_type="upstream_disconnected",
                error_message=message,
            )
            await self._end_quietly(response, sse_error("api_error", message))
            return response
        meter.flush()
        if meter.error_type is not None:
            status, error_type, error_message = RequestStatus.ERROR, meter.error_type, meter.error_message
        elif not meter.finished:
            status, error_type = RequestStatus.INTERRUPTED, "stream_incomplete"
            error_message = "upstream ended the stream before message_delta"
        else:
            status, error_type, error_message = RequestStatus.OK, None, None
        self._finish(ctx, status, http_status=upstream.status, error_type=error_type, error_message=error_message)
        await self._end_quietly(response, tail)
        return response

    async def _relay_openai(
        self, request: web.Request, ctx: _Ctx, upstream: aiohttp.ClientResponse, spec: ProviderSpec
    ) -> web.StreamResponse:
        from ccgate.core.usage import usage_from_openai
        from ccgate.wire.sse import SSEDecoder
        from ccgate.wire.translate import (
            OpenAIStreamTranslator,
            openai_error_to_anthropic,
            openai_to_anthropic_response,
        )

        record = ctx.record
        requested = ctx.body["model"]
        if upstream.status >= 400:
            data = await self._read(ctx, upstream, spec)
            ctx.mark_first_byte()
            status, envelope = openai_error_to_anthropic(upstream.status, data)
            error = envelope.get("error", {})
            self._finish(
                ctx,
                RequestStatus.ERROR,
                http_status=status,
                error_type=error.get("type"),
                error_message=error.get("message"),
            )
            headers = {"x-should-retry": "false"} if status in (400, 401, 403, 404, 413) else {}
            if "retry-after" in upstream.headers:
                headers["retry-after"] = upstream.headers["retry-after"]
            return web.json_response(envelope, status=status, headers=headers)
        if not record.stream:
            data = await self._read(ctx, upstream, spec)
            ctx.mark_first_byte()
            try:
                reply = json.loads(data)
                message = openai_to_anthropic_response(reply, requested_model=requested, id_map=ctx.id_map)
            except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
                raise UpstreamBroke(f"provider {spec.name} returned a reply ccgate cannot read") from exc
            if isinstance(reply.get("usage"), dict):
                record.usage = self._vetted(ctx, usage_from_openai(reply["usage"]), {}, len(data) * 2)
            else:
                record.usage = self._estimated_usage(ctx, len(json.dumps(message.get("content"))) * 2)
            # the id Claude Code saw (and writes to its transcript) is ours; the provider's is kept beside it
            record.upstream_message_id = message.get("id")
            record.upstream_request_id = reply.get("id")
            self._finish(ctx, RequestStatus.OK, http_status=200)
            return web.json_response(message)

        translator = OpenAIStreamTranslator(requested_model=requested, id_map=ctx.id_map)
        decoder = SSEDecoder(ctx.deps.max_reply_bytes)
        written = 0

        def usage_so_far() -> Usage:
            record.upstream_message_id = translator.message_id  # the id the client saw, as in its transcript
            if translator.usage_reported:
                return self._vetted(ctx, translator.usage, {}, written)
            return self._estimated_usage(ctx, written)

        first = await self._first_chunk(ctx, upstream, spec)
        ctx.live_usage = usage_so_far
        response = web.StreamResponse(status=200, headers={"cache-control": "no-cache"})
        response.content_type = SSE_CONTENT_TYPE
        await response.prepare(request)
        ctx.client_started = True
        failure: tuple[str, str] | None = None
        last = b""
        try:
            done = False
            async for chunk in _prepend(first, upstream.content.iter_any()):
                if record.ttfb_ms is None:
                    ctx.mark_first_byte()
                out: list[bytes] = []
                for data in decoder.feed_data(chunk):
                    done, failure = self._translate_event(data, translator, out, record)
                    if done:
                        break
                if out:
                    payload = b"".join(out)
                    written += len(payload)
                    await response.write(payload)
                if done:
                    break
            if not done:
                out = []
                for event in decoder.flush():
                    done, failure = self._translate_event(event.data.encode(), translator, out, record)
                    if done:
                        break
                if out:
                    await response.write(b"".join(out))
            if failure is None and not done and not translator.saw_finish_reason:
                # the connection ended cleanly but the reply did not: no finish reason, no [DONE]
                cut = f"ccgate: upstream {spec.name} ended the stream before finishing the reply"
                return await self._broken_off(ctx, response, translator, cut)
            if failure is None:
                last = b"".join(translator.finish())  # goes out with the end of the reply, in one write
        except EventTooLarge as exc:
            return await self._event_too_large(
                ctx, response, upstream, spec, exc, lambda kind, text: b"".join(translator.error(kind, text)), cut=None
            )
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self._finish(ctx, RequestStatus.INTERRUPTED, http_status=200, error_type="client_disconnected")
            return response
        except FAILURES as exc:
            broke = self._stream_cut(exc, ctx, spec)
            return await self._broken_off(ctx, response, translator, broke)
        if failure is not None:
            self._finish(ctx, RequestStatus.ERROR, http_status=200, error_type=failure[0], error_message=failure[1])
        else:
            self._finish(ctx, RequestStatus.OK, http_status=200)
        await self._end_quietly(response, last)
        return response

    async def _broken_off(
        self, ctx: _Ctx, response: web.StreamResponse, translator: Any, message: str
    ) -> web.StreamResponse:
        """A translated stream the provider did not finish: the row is interrupted, the client gets an error."""
        self._finish(
            ctx, RequestStatus.INTERRUPTED, http_status=200, error_type="upstream_disconnected", error_message=message
        )
        await self._end_quietly(response, b"".join(translator.error("api_error", message)))
        return response

    async def _event_too_large(
        self,
        ctx: _Ctx,
        response: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        spec: ProviderSpec,
        exc: EventTooLarge,
        error_event: Callable[[str, str], bytes],
        *,
        cut: asyncio.Transport | None,
    ) -> web.StreamResponse:
        """A stream event that never ends (or no `message_start` to restore the model name in): buffering it
        would grow memory without bound. The upstream is dropped, the row keeps the usage seen (output estimated
        from the bytes), the client gets an `error` event, or its connection is `cut`."""
        upstream.close()
        label = spec.label or f"upstream {spec.name}"
        message = (
            f"ccgate: {label} sent a stream event larger than {exc.limit / 2**20:g} MiB without ending it; "
            f"ccgate ended the stream (if such events are real, raise `{ctx.deps.max_reply_setting}`)"
        )
        log.warning("%s", message)
        self._finish(
            ctx,
            RequestStatus.INTERRUPTED,
            http_status=response.status,
            error_type="event_too_large",
            error_message=message,
        )
        if cut is not None:
            cut.abort()
        else:
            await self._end_quietly(response, error_event("api_error", message))
        return response

    @staticmethod
    def _translate_event(
        data: bytes, translator: Any, out: list[bytes], record: RequestRecord
    ) -> tuple[bool, tuple[str, str] | None]:
        """One OpenAI SSE event into Anthropic bytes; returns (stream over, (error type, message) or None)."""
        if data == b"[DONE]":
            return True, None
        try:
            try:
                parsed = fastjson.loads(data)
            except ValueError:  # invalid UTF-8 is replaced, as a text decoder would, not refused
                parsed = fastjson.loads(data.decode("utf-8", errors="replace"))
        except ValueError:
            if not data or data.isspace():
                return False, None
            if data.strip() == b"[DONE]":
                return True, None
            message = "ccgate: the provider sent a stream event that is not JSON"
            out.extend(translator.error("api_error", message))
            return True, ("api_error", message)
        if type(parsed) is not dict:
            return False, None
        if parsed.get("error") is not None and not parsed.get("choices"):
            from ccgate.wire.translate import openai_error_to_anthropic

            # the translator maps the provider's error code to the right Anthropic error type
            out.extend(translator.feed(parsed))
            _, envelope = openai_error_to_anthropic(0, parsed)
            return True, (envelope["error"]["type"], envelope["error"]["message"])
        if record.upstream_request_id is None:
            record.upstream_request_id = parsed.get("id")
        try:
            out.extend(translator.feed(parsed))
        except RecursionError:  # e.g. tool arguments as an object nested past what `json.dumps` writes
            message = "ccgate: the provider sent a stream event nested too deeply to translate"
            out.extend(translator.error("api_error", message))
            return True, ("api_error", message)
        return False, None

    # ---- recording ----------------------------------------------------------------------------

    def _progress(self, ctx: _Ctx, meter: AnthropicStreamMeter) -> None:
        """Persist the usage seen in message_start, so a crash mid-stream still knows what was billed."""
        record = ctx.record
        # an estimate now is provisional: a later message_delta may still report the counts message_start lacked
        estimated, note = record.usage_estimated, ctx.usage_note
        record.usage = self._vetted(ctx, meter.usage, meter.usage_issues, meter.bytes_after_start)
        record.upstream_message_id = meter.message_id
        record.cost = self._cost(ctx)
        record.usage_estimated, ctx.usage_note = estimated, note
        ctx.deps.ledger.write_progress(record)
        if meter.started:
            self._shrink_reservation(ctx)

    def _shrink_reservation(self, ctx: _Ctx) -> None:
        """`message_start` told the real input: hold only its cost plus the output bound from now on. Not for
        server tools, whose results add input after message_start."""
        admission, reservation = ctx.deps.admission, ctx.reservation
        if admission is None or reservation is None or ctx.input_grows:
            return
        record = ctx.record
        speed = ctx.body.get("speed")
        usage = replace(
            record.usage,
            output_tokens=ctx.max_output,
            speed=record.usage.speed or (speed if isinstance(speed, str) else None),
        )
        model = record.routed_model or record.requested_model or ""
        try:
            bound = ctx.deps.pricer.cost(model, usage, provider=record.provider, at=record.started_at)
        except Exception:  # pricing must never break a response; the full reservation simply stays
            log.exception("pricing failed for %s", model)
            return
        if bound.nanos is not None:
            admission.shrink(reservation, bound.nanos)

    def _finish(
        self,
        ctx: _Ctx,
        status: RequestStatus,
        *,
        http_status: int | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        cost: Cost | None = None,
    ) -> None:
        record = ctx.record
        if record.status is not RequestStatus.PENDING:
            return
        live, ctx.live_usage = ctx.live_usage, None  # the closure refers to ctx: break the cycle at once
        if live is not None:
            record.usage = live()
        record.status = status
        record.http_status = http_status
        record.error_type = error_type
        record.error_message = error_message
        record.ended_at = utcnow()
        record.latency_ms = (time.perf_counter() - ctx.started) * 1000
        record.cost = cost or self._cost(ctx)
        admission = ctx.deps.admission
        if ctx.reservation is not None and admission is not None:
            if record.cost.nanos:
                admission.settle(ctx.reservation, record.cost.nanos)
            else:
                admission.release(ctx.reservation)
            ctx.reservation = None
        ctx.deps.ledger.write_final(record)

    def _cost(self, ctx: _Ctx) -> Cost:
        record = ctx.record
        model = record.routed_model or record.requested_model or ""
        try:
            cost = ctx.deps.pricer.cost(model, record.usage, provider=record.provider, at=record.started_at)
        except Exception:  # pricing must never break a response; the row stays unpriced and visible
            log.exception("pricing failed for %s", model)
            return Cost(None, PriceQuality.UNPRICED, note="pricing failed; see the sidecar log")
        if record.usage_estimated and cost.quality is not PriceQuality.UNPRICED:
            note = ctx.usage_note or "tokens estimated: the provider reported none"
            if cost.quality is PriceQuality.ESTIMATED and cost.note:
                note = f"{note} ({cost.note})"
            return replace(cost, quality=PriceQuality.ESTIMATED, note=note)
        return cost

    def _cut_stream_usage(self, ctx: _Ctx, meter: AnthropicStreamMeter) -> Usage:
        """What the meter saw; a stream cut before message_delta is billed for the output generated: estimate it."""
        ctx.record.upstream_message_id = meter.message_id
        usage = meter.usage
        if not meter.finished:
            estimate = meter.estimated_output_tokens()
            if estimate > usage.output_tokens:
                ctx.record.usage_estimated = True
                usage = replace(usage, output_tokens=estimate)
        return self._vetted(ctx, usage, meter.usage_issues, meter.bytes_after_start)

    def _vetted(self, ctx: _Ctx, usage: Usage, issues: Mapping[str, str], written: int) -> Usage:
        """Usage the provider reported unusably (missing, negative), or past what any model can use, is replaced
        side by side (input with cache, output) by an estimate, and the row says so: believed, it would make a
        billed request free, or cost thousands of dollars and exhaust every budget. `written`: bytes of reply seen.
        """
        if (
            not issues
            and usage.output_tokens <= MAX_PLAUSIBLE_OUTPUT_TOKENS
            and usage.total_input_tokens <= MAX_PLAUSIBLE_INPUT_TOKENS
        ):
            return usage
        issues = {**issues, **implausible_usage(usage)}
        estimate = self._estimated_usage(ctx, written)
        if "input" in issues:
            usage = replace(
                usage,
                input_tokens=estimate.input_tokens,
                cache_read_tokens=0,
                cache_write_5m_tokens=0,
                cache_write_1h_tokens=0,
            )
        if "output" in issues:
            usage = replace(usage, output_tokens=min(estimate.output_tokens, _output_bound(ctx.body)))
        ctx.usage_note = "tokens estimated: " + "; ".join(issues[side] for side in sorted(issues))
        return usage

    @staticmethod
    def _estimated_usage(ctx: _Ctx, written: int) -> Usage:
        """A provider that sends no usage must not make a request free: estimate it and flag the row."""
        from ccgate.wire.translate import estimate_input_tokens

        ctx.record.usage_estimated = True
        try:
            input_tokens = estimate_input_tokens(ctx.exact_body())
        except (RecursionError, CcgateError):  # too deep for `json`: the body's size is the cruder bound
            input_tokens = len(ctx.raw) // 4
        # ~4 characters a token; SSE framing roughly doubles the bytes of the text it carries
        return Usage(input_tokens=input_tokens, output_tokens=max(1, written // 8))

    # ---- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _spec(deps: ProxyDeps, provider: str, meta: ClientMeta) -> ProviderSpec:
        try:
            spec = deps.providers[provider]
        except KeyError:
            valid = ", ".join(sorted(deps.providers))
            raise UpstreamError(
                f"route names unknown provider {provider!r}", hint=f"valid providers: {valid}"
            ) from None
        own = _own_upstream(meta, spec)
        return spec if own is None else replace(spec, base_url=own)

    @staticmethod
    def _anthropic_url(spec: ProviderSpec, path: str, query: str) -> URL:
        """The provider's URL with the client's query string exactly as sent (`query` is raw, still encoded):
        decoding it would turn `%23` into a fragment and `%26` into another parameter."""
        url = URL(spec.base_url.rstrip("/") + path)
        return URL(f"{url}?{query}", encoded=True) if query else url

    def _anthropic_headers(
        self,
        deps: ProxyDeps,
        meta: ClientMeta,
        incoming: Mapping[str, str],
        spec: ProviderSpec,
        *,
        record: RequestRecord | None,
    ) -> dict[str, str]:
        """Client headers verbatim, minus hop-by-hop and every `x-ccgate-*` one; credentials only where they belong.
        Only the org's ccgate gateway gets ccgate's own headers (the row id, its project, session and launch): a
        provider has no use for them, and they would tell it which developer, project and launch each request is."""
        # the key stored for Anthropic is not for the developer's own gateway: that one gets their credentials
        key = None if _own_upstream(meta, spec) else deps.provider_keys.get(spec.name)
        keep_client_auth = key is None and meta.forward_client_auth and spec.name in CLIENT_AUTH_PROVIDERS
        dropped = _dropped_headers(meta.private_headers, keep_client_auth)
        headers = {
            name: value
            for name, value in incoming.items()
            if (lower := name.lower()) not in dropped and not lower.startswith(CCGATE_HEADER_PREFIX)
        }
        headers["Accept-Encoding"] = "identity"
        if record is not None and spec.ccgate_gateway:
            headers["x-ccgate-request-id"] = record.id
            headers.update(attribution.encode(record.project, record.session_id, record.launch_id))
        headers.update(_provider_auth(spec, key, client_auth=keep_client_auth))
        return headers

    @staticmethod
    def _response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
        return {name: value for name, value in upstream.headers.items() if name.lower() not in RESPONSE_DROP}

    @staticmethod
    def _restore_model_json(data: bytes, requested: str) -> bytes:
        """Non-streamed reply of a rewritten route: the client sees the model name it asked for."""
        try:
            payload = json.loads(data)
            if not isinstance(payload, dict) or "model" not in payload:
                return data
            payload["model"] = requested
            return json.dumps(payload, ensure_ascii=False).encode()
        except (ValueError, RecursionError):  # unreadable or too deep to rewrite: passed on as it came
            return data

    @staticmethod
    def _stream_cut(exc: BaseException, ctx: _Ctx, spec: ProviderSpec) -> str:
        """What the client and the ledger are told when a running stream breaks off."""
        return f"ccgate: {upstream_error(exc, Stage.STREAM, spec, limit=ctx.deps.stream_idle_timeout).message}"

    @staticmethod
    async def _end_quietly(response: web.StreamResponse, data: bytes = b"") -> None:
        """The last bytes and the end of the reply, in one write. The client may already be gone; nothing to
        record about that here."""
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError):
            await response.write_eof(data)
