"""The judging part of `homegrown gateway status`: per shadowed route, the ladder step, the verdicts so far and the
newest promotion decisions with the evidence each was taken on."""

from __future__ import annotations

from homegrown.gateway.judging_store import JudgingStore
from homegrown.gateway.stats import WinRate


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def judging_lines(store: JudgingStore, last: int = 10) -> list[str]:
    """Lines for every route that has shadow pairs or decisions; none when nothing was shadowed."""
    decisions = store.decisions()
    routes = sorted({d.route for d in decisions} | {p.route for p in store.pairs()})
    lines: list[str] = []
    for route in routes:
        counts = store.outcome_counts(route)
        win = WinRate(counts.get("win", 0), counts.get("tie", 0), counts.get("loss", 0))
        lo, hi = win.interval
        mine = [d for d in decisions if d.route == route]
        step = f"{mine[-1].to_percent:g}% in-house (ladder step {mine[-1].to_step})" if mine else "no decision yet"
        lines += [f"judging route {route}: {step}",
                  f"  shadow pairs {sum(counts.values())}: win {win.wins}, tie {win.ties}, loss {win.losses}, "
                  f"unparseable {counts.get('unparseable', 0)}, judge errors {counts.get('error', 0)}, "
                  f"unjudged {counts.get('unjudged', 0)}; win rate {_pct(win.rate)} "
                  f"[{_pct(lo)}, {_pct(hi)}] (95% Wilson, ties half)"]
        if mine:
            lines.append(f"  decisions ({len(mine)}, newest {min(last, len(mine))}):")
        for d in mine[-last:]:
            w, e = d.evidence.get("win", {}), d.evidence
            p95 = e.get("p95_latency_s")
            lines.append(f"    {d.at:%Y-%m-%d %H:%M:%S} {d.action:<8} {d.from_percent:g}% -> {d.to_percent:g}%  "
                         f"win {_pct(w.get('win_rate'))} [{_pct(w.get('low'))}, {_pct(w.get('high'))}] "
                         f"judged {w.get('judged', 0)}  calls {e.get('requests', 0)} errors {e.get('errors', 0)} "
                         f"p95 {'-' if p95 is None else f'{p95 * 1000:.0f}ms'}  | {'; '.join(d.reasons)}")
    return lines


def live_judging_lines(state: dict) -> list[str]:
    """From a running gateway's /gateway/state: mirror counters and the ladder's current evidence per route."""
    lines = []
    for route, entry in (state.get("judging") or {}).items():
        c = entry["shadow"]
        lines.append(f"  shadow  {route:<16} mirrored {c['mirrored']}, dropped {c['dropped']} (queue full), "
                     f"pending {c['pending']}, stored {c['stored']}, judged {c['judged']}")
        promo = entry.get("promotion")
        if promo:
            e = promo["evidence"]
            w = e["win"]
            lines.append(f"  ladder  {route:<16} {promo['percent']:g}% in-house; evidence since the last step: "
                         f"win {w['wins']} tie {w['ties']} loss {w['losses']} [{_pct(w['low'])}, {_pct(w['high'])}], "
                         f"calls {e['requests']} errors {e['errors']}")
    return lines
