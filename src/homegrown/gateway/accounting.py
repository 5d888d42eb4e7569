"""Accounting per route and backend: requests, tokens, errors, p50/p95 latency and cost — live in `/metrics`
(Prometheus, own registry) and `/gateway/state`, and from the request log in `homegrown gateway status`.

Every client request is counted once, under the backend that answered it (or `none` when none did); every
failed attempt is also counted as an error of the backend that failed, by kind, so a fallback that saved the
request still shows the failure that caused it. p50/p95 come from the last `WINDOW` latencies of each pair
(exported as gauges) besides the usual histograms.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from homegrown.gateway.store import RequestRecord
from homegrown.serve.metrics import LATENCY_BUCKETS

WINDOW = 2048
NONE = "none"


@dataclass
class PairStats:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def summary(self) -> dict[str, Any]:
        p50, p95 = percentiles(self.latencies)
        return {"requests": self.requests, "errors": self.errors, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": self.cost_usd,
                "latency_p50_s": p50, "latency_p95_s": p95}


def percentiles(values: Iterable[float]) -> tuple[float | None, float | None]:
    arr = np.fromiter(values, dtype=float)
    if not len(arr):
        return None, None
    p50, p95 = np.percentile(arr, [50, 95])
    return float(p50), float(p95)


def summarise(records: Iterable[RequestRecord]) -> dict[tuple[str, str], dict[str, Any]]:
    """The same per (route, backend) figures from logged records (what `gateway status` prints)."""
    pairs: dict[tuple[str, str], PairStats] = defaultdict(lambda: PairStats(latencies=deque()))
    for r in records:
        _add(pairs[(r.route, r.backend or NONE)], r)
    return {k: v.summary() for k, v in sorted(pairs.items())}


def _add(s: PairStats, r: RequestRecord) -> None:
    s.requests += 1
    s.errors += not r.ok
    s.prompt_tokens += r.prompt_tokens or 0
    s.completion_tokens += r.completion_tokens or 0
    s.cost_usd += r.cost_usd
    s.latencies.append(r.latency_s)


class Accounting:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        pair = ["route", "backend"]
        self.requests = Counter("homegrown_gateway_requests", "Client requests, by the backend that answered "
                                "(none: no backend did) and the HTTP status class.", [*pair, "status"], registry=r)
        self.errors = Counter("homegrown_gateway_backend_errors", "Failed attempts and interrupted streams, "
                              "by kind.", [*pair, "kind"], registry=r)
        self.tokens = Counter("homegrown_gateway_tokens", "Tokens, as the backends report them.",
                              [*pair, "type"], registry=r)
        self.cost = Counter("homegrown_gateway_cost_usd", "Estimated cost from the backends' prices.", pair,
                            registry=r)
        self.latency = Histogram("homegrown_gateway_request_latency_seconds", "Arrival to the last byte.", pair,
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("homegrown_gateway_time_to_first_token_seconds", "Streams: arrival to first token.",
                              pair, buckets=LATENCY_BUCKETS, registry=r)
        self.p50 = Gauge("homegrown_gateway_latency_p50_seconds", f"Median of the last {WINDOW} latencies.", pair,
                         registry=r)
        self.p95 = Gauge("homegrown_gateway_latency_p95_seconds", f"95th percentile of the last {WINDOW}.", pair,
                         registry=r)
        self.breaker = Gauge("homegrown_gateway_breaker_state", "0 closed, 1 half-open, 2 open.", ["backend"],
                             registry=r)
        self.weight = Gauge("homegrown_gateway_route_share", "Configured share of a route's first attempts.", pair,
                            registry=r)
        self.pairs: dict[tuple[str, str], PairStats] = defaultdict(PairStats)
        self.attempt_errors: dict[tuple[str, str, str], int] = defaultdict(int)

    def attempt_failed(self, route: str, backend: str, kind: str) -> None:
        self.errors.labels(route, backend, kind).inc()
        self.attempt_errors[(route, backend, kind)] += 1

    def finished(self, r: RequestRecord) -> None:
        backend = r.backend or NONE
        self.requests.labels(r.route, backend, f"{r.status // 100}xx").inc()
        if r.error_kind == "stream_interrupted":
            self.attempt_failed(r.route, backend, r.error_kind)
        self.tokens.labels(r.route, backend, "prompt").inc(r.prompt_tokens or 0)
        self.tokens.labels(r.route, backend, "completion").inc(r.completion_tokens or 0)
        self.cost.labels(r.route, backend).inc(r.cost_usd)
        self.latency.labels(r.route, backend).observe(r.latency_s)
        if r.ttft_s is not None:
            self.ttft.labels(r.route, backend).observe(r.ttft_s)
        _add(self.pairs[(r.route, backend)], r)

    def snapshot(self) -> dict[str, Any]:
        return {"pairs": [{"route": k[0], "backend": k[1], **v.summary()} for k, v in sorted(self.pairs.items())],
                "attempt_errors": [{"route": k[0], "backend": k[1], "kind": k[2], "count": v}
                                   for k, v in sorted(self.attempt_errors.items())]}

    def render(self, refresh: Callable[[Accounting], None]) -> bytes:
        """Prometheus text; `refresh` sets the gauges that describe live state (breakers, shares) first."""
        for (route, backend), s in self.pairs.items():
            p50, p95 = percentiles(s.latencies)
            if p50 is not None:
                self.p50.labels(route, backend).set(p50)
                self.p95.labels(route, backend).set(p95)
        refresh(self)
        return generate_latest(self.registry)
