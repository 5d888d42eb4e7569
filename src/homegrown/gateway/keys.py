"""Client keys: who may call the gateway, how often, and how many tokens they may spend.

Keys come from environment variables named in the config (never from the file itself). With no keys
configured the gateway is open. A request over its key's rate (requests per window) or token budget (tokens
per window, counted from the usage the backends report) gets a 429 in OpenAI's shape with a Retry-After saying
when the oldest use leaves the window. Windows slide and live in the gateway's memory: a restart forgets them.
"""

from __future__ import annotations

import hmac
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from homegrown.errors import HomegrownError
from homegrown.gateway.config import KeyConfig
from homegrown.serve.http_errors import APIError


@dataclass
class ClientKey:
    cfg: KeyConfig
    secret: bytes
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_total: int = 0

    @property
    def name(self) -> str:
        return self.cfg.name


class KeyRing:
    def __init__(self, keys: list[KeyConfig], env: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if env is None else env
        self.clock = clock
        self.keys: list[ClientKey] = []
        for k in keys:
            secret = env.get(k.key_env)
            if not secret:
                raise HomegrownError(f"client key {k.name!r}: the environment variable {k.key_env} is not set")
            self.keys.append(ClientKey(k, secret.encode()))

    def authenticate(self, authorization: str | None) -> ClientKey | None:
        """The caller's key from 'Authorization: Bearer KEY'; None when the gateway has no keys (open)."""
        if not self.keys:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() == "bearer":
            for key in self.keys:
                if hmac.compare_digest(given, key.secret):
                    return key
        raise APIError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
                       code="invalid_api_key")

    def admit(self, key: ClientKey | None) -> None:
        """Count one request against the key's rate, or refuse it (429) if over its rate or token budget."""
        if key is None:
            return
        now = self.clock()
        rate, budget = key.cfg.rate, key.cfg.budget
        if budget is not None:
            while key.tokens and key.tokens[0][0] <= now - budget.per_s:
                key.token_total -= key.tokens.popleft()[1]
            if key.token_total >= budget.tokens:
                wait = key.tokens[0][0] + budget.per_s - now
                raise _too_many(f"key {key.name!r} has used its token budget ({budget.tokens} tokens per "
                                f"{budget.per_s:g} s)", "token_budget_exceeded", wait)
        if rate is not None:
            while key.requests and key.requests[0] <= now - rate.per_s:
                key.requests.popleft()
            if len(key.requests) >= rate.requests:
                wait = key.requests[0] + rate.per_s - now
                raise _too_many(f"key {key.name!r} is over its rate ({rate.requests} requests per {rate.per_s:g} s)",
                                "rate_limit_exceeded", wait)
            key.requests.append(now)

    def charge(self, key: ClientKey | None, tokens: int) -> None:
        if key is not None and key.cfg.budget is not None and tokens > 0:
            key.tokens.append((self.clock(), tokens))
            key.token_total += tokens


def _too_many(message: str, code: str, wait_s: float) -> APIError:
    seconds = max(1, math.ceil(wait_s))
    return APIError(429, f"{message}; retry in {seconds} s", "rate_limit_error", code=code,
                    headers={"Retry-After": str(seconds)})
