"""`homegrown gateway report`: the switch-over in one page — Markdown + PNG charts + JSON, from the gateway's database.

It answers what a team deciding on the switch-over asks: how much traffic does the in-house model take now and
how did that change (with every promotion and rollback marked), does it answer as well as the provider (judged
win rate with its Wilson interval, per step of the ladder, and the cheap signals), how fast is it, and what does
the current split cost per 1,000 requests against sending everything to the provider.

Costs are the request log's (the gateway prices each request by its backend's `price:`), so the savings line is
"mean cost per request of each backend × the route's current split" against "mean cost per request of the
incumbent × 1,000" — an estimate that assumes the requests the split moves cost what the logged ones did.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from homegrown.errors import HomegrownError
from homegrown.gateway.config import GatewayConfig
from homegrown.gateway.judging_store import ShadowPairRow, StoredDecision, utc
from homegrown.gateway.stats import WinRate, percentile
from homegrown.io import atomic_path, write_json_atomic, write_text_atomic
from homegrown.progress import console

REPORT_MD, REPORT_JSON = "gateway_report.md", "gateway_report.json"
SHARE_PNG, WIN_PNG, LATENCY_PNG, COST_PNG = ("gateway_share.png", "gateway_winrate.png", "gateway_latency.png",
                                             "gateway_cost.png")
TIME_BINS = 20


@dataclass(frozen=True)
class RoutePair:
    """A shadowed route: its candidate (in-house) and incumbent (provider) backends."""

    route: str
    candidate: str
    incumbent: str


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def share_over_time(records: Sequence[Any], route: str, bins: int = TIME_BINS) -> dict[str, Any]:
    """Per time bin (equal spans between the first and last request), each backend's share of answered requests."""
    rs = [r for r in records if r.route == route and r.backend]
    if not rs:
        return {"edges": [], "shares": {}}
    t0, t1 = rs[0].created_at.timestamp(), rs[-1].created_at.timestamp()
    width = max(t1 - t0, 1e-9) / bins
    counts: list[dict[str, int]] = [defaultdict(int) for _ in range(bins)]
    for r in rs:
        counts[min(int((r.created_at.timestamp() - t0) / width), bins - 1)][r.backend] += 1
    backends = sorted({r.backend for r in rs})
    shares = {b: [c[b] / sum(c.values()) if c else None for c in counts] for b in backends}
    return {"edges": [t0 + i * width for i in range(bins + 1)], "shares": shares}


def route_costs(records: Sequence[Any], pair: RoutePair, candidate_percent: float) -> dict[str, Any]:
    """Mean cost per request of each side, the current split's cost per 1,000 and the all-provider one."""
    per: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.route == pair.route and r.backend and r.ok:
            per[r.backend].append(r.cost_usd)
    mean = {b: sum(v) / len(v) for b, v in per.items() if v}
    inc, cand = mean.get(pair.incumbent), mean.get(pair.candidate)
    out: dict[str, Any] = {"mean_cost_per_request": mean, "candidate_percent": candidate_percent,
                           "per_1k_current": None, "per_1k_all_provider": None, "saving_per_1k": None}
    if inc is not None:
        out["per_1k_all_provider"] = 1000 * inc
        if cand is not None or candidate_percent == 0:
            share = candidate_percent / 100
            out["per_1k_current"] = 1000 * ((1 - share) * inc + share * (cand or 0.0))
            out["saving_per_1k"] = out["per_1k_all_provider"] - out["per_1k_current"]
    return out


def latency_by_backend(records: Sequence[Any], route: str) -> dict[str, dict[str, float | None]]:
    lat: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.route == route and r.backend and r.ok:
            lat[r.backend].append(r.latency_s)
    return {b: {"requests": len(v), "p50_s": percentile(v, 50), "p95_s": percentile(v, 95)}
            for b, v in sorted(lat.items())}


def pair_summary(pairs: Sequence[ShadowPairRow], confidence: float = 0.95) -> dict[str, Any]:
    """Outcome counts, the win rate with its interval, and the signal rates of both sides."""
    outcomes: dict[str, int] = defaultdict(int)
    flags: dict[str, int] = defaultdict(int)
    flips = 0
    for p in pairs:
        outcomes[p.outcome or "unjudged"] += 1
        if p.verdict and json.loads(p.verdict).get("flipped"):
            flips += 1
        for k, v in json.loads(p.signals).items():
            if isinstance(v, bool) and v:
                flags[k] += 1
    win = WinRate(outcomes["win"], outcomes["tie"], outcomes["loss"], confidence)
    n = len(pairs)
    return {"pairs": n, "outcomes": dict(outcomes), "flips": flips, "win": win.as_dict(),
            "signal_rates": {k: flags[k] / n for k in sorted(flags)} if n else {}}


