"""Prometheus metrics of the serving engine, in their own registry so several apps can live in one process.

Names follow vLLM's where one exists (running/waiting, TTFT, time per output token), so existing dashboards
carry over with a prefix change.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("homegrown_requests_running", "Sequences in the decode batch.", registry=r)
        self.waiting = Gauge("homegrown_requests_waiting", "Sequences queued for a batch slot.", registry=r)
        self.prompt_tokens = Counter("homegrown_prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self.prompt_tokens_reused = Counter("homegrown_prompt_tokens_reused",
                                            "Prompt tokens copied from the cache (a running or a finished "
                                            "sequence's), not computed.",
                                            registry=r)
        self.generation_tokens = Counter("homegrown_generation_tokens", "Tokens generated.", registry=r)
        self.tokens_per_second = Gauge("homegrown_generation_tokens_per_second",
                                       "Generated tokens per second over the last 10 seconds.", registry=r)
        self.tokens_per_second.set_function(self._rate)
        self.finished = Counter("homegrown_request_success", "Sequences finished, by finish reason.",
                                ["finish_reason"], registry=r)
        self.ttft = Histogram("homegrown_time_to_first_token_seconds", "Arrival to first generated token.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("homegrown_time_per_output_token_seconds", "Time between consecutive tokens.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("homegrown_e2e_request_latency_seconds", "Arrival to last token of a sequence.",
                             buckets=LATENCY_BUCKETS, registry=r)
        self._samples: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()
        self._total = 0

    def tokens_generated(self, n: int) -> None:
        self.generation_tokens.inc(n)
        with self._lock:
            self._total += n

    def request_finished(self, reason: str, seconds: float) -> None:
        self.finished.labels(finish_reason=reason).inc()
        self.e2e.observe(seconds)

    def _rate(self, window: float = 10.0) -> float:
        """Tokens/s between now and the oldest scrape within `window` seconds (0 on the first scrape)."""
        now = time.monotonic()
        with self._lock:
            total = self._total
            self._samples.append((now, total))
            while len(self._samples) > 1 and now - self._samples[0][0] > window:
                self._samples.popleft()
            t0, v0 = self._samples[0]
        return (total - v0) / (now - t0) if now > t0 else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
