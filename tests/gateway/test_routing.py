"""Route choice: exact shares without a sticky key, stable and monotone sticky assignment with one."""

from __future__ import annotations

from collections import Counter

import pytest

from homegrown.errors import HomegrownError
from homegrown.gateway.config import RouteConfig
from homegrown.gateway.routing import Route


def route(weights: dict[str, float], **extra: object) -> Route:
    cfg = RouteConfig.model_validate({"backends": [{"backend": n, "weight": w} for n, w in weights.items()],
                                      **extra})
    return Route("r", cfg, {"a", "b", "c", "long"})


def test_round_robin_shares_are_exact_over_any_full_cycle() -> None:
    r = route({"a": 3, "b": 1})
    picks = [r.choose(None) for _ in range(1000)]
    assert Counter(picks) == {"a": 750, "b": 250}
    assert Counter(picks[:4]) == {"a": 3, "b": 1}  # interleaved, not 750 a's then 250 b's


def test_sticky_key_always_lands_on_the_same_backend() -> None:
    r = route({"a": 1, "b": 1})
    for user in ("alice", "bob", "carol"):
        assert len({r.choose(user) for _ in range(20)}) == 1


def test_raising_a_share_moves_sticky_users_only_towards_the_backend_that_grew() -> None:
    r = route({"a": 95, "b": 5})
    users = [f"user-{i}" for i in range(2000)]
    before = {u: r.choose(u) for u in users}
    r.set_weights({"a": 75, "b": 25})
    after = {u: r.choose(u) for u in users}
    moved = [u for u in users if before[u] != after[u]]
    assert moved and all(before[u] == "a" and after[u] == "b" for u in moved)
    assert abs(sum(v == "b" for v in after.values()) / len(users) - 0.25) < 0.03


def test_order_puts_the_chosen_backend_first_then_the_fallback_chain() -> None:
    r = route({"a": 1, "b": 0}, fallback=["b", "long"])
    assert r.order(None) == ["a", "b", "long"]
    assert route({"a": 1, "b": 1, "c": 1}).order("x")[1:] in (["b", "c"], ["a", "c"], ["a", "b"])


def test_set_weights_refuses_unknown_backends_and_all_zero() -> None:
    r = route({"a": 1})
    with pytest.raises(HomegrownError, match="unknown backend"):
        r.set_weights({"zzz": 1})
    with pytest.raises(HomegrownError, match="at least one above 0"):
        r.set_weights({"a": 0})
