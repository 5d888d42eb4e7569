"""A per-backend circuit breaker: stop sending traffic to a backend that keeps failing, and find out cheaply
when it is back.

closed: every request may go. `failures` consecutive backend failures → open: no request goes until
`cooldown_s` has passed → half-open: exactly one probe goes (others keep skipping the backend); the probe's
success → closed, its failure → open for another cooldown. Only failures that are the backend's fault count
(connection, timeout, 5xx, 429, garbage); a client's bad request does not. The clock is injectable so tests
assert on states instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self.probing = False
        self.opened_count = 0

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return State.CLOSED
        if self.clock() - self.opened_at >= self.cooldown_s:
            return State.HALF_OPEN
        return State.OPEN

    def allow(self) -> bool:
        """May a request go now? In half-open, True once (the probe) until that probe reports back."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.probing = False

    def failure(self) -> None:
        self.consecutive += 1
        if self.probing or (self.opened_at is None and self.consecutive >= self.threshold):
            self.opened_at = self.clock()
            self.opened_count += 1
        self.probing = False

    def release(self) -> None:
        """The request that was let through ended without a verdict on the backend (the client's own error):
        a half-open breaker may probe again."""
        self.probing = False
