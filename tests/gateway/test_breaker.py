"""The circuit breaker's states on an injected clock: open after N failures, one probe after the cooldown."""

from __future__ import annotations

from homegrown.gateway.breaker import CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_closes_after_a_good_probe() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, cooldown_s=10, clock=clock)
    b.failure()
    b.failure()
    b.success()  # a success resets the count
    b.failure()
    b.failure()
    assert b.state is State.CLOSED and b.allow()
    b.failure()
    assert b.state is State.OPEN and not b.allow()
    clock.now = 10
    assert b.state is State.HALF_OPEN
    assert b.allow() and not b.allow()  # exactly one probe
    b.success()
    assert b.state is State.CLOSED and b.allow()


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=5, clock=clock)
    b.failure()
    clock.now = 5
    assert b.allow()
    b.failure()
    assert b.state is State.OPEN and b.opened_count == 2
    clock.now = 9
    assert b.state is State.OPEN
    clock.now = 10
    assert b.state is State.HALF_OPEN


def test_a_probe_ended_by_the_clients_own_error_lets_another_probe_go() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=1, clock=clock)
    b.failure()
    clock.now = 1
    assert b.allow()
    b.release()
    assert b.allow()
