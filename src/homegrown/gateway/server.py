"""`homegrown gateway --config FILE`: the gateway under uvicorn until SIGTERM/SIGINT.

It binds its socket the way `homegrown serve` does (port 0 = any free port, shown in the same banner, so
`serve.launch.launch_command` can start it) and drains the same way: on SIGTERM /health and new requests answer
503 while running requests and streams finish; queued log rows and background hook tasks are written and
awaited before exit.
"""

from __future__ import annotations

import uvicorn

from homegrown.gateway.app import Gateway, create_app
from homegrown.gateway.config import GatewayConfig
from homegrown.gateway.store import RequestLog
from homegrown.progress import console
from homegrown.serve.listen import DrainingServer, base_url, bind, run_until_drained

DRAIN_TIMEOUT_S = 60


def run_gateway(cfg: GatewayConfig, extend: list | None = None) -> None:
    """Serve until stopped. `extend`: callables given the `Gateway` before it starts (how the shadow/judge/
    promotion part attaches its hooks)."""
    store = RequestLog(cfg.log.db_url, cfg.log.store_texts)
    gw = Gateway(cfg, store=store)
    for attach in extend or []:
        attach(gw)
    app = create_app(gw)
    host, port = cfg.listen.host, cfg.listen.port
    sock = bind(host, port)
    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=DRAIN_TIMEOUT_S,
                            log_level="warning", access_log=False)
    server = DrainingServer(config, gw)  # type: ignore[arg-type]  # it only sets .draining
    url = base_url(host, sock)
    console.print(f"gateway: routes {', '.join(cfg.routes)} over backends {', '.join(cfg.backends)}")
    console.print(f"OpenAI base_url {url}/v1   (client keys {'required' if cfg.keys else 'not required'})")
    console.print(f"metrics         {url}/metrics")
    console.print(f"request log     {cfg.log.db_url}")
    try:
        run_until_drained(server, sock)
    finally:
        store.close()
