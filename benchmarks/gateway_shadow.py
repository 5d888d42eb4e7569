"""Claim: shadowing does not change the client's latency — the same requests through a gateway that mirrors every
one of them to a candidate (and has each pair judged) and through one that does not, in the same run.

Two `homegrown gateway` processes with identical backends (the tests' stub provider as incumbent and as
candidate, the tests' stub judge): `plain` serves route `bench` from the incumbent only, `shadow` serves it from
the incumbent too but mirrors 100 % of finished requests to the candidate and asks the judge about every pair
(both orders), storing pairs and verdicts in its SQLite next to the request log. Rounds alternate plain / shadow,
and before each round the shadow gateway's mirrors in flight are drained, so one round's background work does not
land on the other's clock. Mirrors beyond the shadow's bounded queue are dropped (and counted, printed below):
at 64 clients that is the shadow giving way to traffic, as designed.

    python benchmarks/gateway_shadow.py                          # 1 and 64 clients, 400 requests per setting
    python benchmarks/gateway_shadow.py --requests 64 --rounds 1 # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from gateway_overhead import measure, start_stub

from homegrown.serve.launch import ServerProcess, launch_command

JUDGE = Path(__file__).resolve().parents[1] / "tests" / "gateway" / "stub_llm.py"


def start_judge() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(JUDGE), "--role", "judge"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening "):
        raise SystemExit(f"the stub judge did not start: {line!r}")
    url = line.split()[1]
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, f"{url}/v1"
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("the stub judge never answered /health")


def start_gateway(work: Path, name: str, incumbent: str, candidate: str, judge: str, shadow: bool) -> ServerProcess:
    route: dict = {"backends": [{"backend": "provider", "weight": 100}, {"backend": "inhouse", "weight": 0}]}
    if shadow:
        route["shadow"] = {"candidate": "inhouse", "incumbent": "provider", "percent": 100, "max_concurrency": 4,
                           "max_queue": 64}
    config = {"backends": {"provider": {"base_url": incumbent, "model": "bench", "max_concurrency": 256},
                           "inhouse": {"base_url": candidate, "model": "bench", "max_concurrency": 256},
                           "judge": {"base_url": judge, "model": "judge", "max_concurrency": 64}},
              "routes": {"bench": route}, "judge": {"backend": "judge"},
              "log": {"db_url": f"sqlite:///{work / f'{name}.sqlite'}"}}
    (work / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return launch_command(["gateway", "--config", str(work / f"{name}.yaml"), "--port", "0"],
                          log=work / f"{name}.log", env={**os.environ})


def shadow_counters(gw: ServerProcess) -> dict:
    return httpx.get(f"{gw.base_url}/gateway/state", timeout=10).json()["judging"]["bench"]["shadow"]


def drain(gw: ServerProcess) -> None:
    while shadow_counters(gw)["pending"]:
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,64")
    parser.add_argument("--requests", type=int, default=400, help="per setting and round (split over clients)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway-shadow-bench-"))
    incumbent_proc, incumbent = start_stub(work)
    candidate_proc, candidate = start_stub(work)
    judge_proc, judge = start_judge()
    gateways = {"plain": start_gateway(work, "plain", incumbent, candidate, judge, shadow=False),
                "shadow": start_gateway(work, "shadow", incumbent, candidate, judge, shadow=True)}
    try:
        print(f"loadavg {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (figures from a loaded machine are noise)")
        print(f"{'clients':>7} {'mode':<5} {'gateway':<7} {'p50_ms':>8} {'p99_ms':>8} {'+p50_ms':>8} {'+p99_ms':>8}")
        for clients in (int(c) for c in args.clients.split(",")):
            for stream in (False, True):
                lat: dict[str, list[float]] = {name: [] for name in gateways}
                for _ in range(args.rounds):
                    for name, gw in gateways.items():
                        drain(gateways["shadow"])
                        base = f"{gw.base_url}/v1"
                        asyncio.run(measure(base, clients, min(clients, args.requests), stream))  # warm-up
                        lat[name] += asyncio.run(measure(base, clients, args.requests, stream))
                ref = np.percentile(lat["plain"], [50, 99]) * 1000
                for name, values in lat.items():
                    p50, p99 = np.percentile(values, [50, 99]) * 1000
                    extra = "" if name == "plain" else f"{p50 - ref[0]:>8.2f} {p99 - ref[1]:>8.2f}"
                    print(f"{clients:>7} {'ttft' if stream else 'e2e':<5} {name:<7} {p50:>8.2f} {p99:>8.2f} {extra}",
                          flush=True)
        drain(gateways["shadow"])
        c = shadow_counters(gateways["shadow"])
        print(f"shadow: {c['mirrored']} mirrored, {c['dropped']} dropped (queue full), {c['stored']} pairs stored, "
              f"{c['judged']} judged")
    finally:
        for gw in gateways.values():
            gw.stop()
        for proc in (incumbent_proc, candidate_proc, judge_proc):
            proc.kill()


if __name__ == "__main__":
    main()
