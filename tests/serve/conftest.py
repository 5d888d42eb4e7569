"""Serving fixtures: a tiny real checkpoint, an in-process engine on it, and the real `homegrown serve` process.

The checkpoint is an untrained tiny model saved with the project's own checkpoint writer and the `tiny_run`
tokenizer: its text is noise, but every property under test (batching, seeds, stops, the HTTP protocol) is
about the machinery, which behaves the same for any weights. The server is the console script in a child
process on a free loopback port, exactly as a user starts it.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from homegrown.config import ModelConfig, ServeConfig
from homegrown.model import Transformer
from homegrown.serve.launch import launch
from homegrown.serve.server import run_dir_of
from homegrown.train.checkpoint import save_checkpoint

API_KEY = "test-key-123"
_LOG_NUMBERS = itertools.count()
SERVE_MODEL = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)


@pytest.fixture(scope="session")
def serve_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding ckpt/step_1 of a tiny (untrained, seeded) model with the tiny_run tokenizer."""
    run = tmp_path_factory.mktemp("serve_run")
    shutil.copyfile(tiny_run / "tokenizer.json", run / "tokenizer.json")
    torch.manual_seed(0)
    save_checkpoint(run / "ckpt", 1, Transformer(SERVE_MODEL), run / "tokenizer.json")
    return run


@pytest.fixture(scope="module")
def engine(serve_run: Path) -> Iterator:
    from homegrown.bundle import load_bundle
    from homegrown.serve.engine import Engine

    eng = Engine(load_bundle(serve_run), ServeConfig(max_batch=8, max_waiting=64)).start()
    yield eng
    eng.stop(drain=False, timeout=30)


@dataclass
class Server:
    """A running `homegrown serve`: where it listens, its key, what it serves and its process."""

    base_url: str
    api_key: str | None
    run_dir: Path
    ckpt: Path
    process: subprocess.Popen
    model: str
    log: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_server(source: Path, *args: str, api_key: str | None = API_KEY, timeout: float = 120) -> Server:
    """Start the console script (homegrown.serve.launch) and wait until /health says the model is loaded."""
    env = {**os.environ}
    env.pop("HOMEGROWN_API_KEY", None)
    if api_key:
        env["HOMEGROWN_API_KEY"] = api_key
    run = run_dir_of(source)
    srv = launch(source, "--device", "cpu", *args, log=run / f"serve-{next(_LOG_NUMBERS)}.log", env=env,
                 timeout=timeout)
    return Server(srv.base_url, api_key, run, source, srv.process, run.name, srv.log)


FORCED_TOKEN = "a"
"""What every reply of `defaults_server` is made of."""


@pytest.fixture(scope="session")
def defaults_server(serve_run: Path) -> Iterator[Server]:
    """`homegrown serve` with server-side sampling defaults (--generation-config), for clients that cannot send
    vLLM's extensions, such as the chat page: unless a request says otherwise, a reply runs to the end of the
    context (ignore_eos) and is the token 'a' over and over (+100 bias), so what a client sees does not depend
    on what the untrained model samples. Its own conversations database."""
    from homegrown.tokenizer import load_tokenizer

    forced = load_tokenizer(serve_run).token_to_id(FORCED_TOKEN)
    config = json.dumps({"ignore_eos": True, "logit_bias": {str(forced): 100}})
    srv = start_server(serve_run, "--generation-config", config,
                       "--db-url", f"sqlite:///{serve_run / 'defaults-conversations.sqlite'}")
    srv.ckpt = serve_run / "ckpt" / "step_1"
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server(serve_run: Path) -> Iterator[Server]:
    """The real `homegrown serve <run>` on a free loopback port with API key `API_KEY`, shared by the session."""
    srv = start_server(serve_run)
    srv.ckpt = serve_run / "ckpt" / "step_1"
    yield srv
    srv.stop()


TOOLS_MODEL = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=2048)
"""SERVE_MODEL with room for a prompt that lists tools (their JSON schemas, in a 512-token vocabulary)."""


@pytest.fixture(scope="session")
def tools_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like serve_run (untrained, seeded, the tiny_run tokenizer and our chat template) with a 2,048-token context."""
    run = tmp_path_factory.mktemp("tools_run")
    shutil.copyfile(tiny_run / "tokenizer.json", run / "tokenizer.json")
    torch.manual_seed(0)
    save_checkpoint(run / "ckpt", 1, Transformer(TOOLS_MODEL), run / "tokenizer.json")
    return run


@pytest.fixture(scope="session")
def tools_server(tools_run: Path) -> Iterator[Server]:
    """The real `homegrown serve` of tools_run, for tool calling."""
    srv = start_server(tools_run)
    srv.ckpt = tools_run / "ckpt" / "step_1"
    yield srv
    srv.stop()
