"""The seams between the proxy core and the server in front of it, each with its contract written down.

A server (the sidecar, the gateway) says who is calling (`ClientMeta`) and hands the core its collaborators
(`ProxyDeps`): where requests go (`RouterLike`), what they cost (`Pricer`), where rows are written
(`LedgerSink`) and how budgets apply (`Admission`). Every method here is called on the event loop's thread,
in the middle of a request: none may block on disk, network or a lock held by another thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import aiohttp

    from ccgate.core.providers import ProviderSpec
    from ccgate.core.records import Cost, RequestRecord, Usage
    from ccgate.core.routing import Route

R = TypeVar("R")


class LedgerSink(Protocol):
    """Where the core writes each request's row; the sidecar's is `storage.writer.LedgerWriter`.

    Contract:
    - Never blocks and never raises: the calls come from the proxy's hot path. A sink that cannot keep a row
      logs that and drops it (or keeps it aside); it must not fail the request.
    - The core passes its own `RequestRecord` and keeps changing it afterwards: a sink that holds on to a
      row past the call copies it (`record.copy()`).
    - Per request, in this order: `write_pending` once, when the request was admitted and is about to be
      forwarded; `write_progress` zero or more times while a stream runs (the usage seen so far, so a crash
      still knows what was billed); `write_final` exactly once, with the row's end state. A request refused
      before forwarding (by the admission) gets `write_final` only, with no `write_pending` before it.
    """

    def write_pending(self, record: RequestRecord) -> None: ...
    def write_progress(self, record: RequestRecord) -> None: ...
    def write_final(self, record: RequestRecord) -> None: ...


class Pricer(Protocol):
    """Prices of models; the sidecar's is `core.pricing.PriceCatalog`, warmed before the first request.

    Contract:
    - `cost` prices a request's usage; an unknown model is a `Cost` with no nanos (unpriced), not an error.
      The core catches anything `cost` raises (the row is then unpriced and the failure logged), but a pricer
      should not rely on it.
    - `max_cost_nanos` bounds what a request can cost before it is sent (for a budget reservation); None
      means the model has no price, which an admission refuses when a budget applies.
    - `context_window` is the model's input limit in tokens, None when unknown.
    - All three answer from memory: they run on every request.
    """

    def cost(self, model: str, usage: Usage, *, provider: str | None = None, at: datetime | None = None) -> Cost: ...

    def max_cost_nanos(
        self,
        model: str,
        *,
        provider: str | None,
        input_tokens: int,
        max_output_tokens: int,
        speed: str | None = None,
        web_searches: int = 0,
    ) -> int | None: ...

    def context_window(self, model: str, *, provider: str | None = None) -> int | None: ...


class Admission(Protocol[R]):
    """How budgets apply to a caller: the sidecar scopes them by project, the gateway by key, team, customer.

    `R` is the implementation's reservation type (the sidecar's is `sidecar.admission.Reservation`); the core
    only hands reservations back.

    Contract:
    - `applies(meta)` says whether any budget or limit covers this caller. When False the core calls nothing
      else for the request: it runs without a reservation.
    - `admit` reserves `reserve_nanos` (the most the request can cost on any target of its route; None when a
      target is unpriced) and returns the reservation. It may wait (for reservations in flight to clear) and
      refuses by raising a `RefusedError`: BudgetExceededError when a budget is spent or stays fully
      reserved, UnpricedModelError when `reserve_nanos` is None and a budget applies, RateLimitedError or
      PermissionDeniedError where a gateway has such rules. The core records the refusal as a row and
      passes the error on. A cancelled `admit` holds nothing.
    - `watch` is called at most once per reservation, right after `admit`: `progress` is a counter that grows
      while the request moves (bytes from the provider; before the first byte, every look), so waiters can
      tell a slow request from a stalled one.
    - `shrink` may be called any number of times while the reply runs (its input is known, so the hold need
      only cover `bound_nanos`, never negative); it only ever lowers the hold: a bound at or above what is
      held changes nothing. It is not called for a request whose input grows mid-reply (server tools).
    - Each reservation ends exactly once: `settle` with the real cost when the request cost something
      (`actual_nanos` > 0), otherwise `release` (it failed, the provider refused it, it was cancelled, or
      its cost is unknown). Neither raises, and nothing is called with the reservation afterwards.
    - Everything but `admit` is synchronous and must not block.
    """

    def applies(self, meta: ClientMeta) -> bool: ...
    async def admit(self, meta: ClientMeta, *, reserve_nanos: int | None, model: str) -> R: ...
    def settle(self, reservation: R, actual_nanos: int) -> None: ...
    def release(self, reservation: R) -> None: ...
    # The reply began and its input is known: from now on the reservation need hold only `bound_nanos`.
    def shrink(self, reservation: R, bound_nanos: int) -> None: ...
    # `progress` grows while the request moves, so requests waiting for its reservation know it is alive.
    def watch(self, reservation: R, progress: Callable[[], int]) -> None: ...


class RouterLike(Protocol):
    """Where a requested model goes; the sidecar's is `core.routing.Router`.

    Contract: `route` answers every model name with at least one target, primary first, then the fallbacks
    tried in order. A name no rule covers is not an error: it goes to the `anthropic` provider unchanged (the
    passthrough). A router that must refuse a model raises a `RefusedError` (PermissionDeniedError); that
    happens before anything is recorded. A target naming a provider missing from `ProxyDeps.providers` is
    answered by the core as an UpstreamError (502). Called on every request: it answers from memory.
    """

    def route(self, model: str) -> Route: ...


@dataclass(frozen=True, slots=True)
class ClientMeta:
    """Who sent a request, as established by the server in front of the core."""

    session_id: str | None = None
    project: str | None = None
    launch_id: str | None = None
    source: str = "sidecar"
    # The sidecar forwards the developer's own Anthropic credentials; the gateway never forwards a virtual key.
    forward_client_auth: bool = True
    # Headers the server consumed itself (local token, launch id, ...) and that must not reach a provider.
    private_headers: frozenset[str] = frozenset()
    # Gateway mode fills these (key id, team, customer); the sidecar leaves them empty.
    extra: Mapping[str, str] = field(default_factory=dict)
    # Sidecar only: the ANTHROPIC_BASE_URL the developer had before `launch` (a corporate gateway, say). Their
    # credentials are meant for it, so the `anthropic` provider goes there for this launch's requests.
    anthropic_base_url: str | None = None
    # the launch's tags as the ledger stores them (`tags.encode`), None without any
    tags: str | None = None
    # Gateway only: the row id a developer's sidecar sent (`x-ccgate-request-id`), kept as this request's own
    # row id so a later sync of the same row is recognised. None: a fresh id. `Admission.admit` always gets
    # the request's row id here (the core fills it in), so a gateway can charge budgets once per row.
    request_id: str | None = None


@dataclass(frozen=True)
class ProxyDeps:
    """Everything the core needs; a config reload swaps the whole object, requests keep the one they began with."""

    session: aiohttp.ClientSession
    providers: Mapping[str, ProviderSpec]
    router: RouterLike
    pricer: Pricer
    ledger: LedgerSink
    # Any: each server has its own reservation type; the core only hands reservations back.
    admission: Admission[Any] | None = None
    provider_keys: Mapping[str, str] = field(default_factory=dict)
    # A stream's upstream must send headers and a first event within `first_byte_timeout` of the attempt (else
    # the next target is tried), then no more than `stream_idle_timeout` of silence between events.
    first_byte_timeout: float = 60.0
    stream_idle_timeout: float = 120.0
    # the most of a whole (non-streamed or error) reply read into memory; a larger one is a 502, not buffered.
    # Also the most one unfinished stream event may hold (and a rewritten stream before its message_start).
    max_reply_bytes: int = 64 * 1024 * 1024
    # what the user raises when that limit is too low: named in the hint
    max_reply_setting: str = "sidecar.max_reply_mb"
