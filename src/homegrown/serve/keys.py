"""API keys of `homegrown serve`: each maps to a user and a role, and only a salted hash of it is stored.

A key looks like `hg-1a2b3c4d_<43 random characters>`: `hg-1a2b3c4d` is its public prefix, kept in the clear
to find the row (and to name the key in `list` and `revoke`); the whole key is checked against a per-key salted
scrypt hash with a constant-time compare, so the database (a file anyone with the backups can read) never
holds a usable key. The key itself is printed once, when it is made.

A revoked key stops working at once, also for a server that was already running: the server looks a key up in
the database, and remembers the answer only while `change_marker` says the database is unchanged (on SQLite,
a pragma that any other connection's or process's commit moves). scrypt is slow on purpose (about 50 ms); a key
that passed it once is remembered in memory by its SHA-256, so a client's later requests cost only the row lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, LargeBinary, String, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from homegrown.errors import HomegrownError
from homegrown.progress import console
from homegrown.serve.store import MAX_OWNER, make_engine

KEY_PREFIX = "hg-"
PREFIX_CHARS = 8
"""Hex characters after `hg-` that find the key's row: 32 bits, re-drawn on the rare clash."""
ROLES = ("user", "admin")
USER_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._@-]{{0,{MAX_OWNER - 1}}}")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_VERIFIED_MAX = 4096


class KeyNotFound(HomegrownError):
    """No key with that id or prefix; the API answers 404."""


class KeyAmbiguous(HomegrownError):
    """An all-digit name that is one key's id and another key's prefix; the API answers 400."""


class _Base(DeclarativeBase):
    pass


