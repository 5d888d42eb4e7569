"""Gateway fixtures: fault-injecting stub providers and the real `homegrown gateway` in their own processes.

Addresses never race: a stub serves a listening socket this process bound (port 0) and hands down, so it can
be killed and restarted on the same address; a "dead" backend is a socket bound but never listening, whose
connections are refused for as long as the test holds it.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from homegrown.serve.launch import ServerProcess, launch_command

# A tiny real checkpoint and `homegrown serve` on it (tests/serve), to put a real server behind the gateway.
from tests.serve.conftest import FORCED_TOKEN, defaults_server, serve_run  # noqa: F401

STUB = Path(__file__).with_name("stub_provider.py")
_LOGS = itertools.count()


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll until `condition()` is truthy (returns it); the timeout only bounds a broken run, it decides nothing."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Stub:
    """A stub provider process on a socket this test process owns."""

    def __init__(self, name: str, log_dir: Path, *args: str) -> None:
        self.name, self.args, self.log_dir = name, args, log_dir
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = self.log_dir / f"stub-{self.name}-{next(_LOGS)}.log"
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(STUB), "--name", self.name, "--fd", str(self.sock.fileno()), *self.args],
                pass_fds=[self.sock.fileno()], stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._healthy, what=f"stub {self.name}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def control(self, script: list[str] | None = None, default: str = "ok") -> None:
        httpx.post(f"{self.url}/control", json={"script": script or [], "default": default}, timeout=10)

    def requests(self) -> int:
        return httpx.get(f"{self.url}/stats", timeout=10).json()["requests"]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        self.sock.close()


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Stub]]:
    """Start stub providers; they stop at the end of the test module (so module fixtures can share them)."""
    tmp_path = tmp_path_factory.mktemp("stubs")
    made: list[Stub] = []

    def make(name: str, *args: str) -> Stub:
        made.append(Stub(name, tmp_path, *args))
        return made[-1]

    yield make
    for stub in made:
        stub.close()


@pytest.fixture(scope="module")
def refused_url() -> Iterator[str]:
    """A loopback address whose connections are refused (bound, never listening) while the test runs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()


def backend(url: str, model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"base_url": url if url.endswith("/v1") else f"{url}/v1", "model": model, **extra}


class Gateway:
    def __init__(self, proc: ServerProcess, config: Path, db: Path) -> None:
        self.proc, self.config, self.db = proc, config, db
        self.base_url = proc.base_url
        self.v1 = f"{proc.base_url}/v1"

    def state(self, key: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.base_url}/gateway/state", headers=headers, timeout=10).json()

    def breaker(self, backend: str) -> str:
        return self.state()["backends"][backend]["breaker"]

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.base_url}/metrics", timeout=10).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            m = re.match(rf"{re.escape(name)}\{{(.*)\}} (\S+)$", line)
            if m and ",".join(sorted(m.group(1).split(","))) == want:
                return float(m.group(2))
        return 0.0

    def stop(self) -> int:
        return self.proc.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Gateway]]:
    """Start `homegrown gateway --config FILE --port 0` with the given config (a dict written as YAML); each
    runs until the end of the test module."""
    tmp_path = tmp_path_factory.mktemp("gateway")
    started: list[Gateway] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> Gateway:
        n = next(_LOGS)
        db = tmp_path / f"gateway-{n}.sqlite"
        config = {"log": {"db_url": f"sqlite:///{db}"}, **config}
        path = tmp_path / f"gateway-{n}.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = launch_command(["gateway", "--config", str(path), "--port", "0"], log=tmp_path / f"gateway-{n}.log",
                              env={**os.environ, **(env or {})}, timeout=120)
        started.append(Gateway(proc, path, db))
        return started[-1]

    yield start
    for gw in started:
        gw.stop()


from judging_kit import llm_stubs  # noqa: E402, F401  (the judging tests' stub processes, kept in their own module)
