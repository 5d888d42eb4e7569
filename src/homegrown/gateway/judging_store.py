"""Shadow pairs, their verdicts and the promotion decisions, in SQL next to the gateway's request log.

The same SQLAlchemy engine and declarative `Base` as the request log (SQLite by default, Postgres by URL), so
`RequestLog` creates these tables with its own; they are: a pair is
both answers to one request (the one the client got and the one the shadow fetched), named by which backend
is the candidate and which the incumbent, with the cheap signals and — once judged — the verdict. Decisions
are append-only, each with the evidence it was taken on; the newest one per route is the route's current step,
so a restarted gateway resumes where it was.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, Float, Integer, String, Text, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from homegrown.gateway.judge import Verdict
from homegrown.gateway.promotion import Decision
from homegrown.gateway.signals import Answer, Signals
from homegrown.gateway.store import Base


class ShadowPairRow(Base):
    __tablename__ = "shadow_pairs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(80), index=True)
    route: Mapped[str] = mapped_column(String(200), index=True)
    client_done_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    """When the client's request finished (the gateway's after-request hook fired)."""
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    """When the shadow answer arrived and the pair was written: always after `client_done_at`."""
    messages: Mapped[str] = mapped_column(Text)
    live_backend: Mapped[str] = mapped_column(String(200))
    candidate_backend: Mapped[str] = mapped_column(String(200))
    candidate_text: Mapped[str] = mapped_column(Text)
    candidate_finish: Mapped[str | None] = mapped_column(String(40), nullable=True)
    candidate_latency_s: Mapped[float] = mapped_column(Float)
    candidate_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    incumbent_backend: Mapped[str] = mapped_column(String(200))
    incumbent_text: Mapped[str] = mapped_column(Text)
    incumbent_finish: Mapped[str | None] = mapped_column(String(40), nullable=True)
    incumbent_latency_s: Mapped[float] = mapped_column(Float)
    incumbent_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    signals: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(20), nullable=True, index=True)
    """win / tie / loss for the candidate, unparseable, error; NULL until judged (or when no judge is set)."""
    verdict: Mapped[str | None] = mapped_column(Text, nullable=True)
    judged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DecisionRow(Base):
    __tablename__ = "promotion_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    route: Mapped[str] = mapped_column(String(200), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(20))
    from_step: Mapped[int] = mapped_column(Integer)
    to_step: Mapped[int] = mapped_column(Integer)
    from_percent: Mapped[float] = mapped_column(Float)
    to_percent: Mapped[float] = mapped_column(Float)
    reasons: Mapped[str] = mapped_column(Text)
    evidence: Mapped[str] = mapped_column(Text)


def utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without a zone; they were stored as UTC, so say so."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class StoredDecision(Decision):
    """A promotion `Decision` as read back: its fields (promotion owns them) plus where and when it was taken."""

    id: int
    route: str
    at: datetime


class JudgingStore:
    """Writes and reads the judging tables on an engine shared with the request log; thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        Base.metadata.create_all(engine)  # RequestLog made them already; a store opened on its own makes them here
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def add_pair(self, request_id: str, route: str, client_done_at: datetime, messages: list[dict],
                 live_backend: str, candidate: tuple[str, Answer], incumbent: tuple[str, Answer],
                 sig: Signals) -> str:
        """Store both answers to one request; returns the pair id."""
        (c_name, c), (i_name, i) = candidate, incumbent
        row = ShadowPairRow(
            id=uuid.uuid4().hex, request_id=request_id, route=route, client_done_at=client_done_at,
            stored_at=datetime.now(UTC), messages=json.dumps(messages, ensure_ascii=False), live_backend=live_backend,
            candidate_backend=c_name, candidate_text=c.text, candidate_finish=c.finish_reason,
            candidate_latency_s=c.latency_s, candidate_error=c.error, incumbent_backend=i_name,
            incumbent_text=i.text, incumbent_finish=i.finish_reason, incumbent_latency_s=i.latency_s,
            incumbent_error=i.error, signals=json.dumps(sig.as_dict()))
        with self._session() as s:
            s.add(row)
        return row.id

    def set_verdict(self, pair_id: str, verdict: Verdict) -> None:
        body = {"candidate_first": verdict.candidate_first, "as_a": verdict.as_a, "as_b": verdict.as_b,
                "flipped": verdict.flipped, "detail": verdict.detail}
        with self._session() as s:
            s.execute(update(ShadowPairRow).where(ShadowPairRow.id == pair_id).values(
                outcome=verdict.outcome, verdict=json.dumps(body, ensure_ascii=False), judged_at=datetime.now(UTC)))

    def pairs(self, route: str | None = None) -> list[ShadowPairRow]:
        """Every stored pair (of one route), oldest first."""
        with self._session() as s:
            q = select(ShadowPairRow).order_by(ShadowPairRow.stored_at, ShadowPairRow.id)
            if route is not None:
                q = q.where(ShadowPairRow.route == route)
            return list(s.scalars(q).all())

    def outcome_counts(self, route: str) -> dict[str, int]:
        """Pairs per outcome for a route (`unjudged` for those without a verdict)."""
        with self._session() as s:
            rows = s.execute(select(ShadowPairRow.outcome, func.count()).where(ShadowPairRow.route == route)
                             .group_by(ShadowPairRow.outcome)).all()
        return {(outcome or "unjudged"): n for outcome, n in rows}

    def add_decision(self, route: str, d: Decision) -> None:
        with self._session() as s:
            s.add(DecisionRow(route=route, at=datetime.now(UTC), action=d.action, from_step=d.from_step,
                              to_step=d.to_step, from_percent=d.from_percent, to_percent=d.to_percent,
                              reasons=json.dumps(d.reasons, ensure_ascii=False), evidence=json.dumps(d.evidence)))

    def decisions(self, route: str | None = None, changes_only: bool = False) -> list[StoredDecision]:
        """Decisions oldest first; `changes_only` leaves out the holds."""
        with self._session() as s:
            q = select(DecisionRow).order_by(DecisionRow.id)
            if route is not None:
                q = q.where(DecisionRow.route == route)
            if changes_only:
                q = q.where(DecisionRow.action != "hold")
            rows = s.scalars(q).all()
        return [StoredDecision(id=r.id, route=r.route, at=utc(r.at), action=r.action, from_step=r.from_step,
                               to_step=r.to_step, from_percent=r.from_percent, to_percent=r.to_percent,
                               reasons=json.loads(r.reasons), evidence=json.loads(r.evidence)) for r in rows]

    def current_step(self, route: str) -> int | None:
        """The ladder step the newest decision left the route at, or None if it never had one."""
        with self._session() as s:
            row = s.scalars(select(DecisionRow).where(DecisionRow.route == route)
                            .order_by(DecisionRow.id.desc()).limit(1)).first()
        return None if row is None else row.to_step