def plot_share(data: dict[str, dict[str, Any]], decisions: dict[str, list[StoredDecision]], out: Path) -> None:
    routes = list(data)
    fig, axes = plt.subplots(len(routes), 1, figsize=(9, 3.2 * len(routes)), squeeze=False)
    for ax, route in zip(axes[:, 0], routes, strict=True):
        d = data[route]
        if d["edges"]:
            t0 = d["edges"][0]
            mids = [((a + b) / 2 - t0) / 60 for a, b in zip(d["edges"], d["edges"][1:], strict=False)]
            for backend, shares in d["shares"].items():
                pts = [(m, 100 * s) for m, s in zip(mids, shares, strict=True) if s is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=backend)
            for dec in decisions.get(route, []):
                if dec.action != "hold":
                    x = (dec.at.timestamp() - t0) / 60
                    ax.axvline(x, color="green" if dec.action == "promote" else "red", ls="--", lw=0.8)
                    ax.annotate(f"{dec.to_percent:g}%", (x, 102), fontsize=7, ha="center")
        ax.set(title=f"{route}: share of answered requests (dashed: promote green, rollback red)",
               xlabel="minutes since the first logged request", ylabel="% of requests", ylim=(0, 110))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)


def plot_winrate(decisions: dict[str, list[StoredDecision]], overall: dict[str, dict[str, Any]],
                 thresholds: dict[str, float], out: Path) -> None:
    """Per route: the win rate and its interval at every decision that moved the ladder, then overall."""
    routes = list(overall)
    fig, axes = plt.subplots(1, len(routes), figsize=(max(6, 5 * len(routes)), 4), squeeze=False)
    for ax, route in zip(axes[0], routes, strict=True):
        labels, rates, lows, highs = [], [], [], []
        for dec in decisions.get(route, []):
            w = dec.evidence.get("win", {})
            if dec.action != "hold" and w.get("win_rate") is not None:
                labels.append(f"{dec.from_percent:g}→{dec.to_percent:g}%")
                rates.append(w["win_rate"])
                lows.append(w["low"])
                highs.append(w["high"])
        w = overall[route]["win"]
        if w["win_rate"] is not None:
            labels.append("all pairs")
            rates.append(w["win_rate"])
            lows.append(w["low"])
            highs.append(w["high"])
        xs = range(len(labels))
        ax.errorbar(xs, rates, yerr=[[r - lo for r, lo in zip(rates, lows, strict=True)],
                                     [hi - r for r, hi in zip(rates, highs, strict=True)]], fmt="o", capsize=4)
        if route in thresholds:
            ax.axhline(thresholds[route], color="black", ls="--", lw=1, label=f"threshold {thresholds[route]}")
            ax.legend(fontsize=8)
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set_xticks(list(xs), labels, fontsize=7, rotation=30)
        ax.set_xlim(-0.5, max(len(labels), 2) - 0.5)
        ax.set(title=f"{route}: candidate win rate (ties ½), 95% Wilson", ylim=(0, 1), ylabel="win rate")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, out)


def plot_latency(latency: dict[str, dict[str, dict[str, float | None]]], out: Path) -> None:
    labels, p50, p95 = [], [], []
    for route, backends in latency.items():
        for b, s in backends.items():
            labels.append(f"{route}\n{b}")
            p50.append(1000 * (s["p50_s"] or 0))
            p95.append(1000 * (s["p95_s"] or 0))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p95, 0.4, label="p95")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set(title="client latency per backend (answered requests)", ylabel="ms")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, out)


def plot_cost(costs: dict[str, dict[str, Any]], out: Path) -> None:
    labels, values = [], []
    for route, c in costs.items():
        for name, key in (("all provider", "per_1k_all_provider"), ("current split", "per_1k_current")):
            if c[key] is not None:
                labels.append(f"{route}\n{name}\n({c['candidate_percent']:g}% in-house)" if key == "per_1k_current"
                              else f"{route}\n{name}")
                values.append(c[key])
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(labels)), 4))
    ax.bar(range(len(labels)), values, color=["#cc6677" if "provider" in lab else "#4477aa" for lab in labels])
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set(title="cost per 1,000 requests (logged costs)", ylabel="USD")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, out)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _usd(x: float | None) -> str:
    return "—" if x is None else f"${x:.4f}"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{1000 * x:.0f}"


