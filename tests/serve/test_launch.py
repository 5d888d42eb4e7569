"""homegrown.serve.launch: a server that cannot start fails fast with its own words, not after a timeout."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from homegrown.errors import HomegrownError
from homegrown.serve.launch import launch


def test_a_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    # Not "did not become healthy in 3600 s": launch notices the exit instead of waiting out its timeout.
    with pytest.raises(HomegrownError, match="exited with 2") as err:
        launch(tmp_path / "no-such-run", "--device", "cpu", log=tmp_path / "serve.log", timeout=3600)
    assert "does not exist" in " ".join(str(err.value).split())  # the CLI's message, read back from the log



def test_a_port_in_use_is_a_one_line_error(cli, serve_run: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = cli("serve", str(serve_run), "--device", "cpu", "--port", str(taken.getsockname()[1]))
    said = " ".join(r.stderr.split())
    assert r.returncode == 2 and "cannot listen on" in said and "Traceback" not in said, r.stderr


def test_port_0_serves_on_the_port_the_os_picked(server) -> None:
    """The session's server was started by launch() with --port 0; its banner named the port it got."""
    assert not server.base_url.endswith(":0")
    assert httpx.get(f"{server.base_url}/health", timeout=30).status_code == 200
