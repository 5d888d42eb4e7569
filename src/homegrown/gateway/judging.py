"""Shadow, judge and promotion wired into a running gateway: `attach(gateway)`.

For each route with a `shadow:` section this makes a `Shadow` (and, with `promotion:`, a `Promoter` that owns
the route's split from then on, resuming at the step its newest stored decision left it). One after-request
hook feeds them: every finished client request counts as a live call of the candidate when the candidate
answered it or failed on it (failed attempts before a fallback included — the client never saw them, the
evidence must), and, when its answer is good and its key did not opt out of logging, is offered to the shadow.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from homegrown.errors import HomegrownError
from homegrown.gateway.judge import Judge
from homegrown.gateway.judging_config import JudgeConfig, PromotionConfig, ShadowConfig
from homegrown.gateway.judging_store import JudgingStore
from homegrown.gateway.promotion import Promoter
from homegrown.gateway.shadow import Shadow
from homegrown.gateway.signals import Answer

if TYPE_CHECKING:
    from homegrown.gateway.app import Gateway
    from homegrown.gateway.store import RequestRecord


NOT_THE_BACKENDS_FAULT = ("unavailable", "context_length", "client_error")
"""Attempt kinds that say nothing about the candidate's health: skipped (breaker open, cooling after a 429), a
prompt too long for its context, or a request the client got wrong wherever it went."""


def answer_of(response: dict[str, Any] | None, latency_s: float) -> Answer | None:
    """The assistant text and finish reason of a chat-completions response, or None if it has none."""
    choices = (response or {}).get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message") or {}
    text = message.get("content") if isinstance(message, dict) else None
    return Answer(text, choices[0].get("finish_reason"), latency_s) if isinstance(text, str) else None


class Judging:
    """The shadows and promoters of one gateway, and the hook that feeds them."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        cfg = gw.cfg
        self.shadows: dict[str, Shadow] = {}
        self.promoters: dict[str, Promoter] = {}
        routes = {name: rc for name, rc in cfg.routes.items() if rc.shadow is not None}
        if not routes:
            self.store = None
            return
        if gw.store is None:
            raise HomegrownError("shadowing keeps both answers in the request log's database; configure log.db_url")
        self.store = JudgingStore(gw.store.engine)
        # decisions are taken on the event loop (in the after-request hook); one writer thread stores them, in order
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="promotion-decisions")
        judge = self._judge(cfg.judge) if cfg.judge is not None else None
        for name, rc in routes.items():
            assert rc.shadow is not None  # names checked by GatewayConfig; promotion has its shadow and judge
            promoter = self._promoter(name, rc.promotion, rc.shadow) if rc.promotion is not None else None
            self.shadows[name] = Shadow(name, rc.shadow, self._call, self.store, judge, promoter)
        gw.add_hook(self.finished)
        gw.state_parts["judging"] = self.status
        gw.accounting.registry.register(_JudgingCollector(self))

    def _judge(self, jc: JudgeConfig) -> Judge:
        backend = self.gw.backends[jc.backend]
        return Judge(lambda body: backend.complete("/chat/completions", body), jc.max_tokens, jc.temperature, jc.seed)

    def _promoter(self, route: str, pc: PromotionConfig, sc: ShadowConfig) -> Promoter:
        assert self.store is not None
        store = self.store
        promoter = Promoter(route, pc, sc.candidate, sc.incumbent, lambda w: self.gw.set_weights(route, w),
                            lambda r, d: self._writer.submit(store.add_decision, r, d),
                            step=store.current_step(route) or 0)
        self.promoters[route] = promoter
        return promoter

    async def _call(self, backend: str, body: dict[str, Any]) -> Answer:
        """A shadow call through the gateway's own client for that backend (its key, timeouts, connection cap)."""
        start = time.perf_counter()
        try:
            response = await self.gw.backends[backend].complete("/chat/completions", body)
        except Exception as e:  # what went wrong is kept with the pair; the candidate's error rate counts it
            return Answer("", None, time.perf_counter() - start, f"{type(e).__name__}: {e}"[:500])
        answer = answer_of(response, time.perf_counter() - start)
        return answer or Answer("", None, time.perf_counter() - start, "bad_response: no assistant message")

    def finished(self, record: RequestRecord, body: dict[str, Any], response: dict[str, Any] | None) -> Any:
        """The gateway's after-request hook; returns the mirror's task when the request is shadowed."""
        shadow = self.shadows.get(record.route)
        if shadow is None:
            return None
        promoter = self.promoters.get(record.route)
        if promoter is not None:
            for attempt in record.attempts:
                backend, _, kind = attempt.partition(":")
                if kind not in NOT_THE_BACKENDS_FAULT:
                    promoter.record_call(backend, False, 0.0)
            if record.backend is not None and record.error_kind not in NOT_THE_BACKENDS_FAULT:
                promoter.record_call(record.backend, record.ok, record.latency_s)
        if not record.log or record.endpoint != "chat" or not record.ok or record.backend is None:
            return None
        live = answer_of(response, record.latency_s)
        return None if live is None else shadow.offer(record.id, body, record.backend, live)

    def status(self) -> dict[str, Any]:
        """Per shadowed route: mirror counters and, when promoted, the step, split and current evidence."""
        out: dict[str, Any] = {}
        for name, shadow in self.shadows.items():
            entry: dict[str, Any] = {"shadow": shadow.counters()}
            promoter = self.promoters.get(name)
            if promoter is not None:
                ev = promoter.evidence()
                entry["promotion"] = {"step": promoter.step, "percent": promoter.cfg.ladder[promoter.step],
                                      "evidence": ev.as_dict(promoter.cfg.confidence), "stale": promoter.stale}
            out[name] = entry
        return out


class _JudgingCollector(Collector):
    """/metrics: shadow mirrors by result (dropped = the bounded queue was full), verdicts by outcome, and each
    promoted route's in-house percent — read from the live objects at scrape time."""

    def __init__(self, judging: Judging) -> None:
        self.judging = judging

    def collect(self) -> Iterator[Metric]:
        shadow = CounterMetricFamily("homegrown_gateway_shadow", "Shadow mirrors by result.",
                                     labels=["route", "result"])
        for route, sh in self.judging.shadows.items():
            for result in ("mirrored", "dropped", "stored", "judged"):
                shadow.add_metric([route, result], sh.counters()[result])
        yield shadow
        percent = GaugeMetricFamily("homegrown_gateway_promotion_percent", "In-house share the ladder has set.",
                                    labels=["route"])
        for route, promoter in self.judging.promoters.items():
            percent.add_metric([route], promoter.cfg.ladder[promoter.step])
        yield percent


def attach(gw: Gateway) -> Judging:
    """Give a gateway its shadows and promoters (a no-op for a config without `shadow:` sections)."""
    return Judging(gw)
