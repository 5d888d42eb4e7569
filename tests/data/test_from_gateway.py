"""The flywheel export on request-log records written through the real request log (SQLite)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homegrown.data import from_gateway
from homegrown.data.provenance import OptOut
from homegrown.errors import HomegrownError
from homegrown.gateway.store import RequestLog, RequestRecord
from homegrown.posttrain.chat import read_chat_jsonl


def _record(i: int, backend: str = "provider", **changes) -> RequestRecord:
    base = dict(id=f"req_{i}", created_at=datetime(2026, 12, 3, 10, i, tzinfo=UTC), route="chat", endpoint="chat",
                stream=False, status=200, latency_s=0.1, backend=backend, backend_model="gpt-x", key_name="app",
                request_text=json.dumps([{"role": "user", "content": f"q{i}"}]), response_text=f"a{i}")
    return RequestRecord(**{**base, **changes})


def test_export_keeps_only_what_may_be_trained_on(tmp_path: Path) -> None:
    log = RequestLog(f"sqlite:///{tmp_path / 'gw.sqlite'}")
    log.write([
        _record(0), _record(1, backend="inhouse"), _record(2, status=502, error_kind="server_error"),
        _record(3, endpoint="completions", request_text=json.dumps("a prompt")),
        _record(4, key_name="secret"), _record(5, request_text="not json"), _record(6),
        _record(7, request_text=json.dumps([{"role": "user", "content": "q6"}]), response_text="a6"),  # same as 6
        _record(8, route="private"), _record(9, response_text="call me at jane@example.com"),
    ])
    opt = tmp_path / "optout.txt"
    opt.write_text("domain: private\n")
    stats = from_gateway.export(log.records(), tmp_path / "out", ["provider"], ["secret"], OptOut.load(opt))
    assert stats.exported == 3
    assert dict(stats.skipped) == {"other_backend": 1, "failed": 1, "not_chat": 1, "no_consent": 1, "invalid": 1,
                                   "duplicate": 1, "opt_out_domain": 1}
    chats = read_chat_jsonl(tmp_path / "out" / "train.jsonl", strict=True)
    assert chats.conversations[0] == [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}]
    assert "<EMAIL>" in chats.conversations[2][1]["content"]  # the log scrubbed it before storing
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert rows[0] | {"exported_at": None} == {
        "id": "req_0", "source": "gateway://chat/req_0", "sha256": from_gateway.conversation_sha256(
            chats.conversations[0]), "route": "chat", "backend": "provider", "model": "gpt-x",
        "date": "2026-12-03T10:00:00Z", "key": "app", "consent": "key app: logged, not excluded from training",
        "exported_at": None}
    assert from_gateway.is_export(tmp_path / "out")

    removed = from_gateway.forget(tmp_path / "out", ids=["req_6"])
    assert [r["id"] for r in removed] == ["req_6"]
    again = from_gateway.export(log.records(), tmp_path / "out", ["provider"], ["secret"], OptOut.load(opt))
    assert again.exported == 2 and again.skipped["forgotten"] == 2  # req_6, and req_7: the same conversation
    with pytest.raises(HomegrownError, match="no conversation"):
        from_gateway.forget(tmp_path / "out", ids=["req_6"])
    with pytest.raises(HomegrownError, match=r"flywheel\.backends"):
        from_gateway.export([], tmp_path / "none", [])
    log.close()
