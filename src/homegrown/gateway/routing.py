"""Routes: which backend a request tries first, and which ones after it.

The first attempt is drawn by weight. A request with a sticky key (the `X-Conversation-Id` header, else the
body's `user`) hashes it with the route's name to a point u in [0, 1) and takes the backend whose share of the
cumulative weights (in the order the config lists them) covers u: the same conversation always lands on the
same backend, and when promotion raises one backend's share only the users between the old and the new
boundary move — towards the backend that grew, never back and forth. A request without one takes smooth
weighted round-robin (nginx's), so shares are exact over any window, not merely in expectation.

After the first attempt come the route's `fallback` backends (default: its other backends in listed order).
"""

from __future__ import annotations

import hashlib

from homegrown.errors import HomegrownError
from homegrown.gateway.config import RouteConfig


def sticky_point(route: str, key: str) -> float:
    digest = hashlib.sha256(f"{route}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sticky_hash(key: str) -> str:
    """What the request log keeps of a sticky key (which may be a user id): a digest, not the id."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Route:
    def __init__(self, name: str, cfg: RouteConfig, known: set[str]) -> None:
        self.name, self.cfg, self.known = name, cfg, known
        self.fallback = list(cfg.fallback) if cfg.fallback is not None else [b.backend for b in cfg.backends]
        self.weights: dict[str, float] = {}
        self._current: dict[str, float] = {}
        self.set_weights({b.backend: b.weight for b in cfg.backends})

    def set_weights(self, weights: dict[str, float]) -> None:
        """Replace the split (any non-negative numbers; they are normalised). Order is kept for backends
        already in the route, new ones go last, so sticky users move only as far as the shares changed."""
        unknown = set(weights) - self.known
        if unknown:
            raise HomegrownError(f"route {self.name!r}: unknown backend(s) {sorted(unknown)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise HomegrownError(f"route {self.name!r}: weights must be >= 0 with at least one above 0: {weights}")
        ordered = [n for n in self.weights if n in weights] + [n for n in weights if n not in self.weights]
        self.weights = {n: float(weights[n]) for n in ordered}
        self._current = {n: 0.0 for n in ordered}

    def shares(self) -> dict[str, float]:
        total = sum(self.weights.values())
        return {n: w / total for n, w in self.weights.items()}

    def choose(self, sticky_key: str | None) -> str:
        live = {n: w for n, w in self.weights.items() if w > 0}
        if sticky_key is not None and self.cfg.sticky:
            u, total, acc = sticky_point(self.name, sticky_key), sum(live.values()), 0.0
            for name, w in live.items():
                acc += w / total
                if u < acc:
                    return name
            return next(reversed(live))
        total = sum(live.values())
        for name, w in live.items():
            self._current[name] += w
        best = max(live, key=lambda n: self._current[n])
        self._current[best] -= total
        return best

    def order(self, sticky_key: str | None) -> list[str]:
        first = self.choose(sticky_key)
        rest = [n for n in self.fallback if n != first]
        return [first, *dict.fromkeys(rest)]
