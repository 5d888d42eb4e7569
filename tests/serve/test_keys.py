"""The key store on a real SQLite file: keys are found, checked and revoked, and the file never holds a key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from homegrown.errors import HomegrownError
from homegrown.serve import keys as keys_module
from homegrown.serve.auth import LEGACY, OPEN, Authenticator
from homegrown.serve.keys import KeyAmbiguous, KeyNotFound, KeyStore, Principal, prefix_of


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "serve.sqlite"


@pytest.fixture
def keys(db_path: Path):
    store = KeyStore.open(f"sqlite:///{db_path}")
    yield store
    store.close()


def test_a_key_works_for_its_user_only_until_revoked(keys: KeyStore) -> None:
    assert not keys.any_keys()
    alice, alice_key = keys.add("alice")
    bob, bob_key = keys.add("bob", "admin")
    assert alice_key.startswith("hg-") and prefix_of(alice_key) == alice.prefix != bob.prefix
    assert keys.authenticate(alice_key) == Principal("alice", "user")
    assert keys.authenticate(bob_key) == Principal("bob", "admin") and keys.authenticate(bob_key).is_admin
    assert keys.authenticate(alice_key) == Principal("alice", "user"), "a second check (remembered) agrees"
    # Right prefix, wrong secret; a malformed key; a key of the right shape nobody made.
    assert keys.authenticate(alice.prefix + "_" + "x" * 43) is None
    assert keys.authenticate(alice_key[:-1]) is None
    assert keys.authenticate("sk-anything") is None and keys.authenticate(alice.prefix) is None
    assert keys.authenticate("hg-00000000_" + "y" * 43) is None

    revoked = keys.revoke(alice.prefix)
    assert revoked.id == alice.id and not revoked.active and revoked.revoked_at is not None
    assert keys.authenticate(alice_key) is None, "a remembered key is refused once revoked"
    assert keys.revoke(str(alice.id)).revoked_at == revoked.revoked_at, "revoking again keeps the first time"
    assert keys.authenticate(bob_key) == Principal("bob", "admin")
    assert keys.any_keys(), "revoked keys still count: revoking every key must not open the server"
    assert [(k.user, k.role, k.active) for k in keys.list_keys()] == [("alice", "user", False), ("bob", "admin", True)]


def test_find_by_id_prefix_or_whole_key(keys: KeyStore) -> None:
    made, key = keys.add("carol")
    for ident in (str(made.id), made.prefix, made.prefix.removeprefix("hg-"), key, f"  {made.prefix} "):
        assert keys.find(ident).id == made.id, ident
    for ident in ("99", "hg-zzzzzzzz", "nonsense", ""):
        with pytest.raises(KeyNotFound):
            keys.find(ident)


def test_an_all_digit_prefix_is_found_and_a_clash_with_an_id_is_refused(
        keys: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """About 1 prefix in 40 is all decimal digits (CI once drew `hg-63106646`): it must still be found by its
    digits, and when those digits are also another key's number, revoking must refuse rather than guess."""
    draws = iter(["00000002", "63106646"])
    monkeypatch.setattr(keys_module.secrets, "token_hex", lambda _n: next(draws))
    first, _ = keys.add("dave")
    second, second_key = keys.add("erin")
    assert (first.id, first.prefix, second.id, second.prefix) == (1, "hg-00000002", 2, "hg-63106646")
    for ident, wanted in (("63106646", second), ("hg-00000002", first), ("1", first), ("2", second),
                          (second_key, second)):
        assert keys.find(ident).id == wanted.id, ident
    with pytest.raises(KeyAmbiguous, match="hg-00000002"):
        keys.revoke("00000002")
    assert all(k.active for k in keys.list_keys()), "a refused revoke revokes nothing"


def test_the_database_holds_no_key(keys: KeyStore, db_path: Path) -> None:
    made = [keys.add(user) for user in ("alice", "bob")]
    keys.close()
    raw_bytes = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))  # with any WAL file
    with sqlite3.connect(db_path) as raw:
        rows = raw.execute("SELECT prefix, user, salt, secret_hash FROM api_keys ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(m.prefix, m.user) for m, _ in made]
    for (_, key), (_, _, salt, digest) in zip(made, rows, strict=True):
        secret = key.partition("_")[2]
        assert key.encode() not in raw_bytes and secret.encode() not in raw_bytes
        assert secret[:16].encode() not in raw_bytes, "not even part of the secret"
        assert len(salt) == 16 and len(digest) == 32
    assert rows[0][2] != rows[1][2], "each key has its own salt"


def test_bad_user_names_and_roles_are_refused(keys: KeyStore) -> None:
    for user in ("", "two words", "-dash-first", "x" * 65, "ünïcode", "a/b"):
        with pytest.raises(HomegrownError, match="user name"):
            keys.add(user)
    with pytest.raises(HomegrownError, match="unknown role 'root'"):
        keys.add("alice", "root")
    assert keys.list_keys() == []


def test_change_marker_moves_with_every_write_from_any_connection(keys: KeyStore, db_path: Path) -> None:
    """What lets the server remember key answers: the marker stays while nothing is written and moves when this
    store, or another connection (another process: `homegrown serve keys add|revoke`), writes."""
    first = keys.change_marker()
    assert first is not None and keys.change_marker() == first
    alice, _ = keys.add("alice")
    after_add = keys.change_marker()
    assert after_add != first and keys.change_marker() == after_add
    other = KeyStore.open(f"sqlite:///{db_path}")
    try:
        other.revoke(alice.prefix)
    finally:
        other.close()
    assert keys.change_marker() != after_add
    with sqlite3.connect(db_path) as raw:  # any commit to the file, by anyone
        raw.execute("UPDATE api_keys SET role = 'admin'")
    marker = keys.change_marker()
    assert marker != after_add and keys.change_marker() == marker


def test_remembered_answers_are_forgotten_when_a_key_is_revoked_elsewhere(keys: KeyStore, db_path: Path) -> None:
    auth = Authenticator(None, keys)
    assert auth.known("") is None, "nothing is known before the database was asked"
    assert auth.principal("") == OPEN and auth.known("") == OPEN, "an open server: no query on the next request"
    alice, alice_key = keys.add("alice")
    header = f"Bearer {alice_key}"
    assert auth.known("") is None and auth.principal("") is None, "the first key closed the server"
    assert auth.known(header) is None and auth.principal(header) == Principal("alice", "user")
    assert auth.known(header) == Principal("alice", "user")
    other = KeyStore.open(f"sqlite:///{db_path}")
    try:
        other.revoke(alice.prefix)
    finally:
        other.close()
    assert auth.known(header) is None and auth.principal(header) is None
    legacy = Authenticator("secret", keys)
    assert legacy.known("Bearer secret") == LEGACY, "the --api-key needs no database"
