"""Conversations and messages of the chat page, kept in a database so a reload (or a restart) loses nothing.

Every conversation has an owner (the user of the API key that made it) and every call names the owner it acts
for, so one user can never reach another's conversation: an id owned by someone else is simply not found.
Databases from before owners existed are migrated on open (the column is added; their conversations belong to
LEGACY_OWNER, the user of the server's single `--api-key` and of a server with no keys at all).

SQLAlchemy rather than raw sqlite3 so the same code runs on the default SQLite file and on Postgres given
only a `--db-url`. Every call opens its own short session, so one store is shared by all FastAPI worker
threads; SQLite gets WAL mode and a busy timeout so concurrent writers wait for each other instead of failing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from homegrown.errors import HomegrownError

ROLES = ("system", "user", "assistant")
LEGACY_OWNER = "default"
"""Owner of conversations stored before owners existed, and the user of `--api-key` and of an open server."""
MAX_OWNER = 64
SQLITE_BUSY_TIMEOUT_S = 30.0


class ConversationNotFound(HomegrownError):
    """Asked for a conversation id that does not exist (or was deleted); the API answers 404."""


class _Base(DeclarativeBase):
    pass


class _ConversationRow(_Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(MAX_OWNER), index=True)
    title: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(Text, nullable=True)
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    temperature: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class _MessageRow(_Base):
    __tablename__ = "messages"
    # An autoincrement integer key gives the order messages were stored in, even when timestamps tie.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: str
    role: str
    content: str
    created_at: datetime


@dataclass(frozen=True)
class Conversation:
    id: str
    owner: str
    title: str
    model: str | None
    system_prompt: str
    temperature: float | None
    created_at: datetime
    updated_at: datetime
    messages: list[Message] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without a zone; they were stored as UTC, so say so."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _conversation(row: _ConversationRow, messages: list[Message] | None = None) -> Conversation:
    return Conversation(id=row.id, owner=row.owner, title=row.title, model=row.model, system_prompt=row.system_prompt,
                        temperature=row.temperature, created_at=_utc(row.created_at),
                        updated_at=_utc(row.updated_at), messages=messages or [])


def _message(row: _MessageRow) -> Message:
    return Message(id=row.id, conversation_id=row.conversation_id, role=row.role, content=row.content,
                   created_at=_utc(row.created_at))


def make_engine(db_url: str) -> Engine:
    """An engine for the serving database (conversations and API keys) at `db_url`; a bad URL is a user error."""
    try:
        url = make_url(db_url)
    except ArgumentError as e:
        raise HomegrownError(f"cannot parse database URL {db_url!r}: {e}; use e.g. sqlite:///chats.db "
                             "or postgresql://user:pass@host/db") from e
    if url.get_backend_name() != "sqlite":
        try:
            return create_engine(url, pool_pre_ping=True)
        except NoSuchModuleError as e:
            raise HomegrownError(f"SQLAlchemy has no database dialect for {db_url!r}; use sqlite:///PATH or "
                                 "postgresql://user:pass@host/db") from e
        except ImportError as e:
            raise HomegrownError(f"the database driver for {url.drivername} is not installed ({e}); for "
                                 "Postgres run: pip install 'psycopg[binary]'") from e
    in_memory = not url.database or url.database == ":memory:"
    if not in_memory:
        try:
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HomegrownError(f"cannot create the folder for the conversation database {url.database!r}: "
                                 f"{e.strerror}; pass a writable path with --db-url") from e
    # An in-memory database exists per connection, so all threads must share one connection to see one database.
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
                           **({"poolclass": StaticPool} if in_memory else {}))

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")  # SQLite ignores ON DELETE CASCADE without it
        if not in_memory:
            cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        cur.close()

    return engine


def _add_owner_column(engine: Engine) -> None:
    """Migrate a database made before conversations had owners: add the column, every old row owned by
    LEGACY_OWNER. Plain ALTER TABLE (SQLite and Postgres both take it); nothing else changes, nothing is lost.
    Two processes opening the same old file at once may both try; the loser finds the column there."""
    if "owner" in {c["name"] for c in inspect(engine).get_columns("conversations")}:
        return
    try:
        with engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE conversations ADD COLUMN owner VARCHAR({MAX_OWNER}) NOT NULL "
                              f"DEFAULT '{LEGACY_OWNER}'"))
            conn.execute(text("CREATE INDEX IF NOT EXISTS ix_conversations_owner ON conversations (owner)"))
    except SQLAlchemyError:
        if "owner" not in {c["name"] for c in inspect(engine).get_columns("conversations")}:
            raise


class ConversationStore:
    """CRUD for conversations and their messages, each call on behalf of one owner; safe to share between threads.

    A conversation of another owner behaves exactly like one that does not exist (ConversationNotFound), so
    the API answers 404 for both and ids reveal nothing.
    """

    def __init__(self, db_url: str) -> None:
        self.engine = make_engine(db_url)
        try:
            _Base.metadata.create_all(self.engine)
            _add_owner_column(self.engine)
        except SQLAlchemyError as e:
            raise HomegrownError(f"cannot open the conversation database {db_url!r}: {e.__class__.__name__}: "
                                 f"{e.orig if hasattr(e, 'orig') else e}; check --db-url and that the "
                                 "database is reachable and writable") from e
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()

    def create(self, owner: str, title: str = "New chat", model: str | None = None, system_prompt: str = "",
               temperature: float | None = None) -> Conversation:
        now = _now()
        row = _ConversationRow(id=f"conv_{uuid.uuid4().hex}", owner=owner, title=title, model=model,
                               system_prompt=system_prompt, temperature=temperature,
                               created_at=now, updated_at=now)
        with self._session() as s:
            s.add(row)
        return _conversation(row)

    def list_conversations(self, owner: str, limit: int = 100) -> list[Conversation]:
        """The owner's conversations, most recently active first — the order the sidebar shows."""
        with self._session() as s:
            rows = s.scalars(select(_ConversationRow).where(_ConversationRow.owner == owner)
                             .order_by(_ConversationRow.updated_at.desc(), _ConversationRow.id)
                             .limit(limit)).all()
            return [_conversation(r) for r in rows]

    def get(self, owner: str, conversation_id: str) -> Conversation:
        with self._session() as s:
            row = s.get(_ConversationRow, conversation_id)
            if row is None or row.owner != owner:
                raise ConversationNotFound(f"no conversation {conversation_id!r}; list them with "
                                           "GET /api/conversations")
            msgs = s.scalars(select(_MessageRow).where(_MessageRow.conversation_id == conversation_id)
                             .order_by(_MessageRow.id)).all()
            return _conversation(row, [_message(m) for m in msgs])

    @staticmethod
    def _owned(owner: str, conversation_id: str) -> ColumnElement[bool]:
        """The row of this id, only if this owner's: every write matches on both, so another's is untouched."""
        return (_ConversationRow.id == conversation_id) & (_ConversationRow.owner == owner)

    def update(self, owner: str, conversation_id: str, **changes: Any) -> Conversation:
        """Rename or change settings; only title, model, system_prompt and temperature may change."""
        allowed = {"title", "model", "system_prompt", "temperature"}
        unknown = set(changes) - allowed
        if unknown:
            raise HomegrownError(f"cannot change {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
        with self._session() as s:
            # The write comes first, so a SQLite transaction takes the write lock at once instead of
            # upgrading a read lock (which fails immediately under contention).
            done = s.execute(update(_ConversationRow).where(self._owned(owner, conversation_id))
                             .values(**changes, updated_at=_now()))
            if done.rowcount == 0:
                raise ConversationNotFound(f"no conversation {conversation_id!r}")
        return self.get(owner, conversation_id)

    def rename(self, owner: str, conversation_id: str, title: str) -> Conversation:
        return self.update(owner, conversation_id, title=title)

    def append(self, owner: str, conversation_id: str, role: str, content: str) -> Message:
        """Add one message at the end and mark the conversation as just used."""
        if role not in ROLES:
            raise HomegrownError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        now = _now()
        with self._session() as s:
            done = s.execute(update(_ConversationRow).where(self._owned(owner, conversation_id))
                             .values(updated_at=now))
            if done.rowcount == 0:
                raise ConversationNotFound(f"no conversation {conversation_id!r}")
            row = _MessageRow(conversation_id=conversation_id, role=role, content=content, created_at=now)
            s.add(row)
            s.flush()
            return _message(row)

    def delete(self, owner: str, conversation_id: str) -> None:
        """Remove a conversation; its messages go with it (ON DELETE CASCADE)."""
        with self._session() as s:
            done = s.execute(delete(_ConversationRow).where(self._owned(owner, conversation_id)))
            if done.rowcount == 0:
                raise ConversationNotFound(f"no conversation {conversation_id!r}")
