"""The gateway's YAML: typos and dangling names are refused with the key's path; the CLI says so in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from homegrown.errors import HomegrownError
from homegrown.gateway.config import load_config, parse_config
from tests.conftest import _run_cli

BASE = {"backends": {"a": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}},
        "routes": {"r": {"backends": [{"backend": "a", "weight": 1}]}}}


def test_unknown_keys_are_refused_by_path() -> None:
    bad = {**BASE, "routes": {"r": {"backends": [{"backend": "a", "wieght": 1}]}}}
    with pytest.raises(HomegrownError, match=r"routes\.r\.backends\.0\.wieght: unknown key"):
        parse_config(bad)


def test_a_route_naming_a_missing_backend_is_refused() -> None:
    bad = {**BASE, "routes": {"r": {"backends": [{"backend": "nope"}]}}}
    with pytest.raises(HomegrownError, match="names backend 'nope'"):
        parse_config(bad)


def test_relative_sqlite_path_is_taken_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({**BASE, "log": {"db_url": "sqlite:///logs/gw.sqlite"}}))
    assert load_config(path).log.db_url == f"sqlite:///{tmp_path}/logs/gw.sqlite"


def test_cli_reports_a_bad_config_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("backends: [oops")
    result = _run_cli("gateway", "--config", str(path))
    assert result.returncode == 2 and "is not valid YAML" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
