"""Listening the way `homegrown serve` and `homegrown gateway` both do: the socket bound before anything slow
starts (port 0 = a free port the banner then shows), and a uvicorn server that marks its app as draining the
moment SIGTERM/SIGINT arrives, so /health and new requests answer 503 while running ones finish.
"""

from __future__ import annotations

import signal
import socket
from types import FrameType
from typing import Any

import uvicorn

from homegrown.errors import HomegrownError


class DrainingServer(uvicorn.Server):
    """uvicorn's graceful shutdown, plus marking the app as draining (`state.draining = True`: the serve app's
    ServerState, the gateway's Gateway) the moment the signal arrives."""

    def __init__(self, config: uvicorn.Config, state: Any) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.state.draining = True
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: port 0 lets the OS pick a free port, which the
    banner then shows (launch.py reads it back, so no test or script has to guess a free port and race for it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise HomegrownError(f"cannot resolve --host {host!r} ({e})") from e
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise HomegrownError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port, or 0 for any "
                             "free one") from e
    return sock


def drained(sig: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the signal it shut down on; after a completed drain that is a normal exit."""


def base_url(host: str, sock: socket.socket) -> str:
    """http://HOST:PORT for the banner, with the port the socket really got (port 0) and IPv6 hosts bracketed."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{sock.getsockname()[1]}"


def run_until_drained(server: DrainingServer, sock: socket.socket) -> None:
    """Serve on `sock` until a signal drains the server; a SIGTERM after the drain exits normally (`drained`),
    and the socket is closed whatever happens."""
    previous = signal.signal(signal.SIGTERM, drained)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
