"""Judging fixtures: the deterministic stub server (tests/gateway/stub_llm.py) started as real processes.

Imported by the judging tests (`from judging_kit import llm_stubs`), apart from conftest.py, which holds the
traffic-path fixtures.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

STUB = Path(__file__).with_name("stub_llm.py")


@dataclass
class LLMStub:
    """A running stub: its OpenAI base URL (`…/v1`) and its control endpoints."""

    url: str
    process: subprocess.Popen

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def control(self, **changes: str) -> None:
        httpx.post(f"{self.url}/control", json=changes, timeout=10).raise_for_status()

    def release(self) -> None:
        httpx.post(f"{self.url}/release", timeout=10).raise_for_status()

    def requests(self) -> int:
        return httpx.get(f"{self.url}/stats", timeout=10).json()["requests"]


def start_stub(*args: str) -> LLMStub:
    """Start stub_llm.py with `args`; returns once it has printed the address it bound."""
    proc = subprocess.Popen([sys.executable, str(STUB), *args], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening "):
        proc.kill()
        raise RuntimeError(f"stub did not start: {line!r}")
    url = line.split()[1]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # bound, but uvicorn listens only once its app has started
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return LLMStub(url, proc)
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("stub never answered /health")


@pytest.fixture
def llm_stubs() -> Iterator[Callable[..., LLMStub]]:
    """A factory of stub processes, all stopped at the end of the test."""
    started: list[LLMStub] = []

    def make(*args: str) -> LLMStub:
        stub = start_stub(*args)
        started.append(stub)
        return stub

    yield make
    for stub in started:
        stub.process.terminate()
        try:
            stub.process.wait(10)
        except subprocess.TimeoutExpired:
            stub.process.kill()
            stub.process.wait()
