"""`/metrics` for Prometheus: prometheus-client's one home module. Behind an admin token.

Series are bounded: team, provider and model (a model the price catalog knows, else "other"); the status as a
class (2xx, 4xx, 5xx, interrupted). Per-key series exist only when the operator turns them on, and never on the
latency histogram. With `--workers` every worker writes to PROMETHEUS_MULTIPROC_DIR (set by `gateway serve`)
and any worker's /metrics reports the sum over all of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ccgate.core.records import PriceQuality, RequestRecord, RequestStatus
from ccgate.storage.gateway.records import BudgetLevel, BudgetView

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def status_class(record: RequestRecord) -> str:
    if record.status is RequestStatus.INTERRUPTED:
        return "interrupted"
    status = record.http_status
    return f"{status // 100}xx" if status else "none"


def model_label(record: RequestRecord) -> str:
    """Catalog names only: a client can send any model name, and each new label value is a new series."""
    model = record.routed_model or record.requested_model
    if model and record.cost.quality is PriceQuality.PRICED and record.cost.nanos is not None and len(model) <= 100:
        return model
    return "other"


@dataclass
class GatewayMetrics:
    registry: Any
    requests: Any
    cost: Any
    tokens: Any
    latency: Any
    responses: Any
    key_requests: Any | None
    key_cost: Any | None
    multiprocess: bool

    @classmethod
    def create(cls, *, per_key: bool) -> GatewayMetrics:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # one registry per app (tests run several in a process); in multiprocess mode values live in files
        registry = None if multiprocess else CollectorRegistry(auto_describe=True)
        where: dict[str, Any] = {"registry": registry}
        labels = ("team", "provider", "model")
        return cls(
            registry=registry,
            requests=Counter("ccgate_gateway_requests", "Proxied requests", (*labels, "status_class"), **where),
            cost=Counter("ccgate_gateway_cost_usd", "Cost of proxied requests in US dollars", labels, **where),
            tokens=Counter("ccgate_gateway_tokens", "Tokens of proxied requests", (*labels, "type"), **where),
            latency=Histogram(
                "ccgate_gateway_request_duration_seconds",
                "Time from request to the end of the response",
                ("provider", "status_class"),
                buckets=_LATENCY_BUCKETS,
                **where,
            ),
            responses=Counter(
                "ccgate_gateway_http_responses", "Every response, refusals included", ("route", "status_class"), **where
            ),
            key_requests=Counter("ccgate_gateway_key_requests", "Requests per key", ("key", "team"), **where)
            if per_key
            else None,
            key_cost=Counter("ccgate_gateway_key_cost_usd", "Cost per key in US dollars", ("key", "team"), **where)
            if per_key
            else None,
            multiprocess=multiprocess,
        )

    def observe(self, record: RequestRecord, *, team: str, key: str) -> None:
        """A finished request."""
        provider, model, klass = record.provider or "none", model_label(record), status_class(record)
        self.requests.labels(team, provider, model, klass).inc()
        usage = record.usage
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ):
            if count:
                self.tokens.labels(team, provider, model, kind).inc(count)
        dollars = (record.cost.nanos or 0) / 1e9  # a metric, not money: the ledger keeps the exact amount
        if dollars:
            self.cost.labels(team, provider, model).inc(dollars)
        if record.latency_ms is not None:
            self.latency.labels(provider, klass).observe(record.latency_ms / 1000)
        if self.key_requests is not None and self.key_cost is not None:
            self.key_requests.labels(key, team).inc()
            if dollars:
                self.key_cost.labels(key, team).inc(dollars)

    def response(self, route: str, status: int) -> None:
        self.responses.labels(route, f"{status // 100}xx").inc()

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))


class _BudgetGauges:
    """A one-scrape collector: metric families, not registry gauges, so multiprocess mode keeps no files of them."""

    def __init__(self, samples: list[tuple[tuple[str, str, str, str], int, int]]) -> None:
        self.samples = samples

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ("level", "target", "period", "budget")
        left = GaugeMetricFamily(
            "ccgate_gateway_budget_left_usd", "A budget's room this window: limit - spent - reserved", labels=labels
        )
        limit = GaugeMetricFamily("ccgate_gateway_budget_limit_usd", "A budget's limit in force", labels=labels)
        for values, left_nanos, limit_nanos in self.samples:
            left.add_metric(values, left_nanos / 1e9)  # a metric, not money: the exact amount is in the database
            limit.add_metric(values, limit_nanos / 1e9)
        yield left
        yield limit


def budget_exposition(views: Sequence[BudgetView], names: Mapping[str, str], *, per_key: bool) -> bytes:
    """The budget gauges, read from the database at scrape time (so every instance and worker agrees).

    Labels stay bounded: the level, the target's name (team, customer or provider; a key only with per-key
    series on), the period and the budget's id -- one series per budget an admin created.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    samples = []
    for view in views:
        budget = view.budget
        if budget.level is BudgetLevel.KEY and not per_key:
            continue
        period = ("rolling " if not budget.calendar else "") + budget.period.name
        values = (budget.level.value, names.get(budget.target_id, budget.target_id), period, budget.id)
        samples.append((values, view.state.left_nanos, view.state.limit_nanos))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_BudgetGauges(samples))
    return bytes(generate_latest(registry))
