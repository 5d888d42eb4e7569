"""Shadowing: ask the other model the same question in the background, keep both answers, have them judged.

The gateway calls `Shadow.offer` from its after-request hook, once the client's request has finished: the
client's answer is already on its way, so nothing here can delay or change it. A mirrored request goes to "the
other one" of the route's pair — the candidate when the incumbent served the client, the incumbent when the
candidate did — so pairs keep coming at every step of the ladder, 100 % in-house included (which is how a
candidate that starts losing at the top is noticed and rolled back).

Mirrors run as tasks on the gateway's event loop, at most `max_concurrency` at once with at most `max_queue`
waiting; an offer beyond that is dropped and counted (`dropped`), never queued without bound: under overload the
shadow gives way to real traffic. Which requests are mirrored is decided by a hash of the request id against
`percent`, so a re-run of the same traffic mirrors the same requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from homegrown.data.pii import scrub
from homegrown.gateway.judge import Judge
from homegrown.gateway.judging_config import ShadowConfig
from homegrown.gateway.judging_store import JudgingStore
from homegrown.gateway.promotion import Promoter
from homegrown.gateway.signals import Answer, signals

log = logging.getLogger(__name__)

CallBackend = Callable[[str, dict], Awaitable[Answer]]
"""Send a chat-completions body (non-streaming) to the named backend; an error is an Answer with `error` set."""


def mirrored(request_id: str, percent: float) -> bool:
    """Whether `request_id` falls in the mirrored `percent` (a hash, so the same ids are picked every time)."""
    h = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big")
    return h / 2**64 < percent / 100


def scrub_messages(messages: list[dict]) -> list[dict]:
    """The messages with PII replaced by the data pipeline's scrubber (what the request log stores too)."""
    return [{**m, "content": scrub(m["content"], private_ips=True)[0]} if isinstance(m.get("content"), str) else m
            for m in messages]


class Shadow:
    """One route's mirror: schedules background calls, stores pairs, asks the judge, feeds the promoter."""

    def __init__(self, route: str, cfg: ShadowConfig, call_backend: CallBackend, store: JudgingStore,
                 judge: Judge | None = None, promoter: Promoter | None = None) -> None:
        self.route, self.cfg = route, cfg
        self.candidate, self.incumbent = cfg.candidate, cfg.incumbent
        self._call, self._store, self._judge, self._promoter = call_backend, store, judge, promoter
        self._slots: asyncio.Semaphore | None = None  # made on first use, on the loop that runs the mirrors
        self._tasks: set[asyncio.Task] = set()  # references, so running mirrors are not garbage-collected
        self.pending = 0
        self.mirrored = self.dropped = self.stored = self.judged = 0

    def offer(self, request_id: str, body: dict, live_backend: str, live: Answer) -> asyncio.Task | None:
        """Called on the event loop after the client's request finished; the mirror's task, or None when the
        request is not mirrored (not picked, not a chat request, no pair) or is dropped for overload."""
        other = {self.candidate: self.incumbent, self.incumbent: self.candidate}.get(live_backend)
        if (other is None or live.error is not None or not isinstance(body.get("messages"), list)
                or not mirrored(request_id, self.cfg.percent)):
            return None
        if self.pending >= self.cfg.max_concurrency + self.cfg.max_queue:
            self.dropped += 1
            return None
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.cfg.max_concurrency)
        self.pending += 1
        self.mirrored += 1
        epoch = None if self._promoter is None else self._promoter.epoch  # the step this request was served at
        task = asyncio.get_running_loop().create_task(
            self._mirror(request_id, body, live_backend, live, other, datetime.now(UTC), epoch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _mirror(self, request_id: str, body: dict, live_backend: str, live: Answer, other: str,
                      client_done_at: datetime, epoch: int | None) -> None:
        assert self._slots is not None
        try:
            async with self._slots:
                shadow = await self._call(other, {k: v for k, v in body.items()
                                                  if k not in ("stream", "stream_options")})
                if other == self.candidate and self._promoter is not None:
                    self._promoter.record_call(other, shadow.error is None, shadow.latency_s, epoch)
                cand, inc = (shadow, live) if other == self.candidate else (live, shadow)
                pair_id = await asyncio.to_thread(  # scrubbing and the write stay off the clients' event loop
                    self._store_pair, request_id, client_done_at, body["messages"], live_backend, cand, inc)
                self.stored += 1
                if self._judge is None or cand.error is not None or inc.error is not None:
                    return
                verdict = await self._judge.compare(pair_id, body["messages"], cand.text, inc.text)
                await asyncio.to_thread(self._store.set_verdict, pair_id, verdict)
                self.judged += 1
                if self._promoter is not None:
                    self._promoter.record_verdict(verdict.outcome, verdict.flipped, epoch)
        except Exception:  # a broken mirror must never reach the client's path or stop later mirrors
            log.exception("shadow mirror for request %s on route %s failed", request_id, self.route)
        finally:
            self.pending -= 1

    def _store_pair(self, request_id: str, client_done_at: datetime, messages: list[dict], live_backend: str,
                    cand: Answer, inc: Answer) -> str:
        """Scrub both answers and the request as the request log does, then write the pair (in a worker thread)."""
        def scrubbed(a: Answer) -> Answer:
            return Answer(scrub(a.text, private_ips=True)[0], a.finish_reason, a.latency_s, a.error)

        return self._store.add_pair(request_id, self.route, client_done_at, scrub_messages(messages), live_backend,
                                    (self.candidate, scrubbed(cand)), (self.incumbent, scrubbed(inc)),
                                    signals(cand, inc))

    def counters(self) -> dict[str, int]:
        return {"mirrored": self.mirrored, "dropped": self.dropped, "stored": self.stored, "judged": self.judged,
                "pending": self.pending}
