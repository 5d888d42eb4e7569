"""Slots and shutdown: a client that hangs up frees its slot, and SIGTERM lets a running stream finish.

Both need a generation that outlasts the test's actions, so they serve a tiny model with a 4096-token context
and ask for thousands of tokens (seconds of decoding) instead of the 128-token model the other tests use, with
`ignore_eos` so the reply runs its full length whatever the untrained model samples.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from homegrown.config import ModelConfig
from homegrown.model import Transformer
from homegrown.train.checkpoint import save_checkpoint
from tests.serve.conftest import Server, start_server
from tests.serve.test_api import metric

LONG = 4000


@pytest.fixture(scope="module")
def long_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("long_context_run")
    shutil.copyfile(tiny_run / "tokenizer.json", run / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=4096)
    save_checkpoint(run / "ckpt", 1, Transformer(cfg), run / "tokenizer.json")
    return run


@pytest.fixture(scope="module")
def long_server(long_run: Path) -> Iterator[Server]:
    srv = start_server(long_run, "--max-batch", "4")
    yield srv
    srv.stop()


def long_request(srv: Server) -> dict:
    return {"model": srv.model, "prompt": "Go", "max_tokens": LONG, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 1.0, "seed": 1}


def running(srv: Server) -> float:
    return metric(httpx.get(f"{srv.base_url}/metrics", timeout=30).text, "homegrown_requests_running")


def test_client_disconnect_frees_the_slot(long_server: Server) -> None:
    with httpx.Client(base_url=long_server.base_url, headers=long_server.headers(), timeout=60) as c, \
            c.stream("POST", "/v1/completions", json=long_request(long_server)) as r:
        chunks = r.iter_bytes()
        next(chunks)
        next(chunks)
        assert running(long_server) == 1
    deadline = time.monotonic() + 30
    while running(long_server) and time.monotonic() < deadline:
        time.sleep(0.05)
    text = httpx.get(f"{long_server.base_url}/metrics", timeout=30).text
    assert metric(text, "homegrown_requests_running") == 0
    assert metric(text, 'homegrown_request_success_total{finish_reason="abort"}') == 1


def test_sigterm_drains_the_running_stream_then_exits_0(long_run: Path) -> None:
    srv = start_server(long_run, api_key=None)
    started = threading.Event()
    events: list[str] = []

    def client() -> None:
        with httpx.stream("POST", f"{srv.base_url}/v1/completions", json=long_request(srv), timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
                    started.set()

    reader = threading.Thread(target=client)
    reader.start()
    try:
        assert started.wait(60)
        assert "[DONE]" not in events
        srv.process.terminate()
        # Draining: /health says 503, then the listening socket closes and new connections are refused.
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"{srv.base_url}/health", timeout=5).status_code in (200, 503)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "the server kept accepting connections after SIGTERM"
            time.sleep(0.05)
        reader.join(120)
        assert srv.process.wait(60) == 0
    finally:
        if srv.process.poll() is None:
            srv.process.kill()
    # The stream that was running at SIGTERM was not cut: it ran to max_tokens.
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == LONG
    assert json.loads(events[-3])["choices"][0]["finish_reason"] == "length"
