"""homegrown.serve.launch: a server that cannot start fails fast with its own words, not after a timeout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from homegrown.errors import HomegrownError
from homegrown.serve.launch import launch


def test_a_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(HomegrownError, match="exited with 2") as err:
        launch(tmp_path / "no-such-run", "--device", "cpu", log=tmp_path / "serve.log", timeout=60)
    assert "does not exist" in str(err.value)  # the CLI's message, read back from the log
    assert time.monotonic() - start < 30