class _KeyRow(_Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    user: Mapped[str] = mapped_column(String(MAX_OWNER), index=True)
    role: Mapped[str] = mapped_column(String(8))
    salt: Mapped[bytes] = mapped_column(LargeBinary(16))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class ApiKey:
    """What is known about a key besides its secret: enough to list it and revoke it."""

    id: int
    prefix: str
    user: str
    role: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the user whose conversations it sees, and that user's role."""

    user: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _utc(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def _key(row: _KeyRow) -> ApiKey:
    return ApiKey(id=row.id, prefix=row.prefix, user=row.user, role=row.role, created_at=_utc(row.created_at),
                  revoked_at=_utc(row.revoked_at))


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, maxmem=64 * 1024 * 1024, **_SCRYPT)


def prefix_of(key: str) -> str | None:
    """The public prefix of a well-formed key (`hg-` + 8 hex digits, then `_` and the secret), else None."""
    head, sep, secret = key.partition("_")
    if not sep or not secret or not head.startswith(KEY_PREFIX) or len(head) != len(KEY_PREFIX) + PREFIX_CHARS:
        return None
    return head


def check_user(user: str) -> str:
    if not USER_PATTERN.fullmatch(user):
        raise HomegrownError(f"user name {user!r} is not allowed: 1-{MAX_OWNER} letters, digits, '.', '_', '@' "
                             "or '-', starting with a letter or digit")
    return user


class KeyStore:
    """The api_keys table, in the same database as the conversations; safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            _Base.metadata.create_all(engine)
        except SQLAlchemyError as e:
            raise HomegrownError(f"cannot open the key table in {engine.url!r}: {e.__class__.__name__}; check "
                                 "--db-url and that the database is reachable and writable") from e
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._verified: dict[bytes, tuple[int, bytes]] = {}
        self._changes = 0  # this store's own writes (a connection does not see its own in data_version)
        self._watch: sqlite3.Connection | None = None
        self._watch_lock = threading.Lock()
        url = engine.url
        self._watch_path = (url.database if url.get_backend_name() == "sqlite" and url.database
                            and url.database != ":memory:" else None)
        self._in_memory = url.get_backend_name() == "sqlite" and not self._watch_path

    @classmethod
    def open(cls, db_url: str) -> KeyStore:
        """The key store of the database at `db_url` (as `homegrown serve --db-url` takes it)."""
        return cls(make_engine(db_url))

    def close(self) -> None:
        with self._watch_lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
        self.engine.dispose()

    def change_marker(self) -> tuple[int, int] | None:
        """A value that differs after any write to the database since the last call returned it — by this store,
        or (SQLite file) by any other connection or process, `homegrown serve keys add|revoke` included — so
        answers about keys may be remembered while it stays the same. Costs microseconds and never waits for a
        lock; None when that cannot be known cheaply (a database server, or a busy SQLite file): ask the
        database then."""
        if self._in_memory:  # only this process can reach it, through this store
            return (0, self._changes)
        if self._watch_path is None:
            return None
        with self._watch_lock:
            try:
                if self._watch is None:
                    self._watch = sqlite3.connect(self._watch_path, timeout=0, check_same_thread=False)
                return (self._watch.execute("PRAGMA data_version").fetchone()[0], self._changes)
            except sqlite3.Error:
                return None

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def add(self, user: str, role: str = "user") -> tuple[ApiKey, str]:
        """A new key for `user`: its record and the key itself, which is not stored and cannot be shown again."""
        check_user(user)
        if role not in ROLES:
            raise HomegrownError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        for _ in range(8):
            prefix = KEY_PREFIX + secrets.token_hex(PREFIX_CHARS // 2)
            key = f"{prefix}_{secrets.token_urlsafe(32)}"
            salt = secrets.token_bytes(16)
            row = _KeyRow(prefix=prefix, user=user, role=role, salt=salt, secret_hash=_hash(key, salt),
                          created_at=datetime.now(UTC), revoked_at=None)
            try:
                with self._sessions() as s, s.begin():
                    s.add(row)
            except IntegrityError:  # the prefix is taken: draw another
                continue
            finally:
                self._changes += 1
            return _key(row), key
        raise HomegrownError("could not draw an unused key prefix; try again")

    def list_keys(self) -> list[ApiKey]:
        """Every key ever made, revoked ones included, oldest first."""
        with self._sessions() as s:
            return [_key(r) for r in s.scalars(select(_KeyRow).order_by(_KeyRow.id)).all()]

    def any_keys(self) -> bool:
        """Whether a key was ever made (revoked ones count: revoking the last key must not open the server)."""
        with self._sessions() as s:
            return bool(s.scalar(select(func.count()).select_from(_KeyRow)))

    def find(self, ident: str) -> ApiKey:
        """A key by its number (`3`), its prefix (`hg-1a2b3c4d` or `1a2b3c4d`) or the whole key.

        A prefix's 8 hex digits can all be decimal digits (about 1 key in 40), so an all-digit name is looked up
        both as a number and as a prefix; when it is one key's number and another key's prefix it is refused
        rather than guessed, since `revoke` acts on the answer.
        """
        ident = ident.strip()
        head = ident.partition("_")[0]
        prefix = head if head.startswith(KEY_PREFIX) else KEY_PREFIX + head
        with self._sessions() as s:
            by_id = s.get(_KeyRow, int(ident)) if ident.isdigit() else None
            by_prefix = s.scalar(select(_KeyRow).where(_KeyRow.prefix == prefix)) if head else None
        if by_id is not None and by_prefix is not None and by_id.id != by_prefix.id:
            raise KeyAmbiguous(f"{ident!r} is key {by_id.id}'s number and key {by_prefix.id}'s prefix; "
                               f"name it as {by_prefix.prefix!r} for the prefix")
        row = by_id or by_prefix
        if row is None:
            raise KeyNotFound(f"no API key {ident!r}; see `homegrown serve keys list` for ids and prefixes")
        return _key(row)

    def revoke(self, ident: str) -> ApiKey:
        """Revoke a key (see find); it stops working on the next request. Revoking twice keeps the first time."""
        found = self.find(ident)
        try:
            with self._sessions() as s, s.begin():
                s.execute(update(_KeyRow).where((_KeyRow.id == found.id) & _KeyRow.revoked_at.is_(None))
                          .values(revoked_at=datetime.now(UTC)))
        finally:
            self._changes += 1
        return self.find(str(found.id))

    def authenticate(self, key: str) -> Principal | None:
        """Who `key` belongs to, or None for a malformed, unknown or revoked key."""
        prefix = prefix_of(key)
        if prefix is None:
            return None
        with self._sessions() as s:
            row = s.scalar(select(_KeyRow).where(_KeyRow.prefix == prefix))
        if row is None or row.revoked_at is not None:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        if self._verified.get(digest) != (row.id, row.secret_hash):
            if not hmac.compare_digest(_hash(key, row.salt), row.secret_hash):
                return None
            if len(self._verified) >= _VERIFIED_MAX:
                self._verified.clear()
            self._verified[digest] = (row.id, row.secret_hash)
        return Principal(user=row.user, role=row.role)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def print_new_key(record: ApiKey, key: str) -> None:
    """The key, once, alone on stdout (so `KEY=$(homegrown serve keys add ...)` works); the notes on stderr."""
    console.print(f"added key {record.id} ({record.prefix}) for user {record.user}, role {record.role}",
                  highlight=False, soft_wrap=True)
    print(key, flush=True)
    console.print("this is the only time the key is shown: hand it over now (clients send it as "
                  "'Authorization: Bearer KEY')", highlight=False, soft_wrap=True)


def print_keys(keys: list[ApiKey]) -> None:
    """One key per line on stdout, tab-separated so scripts can cut it: id, prefix, user, role, created, revoked."""
    print("id\tprefix\tuser\trole\tcreated\trevoked")
    for k in keys:
        print(f"{k.id}\t{k.prefix}\t{k.user}\t{k.role}\t{_when(k.created_at)}\t{_when(k.revoked_at)}")
