"""The proxy core shared by the sidecar and the gateway: route, admit, forward, meter, record.

Servers parse who is calling (`ClientMeta`) and hand the request here. Bytes from an Anthropic-kind
upstream are written to the client as they arrive; metering reads the same chunks on the side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import web

from ccgate.accounting import AnthropicStreamMeter, error_type_of, meter_message
from ccgate.errors import AuthenticationError, CcgateError, InvalidRequestError, UpstreamError, UpstreamTimeoutError
from ccgate.models import Attempt, Cost, PriceQuality, RequestRecord, RequestStatus, Usage, utcnow
from ccgate.upstream import CCGATE_REQUEST_HEADERS, HOP_BY_HOP, RESPONSE_DROP

if TYPE_CHECKING:
    from ccgate.budget_guard import AdmissionRequest, BudgetRule, Reservation
    from ccgate.providers import ProviderSpec
    from ccgate.routing import Route, Target

log = logging.getLogger("ccgate.proxy")

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
SSE_CONTENT_TYPE = "text/event-stream"


class LedgerSink(Protocol):
    def write_pending(self, record: RequestRecord) -> None: ...
    def write_progress(self, record: RequestRecord) -> None: ...
    def write_final(self, record: RequestRecord) -> None: ...


class Pricer(Protocol):
    def cost(self, model: str, usage: Usage, *, provider: str | None = None, at: datetime | None = None) -> Cost: ...

    def max_cost_nanos(
        self, model: str, *, provider: str | None, input_tokens: int, max_output_tokens: int
    ) -> int | None: ...


class Admission(Protocol):
    @property
    def rules(self) -> tuple[BudgetRule, ...]: ...
    async def admit(self, request: AdmissionRequest) -> Reservation: ...
    def settle(self, reservation: Reservation, actual_nanos: int) -> None: ...
    def release(self, reservation: Reservation) -> None: ...


class RouterLike(Protocol):
    def route(self, model: str) -> Route: ...


@dataclass(frozen=True, slots=True)
class ClientMeta:
    """Who sent a request, as established by the server in front of the core."""

    session_id: str | None = None
    project: str | None = None
    launch_id: str | None = None
    source: str = "sidecar"
    # Gateway mode fills these; the sidecar leaves them empty.
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ProxyDeps:
    """Everything the core needs; servers build it and may swap parts on config reload."""

    session: aiohttp.ClientSession
    providers: Mapping[str, ProviderSpec]
    router: RouterLike
    pricer: Pricer
    ledger: LedgerSink
    admission: Admission | None = None
    provider_keys: Mapping[str, str] = field(default_factory=dict)
    on_record: Callable[[RequestRecord], None] | None = None


@dataclass(slots=True)
class _Ctx:
    """Per-request working state."""

    record: RequestRecord
    body: dict[str, Any]
    raw: bytes
    query: str
    headers: Mapping[str, str]
    started: float
    reservation: Reservation | None = None
    client_started: bool = False
    id_map: Any = None


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
                parsed = json.loads(user_id)
            except ValueError:
                return None
            if isinstance(parsed, dict) and isinstance(parsed.get("session_id"), str):
                return str(parsed["session_id"])
        elif isinstance(user_id, str) and "_session_" in user_id:
            return user_id.rsplit("_session_", 1)[1] or None
    return None


def parse_messages_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(
            f"request body is not valid JSON: {exc}", hint="send a Messages API JSON object"
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object", hint="send a Messages API JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequestError("model: field required", hint="name the model in the `model` field")
    return body


def error_response(error: CcgateError) -> web.Response:
    """ccgate's own errors in Anthropic's envelope, with `x-should-retry: false` when retrying cannot help."""
    return web.json_response(error.envelope(), status=error.status, headers=error.headers())


def _sse_error(error_type: str, message: str) -> bytes:
    payload = {"type": "error", "error": {"type": error_type, "message": message}}
    return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"


class Proxy:
    """One instance per server; stateless between requests apart from the in-flight set."""

    def __init__(self, deps: ProxyDeps) -> None:
        self.deps = deps
        self.inflight: set[asyncio.Task[Any]] = set()

    # ---- entry points -------------------------------------------------------------------------

    async def messages(self, request: web.Request, meta: ClientMeta) -> web.StreamResponse:
        started = time.perf_counter()
        raw = await request.read()
        body = parse_messages_body(raw)
        deps = self.deps
        route = deps.router.route(body["model"])
        primary = route.targets[0]
        record = RequestRecord(
            source=meta.source,
            session_id=session_id_from(request.headers, body),
            project=meta.project,
            launch_id=meta.launch_id,
            tier=route.tier,
            requested_model=body["model"],
            provider=primary.provider,
            routed_model=primary.model,
            stream=bool(body.get("stream")),
        )
        ctx = _Ctx(
            record=record, body=body, raw=raw, query=request.query_string, headers=request.headers, started=started
        )
        task = asyncio.current_task()
        if task is not None:
            self.inflight.add(task)
        try:
            admission = deps.admission
            if admission is not None and any(rule.applies_to(meta.project) for rule in admission.rules):
                from ccgate.budget_guard import AdmissionRequest

                reserve = self._reserve_nanos(ctx, primary)
                ctx.reservation = await admission.admit(
                    AdmissionRequest(project=meta.project, reserve_nanos=reserve, model=primary.model)
                )
            deps.ledger.write_pending(record)
            return await self._run_chain(request, ctx, route)
        finally:
            if task is not None:
                self.inflight.discard(task)

    async def count_tokens(self, request: web.Request, meta: ClientMeta) -> web.StreamResponse:
        """Never budget-checked and never recorded: it costs nothing."""
        raw = await request.read()
        body = parse_messages_body(raw)
        target = self.deps.router.route(body["model"]).targets[0]
        spec = self._spec(target.provider)
        if spec.kind == "openai":
            from ccgate.translate import estimate_input_tokens

            return web.json_response({"input_tokens": estimate_input_tokens(body)})
        payload = raw if target.model == body["model"] else json.dumps({**body, "model": target.model}).encode()
        url = self._anthropic_url(spec, "/v1/messages/count_tokens", request.query_string)
        headers = self._anthropic_headers(request.headers, spec, request_id=None)
        try:
            async with self.deps.session.post(url, data=payload, headers=headers) as upstream:
                data = await upstream.read()
                return web.Response(body=data, status=upstream.status, headers=self._response_headers(upstream))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._connect_error(spec, exc) from exc

    # ---- chain and attempts -------------------------------------------------------------------

    def _reserve_nanos(self, ctx: _Ctx, target: Target) -> int | None:
        max_tokens = ctx.body.get("max_tokens")
        max_output = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 64_000
        # A token is never shorter than one byte of the body, so the byte count bounds the input from above.
        return self.deps.pricer.max_cost_nanos(
            target.model, provider=target.provider, input_tokens=len(ctx.raw), max_output_tokens=max_output
        )

    async def _run_chain(self, request: web.Request, ctx: _Ctx, route: Route) -> web.StreamResponse:
        record = ctx.record
        attempts: list[Attempt] = []
        last_error: CcgateError | None = None
        try:
            for index, target in enumerate(route.targets):
                is_last = index == len(route.targets) - 1
                spec = self._spec(target.provider)
                record.provider, record.routed_model = target.provider, target.model
                try:
                    upstream = await self._open(ctx, spec, target)
                except CcgateError as error:
                    attempts.append(Attempt(target.provider, target.model, None, error.message))
                    last_error = error
                    if is_last:
                        break
                    log.warning("failover: %s unreachable, trying next target", target.provider)
                    continue
                if upstream.status in RETRYABLE_STATUSES and not is_last:
                    body = await upstream.read()
                    upstream.release()
                    error_type, _ = error_type_of(body)
                    attempts.append(Attempt(target.provider, target.model, upstream.status, error_type))
                    log.warning("failover: %s answered %s, trying next target", target.provider, upstream.status)
                    continue
                attempts.append(Attempt(target.provider, target.model, upstream.status))
                record.attempts = tuple(attempts)
                try:
                    if spec.kind == "openai":
                        response = await self._relay_openai(request, ctx, upstream, spec, target)
                    else:
                        response = await self._relay_anthropic(request, ctx, upstream, target)
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
            self._finish(ctx, RequestStatus.INTERRUPTED, error_type="cancelled")
            raise
        except BaseException as exc:
            if record.status is RequestStatus.PENDING:
                status = RequestStatus.INTERRUPTED if ctx.client_started else RequestStatus.ERROR
                self._finish(ctx, status, error_type=type(exc).__name__, error_message=str(exc)[:300])
            raise

    async def _open(self, ctx: _Ctx, spec: ProviderSpec, target: Target) -> aiohttp.ClientResponse:
        if spec.kind == "openai":
            from ccgate.translate import anthropic_to_openai_request

            payload_obj, id_map = anthropic_to_openai_request(
                ctx.body, target_model=target.model, stream_usage=spec.supports_stream_usage
            )
            ctx.id_map = id_map
            url = spec.base_url.rstrip("/") + "/chat/completions"
            headers = {
                "content-type": "application/json",
                "accept-encoding": "identity",
                "x-ccgate-request-id": ctx.record.id,
            }
            key = self.deps.provider_keys.get(spec.name)
            if key:
                headers["authorization"] = f"Bearer {key}"
            elif spec.requires_key:
                raise AuthenticationError(
                    f"no API key for provider {spec.name}",
                    hint=f"store one with `ccgate provider key set {spec.name}` or set {spec.key_env}",
                )
            data = json.dumps(payload_obj).encode()
        else:
            url = self._anthropic_url(spec, "/v1/messages", ctx.query)
            headers = self._anthropic_headers(ctx.headers, spec, request_id=ctx.record.id)
            data = ctx.raw if target.model == ctx.body["model"] else self._with_model(ctx, target.model)
        try:
            return await self.deps.session.post(url, data=data, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._connect_error(spec, exc) from exc

    # ---- relays -------------------------------------------------------------------------------

    async def _relay_anthropic(
        self, request: web.Request, ctx: _Ctx, upstream: aiohttp.ClientResponse, target: Target
    ) -> web.StreamResponse:
        record = ctx.record
        record.upstream_request_id = upstream.headers.get("request-id")
        headers = self._response_headers(upstream)
        is_sse = upstream.content_type == SSE_CONTENT_TYPE
        if upstream.status >= 400 or not is_sse:
            data = await upstream.read()
            record.ttfb_ms = (time.perf_counter() - ctx.started) * 1000
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
                usage, message_id, _ = meter_message(data)
                record.usage, record.upstream_message_id = usage, message_id
                if target.model != ctx.body["model"]:
                    data = self._restore_model(data, ctx.body["model"])
                self._finish(ctx, RequestStatus.OK, http_status=upstream.status)
            return web.Response(body=data, status=upstream.status, headers=headers)

        response = web.StreamResponse(status=upstream.status, headers=headers)
        response.content_type = SSE_CONTENT_TYPE
        meter = AnthropicStreamMeter()
        rewrite = target.model != ctx.body["model"]
        held = b""
        await response.prepare(request)
        ctx.client_started = True
        try:
            async for chunk in upstream.content.iter_any():
                if record.ttfb_ms is None:
                    record.ttfb_ms = (time.perf_counter() - ctx.started) * 1000
                if meter.feed(chunk):
                    self._progress(ctx, meter)
                if rewrite:
                    held += chunk
                    if meter.message_id is None:
                        continue
                    chunk, held, rewrite = self._restore_model(held, ctx.body["model"]), b"", False
                await response.write(chunk)
            if held:
                await response.write(held)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            meter.flush()
            self._finish_stream(
                ctx,
                meter,
                RequestStatus.INTERRUPTED,
                upstream.status,
                "client_disconnected",
                str(exc) or "client went away",
            )
            upstream.close()
            return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            meter.flush()
            message = f"ccgate: upstream {target.provider} broke off the stream: {type(exc).__name__}"
            self._finish_stream(
                ctx, meter, RequestStatus.INTERRUPTED, upstream.status, "upstream_disconnected", message
            )
            await self._write_quietly(response, _sse_error("api_error", message))
            return response
        meter.flush()
        if meter.error_type is not None:
            self._finish_stream(ctx, meter, RequestStatus.ERROR, upstream.status, meter.error_type, meter.error_message)
        elif not meter.finished:
            self._finish_stream(
                ctx,
                meter,
                RequestStatus.INTERRUPTED,
                upstream.status,
                "stream_incomplete",
                "upstream ended the stream before message_delta",
            )
        else:
            self._finish_stream(ctx, meter, RequestStatus.OK, upstream.status, None, None)
        await self._write_eof_quietly(response)
        return response

    async def _relay_openai(
        self,
        request: web.Request,
        ctx: _Ctx,
        upstream: aiohttp.ClientResponse,
        spec: ProviderSpec,
        target: Target,
    ) -> web.StreamResponse:
        from ccgate.sse import SSEDecoder
        from ccgate.translate import OpenAIStreamTranslator, openai_error_to_anthropic, openai_to_anthropic_response
        from ccgate.usage import usage_from_openai

        record = ctx.record
        id_map = ctx.id_map
        requested = ctx.body["model"]
        if upstream.status >= 400:
            data = await upstream.read()
            record.ttfb_ms = (time.perf_counter() - ctx.started) * 1000
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
            return web.json_response(envelope, status=status, headers=headers)
        if not record.stream:
            data = await upstream.read()
            record.ttfb_ms = (time.perf_counter() - ctx.started) * 1000
            try:
                reply = json.loads(data)
            except ValueError as exc:
                raise UpstreamError(f"provider {spec.name} returned a reply that is not JSON") from exc
            message = openai_to_anthropic_response(reply, requested_model=requested, id_map=id_map)
            if isinstance(reply.get("usage"), dict):
                record.usage = usage_from_openai(reply["usage"])
            else:
                written = len(json.dumps(message.get("content"))) * 2
                record.usage = self._translated_usage(ctx, Usage(), False, written)
            record.upstream_message_id = reply.get("id")
            self._finish(ctx, RequestStatus.OK, http_status=200)
            return web.json_response(message)

        translator = OpenAIStreamTranslator(requested_model=requested, id_map=id_map)
        decoder = SSEDecoder()
        response = web.StreamResponse(status=200, headers={"cache-control": "no-cache"})
        response.content_type = SSE_CONTENT_TYPE
        await response.prepare(request)
        ctx.client_started = True
        done = False
        written = 0
        try:
            async for chunk in upstream.content.iter_any():
                if record.ttfb_ms is None:
                    record.ttfb_ms = (time.perf_counter() - ctx.started) * 1000
                out: list[bytes] = []
                for event in decoder.feed(chunk):
                    if event.data.strip() == "[DONE]":
                        done = True
                        break
                    if not event.data:
                        continue
                    parsed = event.json()
                    if isinstance(parsed, dict) and parsed.get("error") is not None and not parsed.get("choices"):
                        # the translator maps the provider's error code to the right Anthropic error type
                        out.extend(translator.feed(parsed))
                        _, envelope = openai_error_to_anthropic(0, parsed)
                        record.error_type = envelope["error"]["type"]
                        record.error_message = envelope["error"]["message"]
                        done = True
                        break
                    record.upstream_message_id = record.upstream_message_id or parsed.get("id")
                    out.extend(translator.feed(parsed))
                if out:
                    payload = b"".join(out)
                    written += len(payload)
                    await response.write(payload)
                if done:
                    break
            if record.error_type is None:
                tail = translator.finish()
                if tail:
                    await response.write(b"".join(tail))
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            record.usage = self._translated_usage(ctx, translator.usage, translator.usage_reported, written)
            self._finish(ctx, RequestStatus.INTERRUPTED, http_status=200, error_type="client_disconnected")
            upstream.close()
            return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            record.usage = self._translated_usage(ctx, translator.usage, translator.usage_reported, written)
            broke = f"ccgate: upstream {spec.name} broke off the stream: {type(exc).__name__}"
            self._finish(
                ctx,
                RequestStatus.INTERRUPTED,
                http_status=200,
                error_type="upstream_disconnected",
                error_message=broke,
            )
            await self._write_quietly(response, b"".join(translator.error("api_error", broke)))
            return response
        record.usage = self._translated_usage(ctx, translator.usage, translator.usage_reported, written)
        if record.error_type is not None:
            self._finish(ctx, RequestStatus.ERROR, http_status=200, error_type=record.error_type)
        else:
            self._finish(ctx, RequestStatus.OK, http_status=200)
        await self._write_eof_quietly(response)
        return response

    # ---- recording ----------------------------------------------------------------------------

    def _progress(self, ctx: _Ctx, meter: AnthropicStreamMeter) -> None:
        record = ctx.record
        record.usage = meter.usage
        record.upstream_message_id = meter.message_id
        record.cost = self._cost(record)
        self.deps.ledger.write_progress(record.copy())

    def _finish_stream(
        self,
        ctx: _Ctx,
        meter: AnthropicStreamMeter,
        status: RequestStatus,
        http_status: int,
        error_type: str | None,
        error_message: str | None,
    ) -> None:
        ctx.record.usage = meter.usage
        ctx.record.upstream_message_id = meter.message_id
        self._finish(ctx, status, http_status=http_status, error_type=error_type, error_message=error_message)

    def _finish(
        self,
        ctx: _Ctx,
        status: RequestStatus,
        *,
        http_status: int | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
    ) -> None:
        record = ctx.record
        if record.status is not RequestStatus.PENDING:
            return
        record.status = status
        record.http_status = http_status
        record.error_type = error_type
        record.error_message = error_message
        record.ended_at = utcnow()
        record.latency_ms = (time.perf_counter() - ctx.started) * 1000
        record.cost = self._cost(record)
        if ctx.reservation is not None and self.deps.admission is not None:
            if record.cost.nanos:
                self.deps.admission.settle(ctx.reservation, record.cost.nanos)
            else:
                self.deps.admission.release(ctx.reservation)
            ctx.reservation = None
        final = record.copy()
        self.deps.ledger.write_final(final)
        if self.deps.on_record is not None:
            self.deps.on_record(final)

    def _cost(self, record: RequestRecord) -> Cost:
        model = record.routed_model or record.requested_model or ""
        try:
            cost = self.deps.pricer.cost(model, record.usage, provider=record.provider, at=record.started_at)
        except Exception:  # pricing must never break a response; the row stays unpriced and visible
            log.exception("pricing failed for %s", model)
            return replace(record.cost)
        if record.usage_estimated and cost.quality is PriceQuality.PRICED:
            return replace(
                cost, quality=PriceQuality.ESTIMATED, note="the provider reported no usage: tokens estimated"
            )
        return cost

    @staticmethod
    def _translated_usage(ctx: _Ctx, usage: Usage, reported: bool, written: int) -> Usage:
        """A provider that sends no usage must not make a request free: estimate it and flag the row."""
        if reported:
            return usage
        from ccgate.translate import estimate_input_tokens

        ctx.record.usage_estimated = True
        # ~4 characters a token; SSE framing roughly doubles the bytes of the text it carries
        return Usage(input_tokens=estimate_input_tokens(ctx.body), output_tokens=max(1, written // 8))

    # ---- helpers ------------------------------------------------------------------------------

    def _spec(self, provider: str) -> ProviderSpec:
        try:
            return self.deps.providers[provider]
        except KeyError:
            valid = ", ".join(sorted(self.deps.providers))
            raise UpstreamError(
                f"route names unknown provider {provider!r}", hint=f"valid providers: {valid}"
            ) from None

    @staticmethod
    def _anthropic_url(spec: ProviderSpec, path: str, query: str) -> str:
        url = spec.base_url.rstrip("/") + path
        return f"{url}?{query}" if query else url

    def _anthropic_headers(
        self, incoming: Mapping[str, str], spec: ProviderSpec, *, request_id: str | None
    ) -> dict[str, str]:
        headers = {
            name: value
            for name, value in incoming.items()
            if name.lower() not in HOP_BY_HOP and name.lower() not in CCGATE_REQUEST_HEADERS
        }
        headers["Accept-Encoding"] = "identity"
        if request_id:
            headers["x-ccgate-request-id"] = request_id
        key = self.deps.provider_keys.get(spec.name)
        if key:
            for name in [h for h in headers if h.lower() in ("x-api-key", "authorization")]:
                del headers[name]
            if spec.auth == "bearer":
                headers["Authorization"] = f"Bearer {key}"
            else:
                headers["x-api-key"] = key
        return headers

    @staticmethod
    def _response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
        return {name: value for name, value in upstream.headers.items() if name.lower() not in RESPONSE_DROP}

    @staticmethod
    def _with_model(ctx: _Ctx, model: str) -> bytes:
        return json.dumps({**ctx.body, "model": model}, ensure_ascii=False).encode()

    def _restore_model(self, data: bytes, requested: str) -> bytes:
        """The client sees the model name it asked for, even when the route rewrote it."""
        routed = self.deps.router.route(requested).targets[0].model
        return data.replace(
            b'"model":' + json.dumps(routed).encode(), b'"model":' + json.dumps(requested).encode(), 1
        ).replace(b'"model": ' + json.dumps(routed).encode(), b'"model": ' + json.dumps(requested).encode(), 1)

    @staticmethod
    def _connect_error(spec: ProviderSpec, exc: BaseException) -> CcgateError:
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            return UpstreamTimeoutError(
                f"upstream {spec.name} ({spec.base_url}) did not answer in time",
                hint="check the provider's status or your network",
            )
        return UpstreamError(
            f"cannot reach upstream {spec.name} at {spec.base_url}: {type(exc).__name__}: {exc}",
            hint=f"check the network, or the base URL (CCGATE_{spec.name.upper().replace('-', '_')}_BASE_URL)",
        )

    @staticmethod
    async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
        try:
            await response.write(data)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError):
            pass

    @staticmethod
    async def _write_eof_quietly(response: web.StreamResponse) -> None:
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            await response.write_eof()


def handler_with_errors(
    func: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Turns ccgate errors raised before the response started into Anthropic envelopes."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await func(request)
        except CcgateError as error:
            return error_response(error)

    return wrapped
