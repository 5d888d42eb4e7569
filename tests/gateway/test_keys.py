"""Client keys: authentication, sliding request rate and token budget, on an injected clock."""

from __future__ import annotations

import pytest

from homegrown.errors import HomegrownError
from homegrown.gateway.config import KeyConfig
from homegrown.gateway.keys import KeyRing
from homegrown.serve.http_errors import APIError


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def ring(clock: Clock, **cfg: object) -> KeyRing:
    return KeyRing([KeyConfig.model_validate({"name": "app", "key_env": "K", **cfg})], {"K": "secret"}, clock)


def test_wrong_or_missing_key_is_401_and_no_keys_means_open() -> None:
    keys = ring(Clock())
    assert keys.authenticate("Bearer secret").name == "app"
    for header in (None, "Bearer nope", "secret"):
        with pytest.raises(APIError) as e:
            keys.authenticate(header)
        assert e.value.status == 401
    assert KeyRing([], {}).authenticate(None) is None


def test_rate_window_slides_and_says_when_to_retry() -> None:
    clock = Clock()
    keys = ring(clock, rate={"requests": 2, "per_s": 10})
    key = keys.authenticate("Bearer secret")
    keys.admit(key)
    clock.now = 4
    keys.admit(key)
    with pytest.raises(APIError) as e:
        keys.admit(key)
    assert (e.value.status, e.value.code, e.value.headers) == (429, "rate_limit_exceeded", {"Retry-After": "6"})
    clock.now = 10  # the first request left the window
    keys.admit(key)


def test_token_budget_refuses_once_spent_until_the_spending_leaves_the_window() -> None:
    clock = Clock()
    keys = ring(clock, budget={"tokens": 100, "per_s": 60})
    key = keys.authenticate("Bearer secret")
    keys.admit(key)
    keys.charge(key, 120)
    with pytest.raises(APIError) as e:
        keys.admit(key)
    assert e.value.code == "token_budget_exceeded"
    clock.now = 60
    keys.admit(key)


def test_a_key_whose_variable_is_unset_is_a_clear_error() -> None:
    with pytest.raises(HomegrownError, match="environment variable K"):
        KeyRing([KeyConfig(name="app", key_env="K")], {})
