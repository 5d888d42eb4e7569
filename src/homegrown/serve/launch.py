"""Run `homegrown serve` as a child process and wait until it answers: the server as a user starts it.

Tests, benchmarks and scripts exercise the real server in its own process (the console script, its own
event loop and engine thread), so what they measure or pin is what a client sees. Each used to carry its
own start-and-poll loop; this is the one copy.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from homegrown.errors import HomegrownError

BANNER_URL = re.compile(r"OpenAI base_url\s+(http://\S+?)/v1\b")
"""The line of `homegrown serve`'s banner that says where it listens, printed once the port is bound."""


def homegrown_command() -> list[str]:
    """The console script beside this interpreter (as installed), else `python -m homegrown`."""
    exe = Path(sys.executable).with_name("homegrown")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "homegrown"]


@dataclass
class ServerProcess:
    """A started `homegrown serve`: where it listens, its process and the file its output goes to."""

    base_url: str
    process: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (the server's draining path), then its exit code; killed if it outlives `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def launch(source: Path, *args: str, log: Path, host: str = "127.0.0.1", port: int | None = None,
           env: Mapping[str, str] | None = None, timeout: float = 120) -> ServerProcess:
    """`homegrown serve SOURCE --host HOST --port PORT ARGS…`, returned once GET /health is 200.

    Without `port` the server binds port 0, so the OS gives it a free port that nobody can take in between; its
    address is read back from the banner in its log. Output goes to the file `log` (not a pipe: nobody reads a
    pipe while the caller works, and a full one blocks the server). `env` replaces the environment (default:
    this process's). If the server exits or is not healthy within `timeout` seconds, it is killed and the error
    carries the end of its log.
    """
    command = ["serve", str(source), "--host", host, "--port", str(port or 0), *args]
    return launch_command(command, log=log, env=env, timeout=timeout)


def launch_command(args: list[str], *, log: Path, env: Mapping[str, str] | None = None,
                   timeout: float = 120) -> ServerProcess:
    """`homegrown ARGS…` for any sub-command that prints the `OpenAI base_url` banner once its port is bound
    (`serve`, `gateway`), returned once GET /health is 200; see `launch` for the rest."""
    what = f"homegrown {args[0]}"
    with Path(log).open("w") as out:
        proc = subprocess.Popen([*homegrown_command(), *args],
                                env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    base: str | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HomegrownError(f"{what} exited with {proc.returncode}:\n{Path(log).read_text()[-4000:]}")
        if base is None:
            found = BANNER_URL.search(Path(log).read_text())
            base = found.group(1) if found else None
        try:
            if base is not None and httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return ServerProcess(base, proc, Path(log))
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise HomegrownError(f"{what} did not become healthy in {timeout:.0f} s:\n{Path(log).read_text()[-4000:]}")