def build_report(records: Sequence[Any], pairs: Sequence[ShadowPairRow], decisions: Sequence[StoredDecision],
                 routes: Sequence[RoutePair], out_dir: Path, thresholds: dict[str, float] | None = None,
                 shares_now: dict[str, float] | None = None) -> Path:
    """Write the Markdown, JSON and PNGs into `out_dir`; returns the Markdown's path.

    `shares_now`: the candidate's current percent per route (the newest decision, else the observed share).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    thresholds = thresholds or {}
    names = [p.route for p in routes]
    by_route = {n: [d for d in decisions if d.route == n] for n in names}
    summary = {n: pair_summary([p for p in pairs if p.route == n]) for n in names}
    shares = {n: share_over_time(records, n) for n in names}
    latency = {n: latency_by_backend(records, n) for n in names}
    now_percent: dict[str, float] = {}
    for p in routes:
        if shares_now and p.route in shares_now:
            now_percent[p.route] = shares_now[p.route]
        elif by_route[p.route]:
            now_percent[p.route] = by_route[p.route][-1].to_percent
        else:
            answered = [r for r in records if r.route == p.route and r.backend]
            now_percent[p.route] = (100 * sum(r.backend == p.candidate for r in answered) / len(answered)
                                    if answered else 0.0)
    costs = {p.route: route_costs(records, p, now_percent[p.route]) for p in routes}
    plot_share(shares, by_route, out_dir / SHARE_PNG)
    plot_winrate(by_route, summary, thresholds, out_dir / WIN_PNG)
    plot_latency(latency, out_dir / LATENCY_PNG)
    plot_cost(costs, out_dir / COST_PNG)
    write_json_atomic(out_dir / REPORT_JSON, {
        "routes": {p.route: {"candidate": p.candidate, "incumbent": p.incumbent, "candidate_percent_now":
                             now_percent[p.route], "judging": summary[p.route], "latency": latency[p.route],
                             "cost": costs[p.route], "share_over_time": shares[p.route],
                             "decisions": [{"at": d.at.isoformat(), "action": d.action, "from_percent": d.from_percent,
                                            "to_percent": d.to_percent, "reasons": d.reasons, "evidence": d.evidence}
                                           for d in by_route[p.route]]} for p in routes},
        "requests": len(records), "pairs": len(pairs),
        "charts": [SHARE_PNG, WIN_PNG, LATENCY_PNG, COST_PNG]})
    md = out_dir / REPORT_MD
    write_text_atomic(md, _markdown(routes, summary, latency, costs, by_route, now_percent, records, thresholds))
    console.print(f"gateway report: {md}")
    return md


def _markdown(routes: Sequence[RoutePair], summary: dict, latency: dict, costs: dict,
              by_route: dict[str, list[StoredDecision]], now_percent: dict[str, float], records: Sequence[Any],
              thresholds: dict[str, float]) -> str:
    first = min((r.created_at for r in records), default=None)
    last = max((r.created_at for r in records), default=None)
    span = f"{_when(first)} – {_when(last)}" if first and last else "no logged requests"
    lines = ["# Gateway report: provider → in-house", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `homegrown gateway report` from "
             f"{len(records)} logged requests ({span}). Every figure is also in `{REPORT_JSON}`.", ""]
    for p in routes:
        s, c = summary[p.route], costs[p.route]
        w = s["win"]
        lines += [f"## Route `{p.route}`: `{p.candidate}` (in-house) vs `{p.incumbent}` (provider)", "",
                  f"**Now {now_percent[p.route]:g}% in-house.** "
                  + (f"Cost per 1,000 requests: {_usd(c['per_1k_current'])} at this split vs "
                     f"{_usd(c['per_1k_all_provider'])} all-provider — saving {_usd(c['saving_per_1k'])} per "
                     "1,000 requests." if c["saving_per_1k"] is not None else
                     "Not enough priced requests of both backends for a cost comparison yet."), "",
                  "### Judged answers (shadow pairs)", "",
                  "| pairs | win | tie | loss | flips (→ tie) | unparseable | judge errors | unjudged | win rate | "
                  "95% Wilson interval |", "|" + "---:|" * 10,
                  f"| {s['pairs']} | {w['wins']} | {w['ties']} | {w['losses']} | {s['flips']} | "
                  f"{s['outcomes'].get('unparseable', 0)} | {s['outcomes'].get('error', 0)} | "
                  f"{s['outcomes'].get('unjudged', 0)} | {_pct(w['win_rate'])} | "
                  f"[{_pct(w['low'])}, {_pct(w['high'])}] |", ""]
        if s["signal_rates"]:
            lines += ["Cheap signals (share of pairs): " + ", ".join(f"{k.replace('_', ' ')} {_pct(v)}"
                                                                     for k, v in s["signal_rates"].items()), ""]
        lines += ["### Latency and cost per backend (answered requests)", "",
                  "| backend | requests | p50 ms | p95 ms | mean cost / request |", "|---|---:|---:|---:|---:|"]
        for b, lat in latency[p.route].items():
            lines.append(f"| {b} | {lat['requests']} | {_ms(lat['p50_s'])} | {_ms(lat['p95_s'])} | "
                         f"{_usd(c['mean_cost_per_request'].get(b))} |")
        moves = [d for d in by_route[p.route] if d.action != "hold"]
        lines += ["", f"### Ladder decisions ({len(moves)} step changes, "
                      f"{len(by_route[p.route]) - len(moves)} holds; threshold {thresholds.get(p.route, '—')})", ""]
        if moves:
            lines += ["| when | action | from → to | win rate [interval] | judged | candidate calls | errors | "
                      "p95 ms | reasons |", "|---|---|---|---|---:|---:|---:|---:|---|"]
            for d in moves:
                e, dw = d.evidence, d.evidence.get("win", {})
                lines.append(f"| {_when(d.at)} | {d.action} | {d.from_percent:g}% → {d.to_percent:g}% | "
                             f"{_pct(dw.get('win_rate'))} [{_pct(dw.get('low'))}, {_pct(dw.get('high'))}] | "
                             f"{dw.get('judged', 0)} | {e.get('requests', 0)} | {e.get('errors', 0)} | "
                             f"{_ms(e.get('p95_latency_s'))} | {'; '.join(d.reasons)} |")
        else:
            lines.append("No step changes yet.")
        lines.append("")
    lines += ["## Charts", "", f"![traffic share]({SHARE_PNG})", f"![win rate]({WIN_PNG})",
              f"![latency]({LATENCY_PNG})", f"![cost]({COST_PNG})", "", "## How to read this", "",
              "- **Win rate** is the candidate's against the incumbent on the same requests: (wins + ties/2) / "
              "judged. Each pair is judged in both orders; a verdict that changes with the order counts as a tie "
              "(a *flip*); a judge reply without a clear verdict is *unparseable* and left out, never guessed.",
              "- The **interval** is Wilson's score interval at 95%: the ladder steps up only when its lower end "
              "clears the threshold, and back when its upper end falls below it (or errors / p95 latency break "
              "their limits).",
              "- **Cost** is what the gateway logged per request from each backend's `price:`; the saving "
              "assumes moved requests cost what logged ones did.", ""]
    return "\n".join(lines)


def _when(t: datetime) -> str:
    return utc(t).strftime("%Y-%m-%d %H:%M:%S")


def report_from_db(cfg: GatewayConfig, out_dir: Path, db_url: str | None = None,
                   since_hours: float | None = None) -> Path:
    """`homegrown gateway report`: every shadowed route of `cfg`, from the gateway's database."""
    from datetime import UTC, timedelta

    from homegrown.gateway.judging_store import JudgingStore
    from homegrown.gateway.store import RequestLog

    pairs_cfg = [RoutePair(name, rc.shadow.candidate, rc.shadow.incumbent)
                 for name, rc in cfg.routes.items() if rc.shadow is not None]
    if not pairs_cfg:
        raise HomegrownError("no route has a shadow: section (candidate, incumbent), so there is no switch-over to "
                             "report on; `homegrown gateway status` shows plain accounting")
    thresholds = {name: rc.promotion.threshold for name, rc in cfg.routes.items() if rc.promotion is not None}
    log = RequestLog(db_url or cfg.log.db_url)
    try:
        since = datetime.now(UTC) - timedelta(hours=since_hours) if since_hours else None
        records = log.records(since=since)
        store = JudgingStore(log.engine)
        pairs = [p for p in store.pairs() if since is None or utc(p.stored_at) >= since]
        decisions = [d for d in store.decisions() if since is None or d.at >= since]
    finally:
        log.close()
    return build_report(records, pairs, decisions, pairs_cfg, out_dir, thresholds)
