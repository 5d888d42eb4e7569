"""The request log: texts scrubbed before they are stored, opted-out keys never stored, retention applied."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from homegrown.gateway.store import RequestLog, RequestRecord

PII = "mail jane.doe@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111"


def record(rid: str, *, log: bool = True, created: datetime | None = None) -> RequestRecord:
    return RequestRecord(id=rid, created_at=created or datetime.now(UTC), route="r", endpoint="chat", stream=False,
                         status=200, latency_s=0.1, backend="a", request_text=json.dumps([{"role": "user",
                                                                                          "content": PII}]),
                         response_text=f"noted: {PII}", log=log)


def test_texts_are_scrubbed_and_opted_out_records_are_not_stored(tmp_path: Path) -> None:
    store = RequestLog(f"sqlite:///{tmp_path}/log.sqlite")
    assert store.write([record("r1"), record("r2", log=False)]) == 1
    (row,) = store.records()
    raw = (tmp_path / "log.sqlite").read_bytes()
    for secret in ("jane.doe@example.com", "7946 0958", "4111 1111 1111 1111"):
        assert secret not in row.request_text and secret not in row.response_text
        assert secret.encode() not in raw
    assert "<EMAIL>" in row.response_text and "<CREDIT_CARD>" in json.loads(row.request_text)[0]["content"]


def test_store_texts_false_keeps_only_numbers(tmp_path: Path) -> None:
    store = RequestLog(f"sqlite:///{tmp_path}/log.sqlite", store_texts=False)
    store.write([record("r1")])
    (row,) = store.records()
    assert row.request_text is None and row.response_text is None and row.latency_s == 0.1


def test_retention_deletes_only_rows_older_than_the_period(tmp_path: Path) -> None:
    store = RequestLog(f"sqlite:///{tmp_path}/log.sqlite")
    now = datetime.now(UTC)
    store.write([record("old", created=now - timedelta(days=31)), record("new", created=now - timedelta(days=29))])
    assert store.purge(timedelta(days=30), now) == 1
    assert [r.id for r in store.records()] == ["new"]
