"""Claim: the gateway adds little per request — measured as the latency of the same requests sent to a backend
directly and through `homegrown gateway`, in the same run, at 1 and 64 concurrent clients.

The backend is the tests' OpenAI-compatible stub provider (tests/gateway/stub_provider.py: a fixed 3-word reply,
no model), so the backend's own time is small and the difference is the gateway's: parsing, routing, the
second HTTP hop, accounting and the request log (SQLite, scrubbed texts) all included. Non-streaming: end-to-end
latency; streaming: time to first content token. Rounds alternate direct / gateway so drift in the machine's
load hits both. With --litellm BIN (a `litellm` proxy executable), LiteLLM's proxy is measured the same way on
the same backend.

    python benchmarks/gateway_overhead.py                      # 1 and 64 clients, 400 requests per setting
    python benchmarks/gateway_overhead.py --requests 64 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from homegrown.serve.launch import launch_command

STUB = Path(__file__).resolve().parents[1] / "tests" / "gateway" / "stub_provider.py"
LITELLM_KEY = "sk-gateway-bench-0123456789abcdef0123456789abcdef"
"""LiteLLM's proxy refuses to start without a master key; every target is sent it (the others ignore it)."""
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Why is the sky blue? Answer briefly."}]}


def wait_healthy(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become healthy")


def start_stub(work: Path) -> tuple[subprocess.Popen, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with (work / "stub.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, str(STUB), "--name", "bench", "--fd", str(sock.fileno())],
                                pass_fds=[sock.fileno()], stdout=log, stderr=subprocess.STDOUT)
    sock.close()
    wait_healthy(f"{url}/health")
    return proc, f"{url}/v1"


def start_litellm(binary: str, backend: str, work: Path) -> tuple[subprocess.Popen, str]:
    config = {"model_list": [{"model_name": "bench", "litellm_params": {"model": "openai/bench", "api_base": backend,
                                                                       "api_key": "none"}}],
              "general_settings": {"master_key": LITELLM_KEY}}
    (work / "litellm.yaml").write_text(yaml.safe_dump(config))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # litellm takes a port number only; a race with another process is possible but harmless here
    with (work / "litellm.log").open("w") as log:
        proc = subprocess.Popen([binary, "--config", str(work / "litellm.yaml"), "--port", str(port),
                                 "--num_workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    wait_healthy(f"http://127.0.0.1:{port}/health/liveliness", timeout=300)
    return proc, f"http://127.0.0.1:{port}/v1"


async def one(client: httpx.AsyncClient, base: str, stream: bool) -> float:
    start = time.perf_counter()
    if not stream:
        r = await client.post(f"{base}/chat/completions", json=BODY)
        r.raise_for_status()
        return time.perf_counter() - start
    async with client.stream("POST", f"{base}/chat/completions", json={**BODY, "stream": True}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                    return time.perf_counter() - start
    raise RuntimeError("stream ended without a token")


async def measure(base: str, clients: int, requests: int, stream: bool) -> list[float]:
    out: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits,
                                 headers={"Authorization": f"Bearer {LITELLM_KEY}"}) as client:
        async def worker(n: int) -> None:
            for _ in range(n):
                out.append(await one(client, base, stream))
        await asyncio.gather(*(worker(requests // clients) for _ in range(clients)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,64")
    parser.add_argument("--requests", type=int, default=400, help="per setting and round (split over clients)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--litellm", help="a `litellm` executable, to measure its proxy side by side")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    stub, direct = start_stub(work)
    config = {"backends": {"stub": {"base_url": direct, "model": "bench", "max_concurrency": 256}},
              "routes": {"bench": {"backends": [{"backend": "stub"}]}},
              "log": {"db_url": f"sqlite:///{work / 'gateway.sqlite'}"}}
    (work / "gateway.yaml").write_text(yaml.safe_dump(config))
    gateway = launch_command(["gateway", "--config", str(work / "gateway.yaml"), "--port", "0"],
                             log=work / "gateway.log", env={**os.environ})
    targets = {"direct": direct, "gateway": f"{gateway.base_url}/v1"}
    litellm = None
    if args.litellm:
        litellm, targets["litellm"] = start_litellm(args.litellm, direct, work)
    try:
        print(f"loadavg {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (figures from a loaded machine are noise)")
        print(f"{'clients':>7} {'mode':<10} {'target':<8} {'p50_ms':>8} {'p99_ms':>8} {'+p50_ms':>8} {'+p99_ms':>8}")
        for clients in (int(c) for c in args.clients.split(",")):
            for stream in (False, True):
                lat: dict[str, list[float]] = {t: [] for t in targets}
                for _ in range(args.rounds):
                    for name, base in targets.items():
                        asyncio.run(measure(base, clients, min(clients, args.requests), stream))  # warm-up
                        lat[name] += asyncio.run(measure(base, clients, args.requests, stream))
                ref = np.percentile(lat["direct"], [50, 99]) * 1000
                for name, values in lat.items():
                    p50, p99 = np.percentile(values, [50, 99]) * 1000
                    extra = "" if name == "direct" else f"{p50 - ref[0]:>8.2f} {p99 - ref[1]:>8.2f}"
                    mode = "ttft" if stream else "e2e"
                    print(f"{clients:>7} {mode:<10} {name:<8} {p50:>8.2f} {p99:>8.2f} {extra}", flush=True)
    finally:
        gateway.stop()
        stub.kill()
        if litellm is not None:
            litellm.kill()


if __name__ == "__main__":
    main()
