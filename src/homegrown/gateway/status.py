"""`homegrown gateway status`: per route and backend, requests, errors, tokens, p50/p95 latency and cost from
the request log, plus the live breaker states and shares when the gateway answers at its configured address.

Opted-out keys leave no rows, so their traffic is only in the live `/metrics`, not here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from homegrown.gateway.accounting import summarise
from homegrown.gateway.config import GatewayConfig
from homegrown.gateway.store import RequestLog


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def status_lines(db_url: str, since_hours: float | None = None) -> list[str]:
    store = RequestLog(db_url)
    try:
        since = datetime.now(UTC) - timedelta(hours=since_hours) if since_hours else None
        pairs = summarise(store.records(since=since))
    finally:
        store.close()
    lines = [f"{'route':<16} {'backend':<16} {'requests':>8} {'errors':>6} {'tok_in':>9} {'tok_out':>9} "
             f"{'p50_ms':>7} {'p95_ms':>7} {'cost_usd':>10}"]
    for (route, backend), s in pairs.items():
        lines.append(f"{route:<16} {backend:<16} {s['requests']:>8} {s['errors']:>6} {s['prompt_tokens']:>9} "
                     f"{s['completion_tokens']:>9} {_ms(s['latency_p50_s']):>7} {_ms(s['latency_p95_s']):>7} "
                     f"{s['cost_usd']:>10.4f}")
    if not pairs:
        lines.append("(no logged requests)")
    return lines


def live_state(cfg: GatewayConfig, api_key: str | None = None) -> dict[str, Any] | None:
    """/gateway/state of the running gateway, or None when it does not answer."""
    host = "127.0.0.1" if cfg.listen.host in ("0.0.0.0", "::") else cfg.listen.host
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(f"http://{host}:{cfg.listen.port}/gateway/state", headers=headers, timeout=3)
    except httpx.TransportError:
        return None
    return r.json() if r.status_code == 200 else None


def live_lines(state: dict[str, Any]) -> list[str]:
    lines = ["live:"]
    for name, b in state["backends"].items():
        lines.append(f"  backend {name:<16} breaker {b['breaker']:<9} opened {b['opened']}x")
    for name, r in state["routes"].items():
        shares = ", ".join(f"{b} {s:.0%}" for b, s in r["shares"].items())
        lines.append(f"  route   {name:<16} {shares}; fallback {' → '.join(r['fallback'])}")
    return lines
