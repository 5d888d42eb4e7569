"""The gateway's request log in SQL (SQLAlchemy: SQLite by default, Postgres by URL), one row per client request.

A row says where the request went and how it went: route, the backend that answered (or the last one tried)
and its model, HTTP status, error kind, the failed attempts before it, tokens, latency, time to first token,
cost, the client key's name, a hash of the sticky (user/conversation) key, and timestamps. Unless the config
says `store_texts: false`, it also holds the request (the messages or prompt, as JSON) and the reply text,
both scrubbed by the data pipeline's PII scrubber (homegrown.data.pii, private IPs included) before they are
written: no raw text reaches the database. A key with `log: false` leaves no row at all.

Writes are batched by `LogWriter`, an asyncio task that hands batches to a thread, so neither scrubbing nor
the database ever runs on the event loop that serves clients.

For other gateway modules (gwjudge: shadow pairs, judgements, promotion decisions): declare tables on `Base`
so `RequestLog` creates them in the same database, and read logged requests with `RequestLog.records()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Boolean, DateTime, Float, Integer, String, Text, delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from homegrown.data.pii import scrub
from homegrown.errors import HomegrownError
from homegrown.serve.store import make_engine

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    """Every gateway table; `RequestLog` creates all of them."""


class RequestRow(Base):
    __tablename__ = "gateway_requests"
    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    route: Mapped[str] = mapped_column(String(200), index=True)
    endpoint: Mapped[str] = mapped_column(String(16))
    stream: Mapped[bool] = mapped_column(Boolean)
    backend: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    backend_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    error_kind: Mapped[str | None] = mapped_column(String(40), nullable=True)
    attempts: Mapped[str] = mapped_column(Text, default="[]")
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_s: Mapped[float] = mapped_column(Float)
    ttft_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    key_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sticky_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_text: Mapped[str | None] = mapped_column(Text, nullable=True)


@dataclass
class RequestRecord:
    """One finished client request, as the proxy saw it. `attempts` lists the failures before the answer as
    "backend:kind"; `status` is what the client got (200 for a stream that started, even one later cut: then
    `error_kind` is `stream_interrupted`). `request_text`/`response_text` are raw here and scrubbed by the
    store; `log` False (the key opted out) means the store drops the record."""

    id: str
    created_at: datetime
    route: str
    endpoint: str
    stream: bool
    status: int
    latency_s: float
    backend: str | None = None
    backend_model: str | None = None
    error_kind: str | None = None
    attempts: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    cost_usd: float = 0.0
    key_name: str | None = None
    sticky_key: str | None = None
    request_text: str | None = None
    response_text: str | None = None
    log: bool = True
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        return self.status < 400 and self.error_kind is None


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def scrubbed(text: str | None) -> str | None:
    return None if text is None else scrub(text, private_ips=True)[0]


class RequestLog:
    """The request table and friends; safe to share between threads (each call has its own session)."""

    def __init__(self, db_url: str, store_texts: bool = True) -> None:
        self.engine = make_engine(db_url)
        self.store_texts = store_texts
        try:
            Base.metadata.create_all(self.engine)
        except SQLAlchemyError as e:
            raise HomegrownError(f"cannot open the gateway's request log {db_url!r}: {e.__class__.__name__}; "
                                 "check log.db_url and that the database is reachable and writable") from e
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()

    def write(self, records: Iterable[RequestRecord]) -> int:
        """Store the records whose key did not opt out, texts scrubbed; returns how many were stored."""
        rows = []
        for r in records:
            if not r.log:
                continue
            texts = self.store_texts
            rows.append(RequestRow(
                id=r.id, created_at=r.created_at, finished_at=r.finished_at, route=r.route, endpoint=r.endpoint,
                stream=r.stream, backend=r.backend, backend_model=r.backend_model, status=r.status,
                error_kind=r.error_kind, attempts=json.dumps(r.attempts), prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens, latency_s=r.latency_s, ttft_s=r.ttft_s,
                cost_usd=r.cost_usd, key_name=r.key_name, sticky_key=r.sticky_key,
                request_text=scrubbed(r.request_text) if texts else None,
                response_text=scrubbed(r.response_text) if texts else None))
        if rows:
            with self.session() as s:
                s.add_all(rows)
        return len(rows)

    def purge(self, retention: timedelta, now: datetime | None = None) -> int:
        """Delete rows created before now - retention; returns how many."""
        cutoff = (now or datetime.now(UTC)) - retention
        with self.session() as s:
            return s.execute(delete(RequestRow).where(RequestRow.created_at < cutoff)).rowcount or 0

    def records(self, since: datetime | None = None, route: str | None = None) -> list[RequestRecord]:
        """Logged requests, oldest first (texts as stored, i.e. scrubbed)."""
        q = select(RequestRow).order_by(RequestRow.created_at, RequestRow.id)
        if since is not None:
            q = q.where(RequestRow.created_at >= since)
        if route is not None:
            q = q.where(RequestRow.route == route)
        with self.session() as s:
            return [_record(row) for row in s.scalars(q)]

    def count(self) -> int:
        with self.session() as s:
            return len(s.scalars(select(RequestRow.id)).all())


def _record(row: RequestRow) -> RequestRecord:
    return RequestRecord(
        id=row.id, created_at=_utc(row.created_at), finished_at=_utc(row.finished_at), route=row.route,
        endpoint=row.endpoint, stream=row.stream, status=row.status, latency_s=row.latency_s, backend=row.backend,
        backend_model=row.backend_model, error_kind=row.error_kind, attempts=json.loads(row.attempts),
        prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens, ttft_s=row.ttft_s,
        cost_usd=row.cost_usd, key_name=row.key_name, sticky_key=row.sticky_key, request_text=row.request_text,
        response_text=row.response_text)


class LogWriter:
    """Queue → batches → `RequestLog.write` in a worker thread. `close()` writes what is queued, then stops;
    retention is applied at start and every `purge_every_s`."""

    BATCH = 256

    def __init__(self, store: RequestLog, retention: timedelta, purge_every_s: float = 3600.0) -> None:
        self.store, self.retention, self.purge_every_s = store, retention, purge_every_s
        self.queue: asyncio.Queue[RequestRecord | None] = asyncio.Queue()
        self.written = 0
        self._task: asyncio.Task[None] | None = None
        self._purger: asyncio.Task[None] | None = None

    def start(self) -> LogWriter:
        self._task = asyncio.create_task(self._run())
        self._purger = asyncio.create_task(self._purge_periodically())
        return self

    def put(self, record: RequestRecord) -> None:
        self.queue.put_nowait(record)

    async def _run(self) -> None:
        done = False
        while not done:
            batch = [await self.queue.get()]
            while len(batch) < self.BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            done = None in batch
            records = [r for r in batch if r is not None]
            try:
                self.written += await asyncio.to_thread(self.store.write, records)
            except Exception:  # a failing database must not take the traffic path down
                log.exception("writing %d request log rows failed", len(records))

    async def _purge_periodically(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.store.purge, self.retention)
            except Exception:
                log.exception("applying the request log's retention failed")
            await asyncio.sleep(self.purge_every_s)

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with suppress(asyncio.CancelledError):
                await self._purger
        if self._task is not None:
            self.queue.put_nowait(None)
            await self._task
