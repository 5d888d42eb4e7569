"""`homegrown serve`: build the app for a checkpoint and run it under uvicorn until SIGTERM/SIGINT.

Shutdown drains: on SIGTERM /health and new requests answer 503, the listening socket closes, in-flight
requests (streams included) run to their end, then the engine stops and the process exits 0 — what a
load balancer or Kubernetes expects from a rolling restart.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import uvicorn

from homegrown.config import ServeConfig
from homegrown.errors import HomegrownError
from homegrown.layout import RunLayout, run_dir_of
from homegrown.progress import console
from homegrown.serve.api import ServerState, create_app
from homegrown.serve.auth import Authenticator
from homegrown.serve.listen import DrainingServer, base_url, bind, run_until_drained
from homegrown.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)


def is_hf_dir(path: Path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and "model_type" in json.loads(config.read_text())


def check_source(path: Path) -> None:
    """Fail before binding the port if there is nothing to serve at `path`."""
    from homegrown.train.checkpoint import resolve_checkpoint

    if not Path(path).exists():
        raise HomegrownError(f"{path} does not exist; pass a run directory, ckpt/step_N or an exported HF directory")
    if not is_hf_dir(path):
        resolve_checkpoint(path)


def _key_mode(auth: Authenticator) -> str:
    if auth.open():
        return "not required: no --api-key and no user keys; `homegrown serve keys add` makes one"
    return "required"


def serve(source: Path, cfg: ServeConfig | None = None, *, api_key: str | None = None, db_url: str | None = None,
          model_name: str | None = None) -> None:
    from homegrown.bundle import load_bundle, resolve_precision
    from homegrown.serve.engine import Engine, resolve_device
    from homegrown.serve.keys import KeyStore
    from homegrown.serve.store import ConversationStore

    cfg = cfg or ServeConfig()
    source = Path(source)
    check_source(source)
    run_dir = run_dir_of(source)  # the conversations database goes there by default
    model_name = model_name or run_dir.name
    store = ConversationStore(db_url or f"sqlite:///{RunLayout(run_dir).conversations_db}")
    keys = KeyStore(store.engine)  # user keys live next to the conversations they own
    metrics = ServeMetrics()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.dtype, device)  # before binding the port: a bad --dtype fails here
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or max(1, len(os.sched_getaffinity(0)) - 1))

    def load() -> Engine:
        return Engine(load_bundle(source, device, precision.dtype, precision.quantize), cfg, metrics)

    server: DrainingServer | None = None

    def stop_server() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(load, api_key=api_key or None, model_name=model_name, store=store, keys=keys, metrics=metrics,
                     on_load_failure=stop_server, generation_defaults=cfg.generation_defaults,
                     max_body_bytes=cfg.max_body_bytes)
    sock = bind(cfg.host, cfg.port)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, timeout_graceful_shutdown=int(cfg.drain_timeout_s),
                            log_level="info", access_log=False)
    server = DrainingServer(config, app.state.server)
    url = base_url(cfg.host, sock)
    console.print(f"serving [bold]{model_name}[/bold] from {source}")
    console.print(f"chat page       {url}/")
    console.print(f"OpenAI base_url {url}/v1   (API key {_key_mode(Authenticator(api_key, keys))})")
    console.print(f"metrics         {url}/metrics")
    run_until_drained(server, sock)
    state: ServerState = app.state.server
    if state.load_error:
        raise HomegrownError(f"could not load {source}: {state.load_error}")
