"""The conversation store on a real SQLite file: CRUD, cascade, threads, and data surviving a reopen."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from homegrown.errors import HomegrownError
from homegrown.serve.store import ConversationNotFound, ConversationStore

OWNER = "alice"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "chats.db"


@pytest.fixture
def store(db_path: Path):
    s = ConversationStore(f"sqlite:///{db_path}")
    yield s
    s.close()


def test_create_get_list_rename(store: ConversationStore, db_path: Path) -> None:
    assert db_path.exists(), "the parent folder is created and the file made on open"
    a = store.create(OWNER, title="first", model="tiny", system_prompt="be brief", temperature=0.3)
    time.sleep(0.01)
    b = store.create(OWNER)
    assert a.id != b.id and b.title == "New chat" and b.temperature is None
    assert [c.id for c in store.list_conversations(OWNER)] == [b.id, a.id], "newest first"

    got = store.get(OWNER, a.id)
    assert (got.title, got.model, got.system_prompt, got.temperature) == ("first", "tiny", "be brief", 0.3)
    assert got.messages == []

    time.sleep(0.01)
    renamed = store.rename(OWNER, a.id, "renamed")
    assert renamed.title == "renamed" and renamed.updated_at > a.updated_at
    assert [c.id for c in store.list_conversations(OWNER)] == [a.id, b.id], "a change moves it to the top"
    changed = store.update(OWNER, b.id, temperature=1.2, system_prompt="you are terse", model="other")
    assert (changed.temperature, changed.system_prompt, changed.model) == (1.2, "you are terse", "other")


def test_messages_keep_their_order(store: ConversationStore) -> None:
    c = store.create(OWNER)
    for i, role in enumerate(["system", "user", "assistant", "user"]):
        store.append(OWNER, c.id, role, f"text {i} — ünïcode ✓")
    msgs = store.get(OWNER, c.id).messages
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user"]
    assert [m.content for m in msgs] == [f"text {i} — ünïcode ✓" for i in range(4)]
    assert all(m.conversation_id == c.id for m in msgs)


def test_unknown_ids_and_bad_values_are_clear_errors(store: ConversationStore) -> None:
    c = store.create(OWNER)
    for call in (lambda: store.get(OWNER, "conv_missing"), lambda: store.rename(OWNER, "conv_missing", "x"),
                 lambda: store.append(OWNER, "conv_missing", "user", "x"), lambda: store.delete(OWNER, "conv_missing")):
        with pytest.raises(ConversationNotFound, match="conv_missing"):
            call()
    with pytest.raises(HomegrownError, match="unknown role 'robot'"):
        store.append(OWNER, c.id, "robot", "x")
    with pytest.raises(HomegrownError, match="cannot change id"):
        store.update(OWNER, c.id, id="conv_other")
    assert store.get(OWNER, c.id).messages == [], "a refused append stores nothing"


def test_delete_cascades_to_messages(store: ConversationStore, db_path: Path) -> None:
    keep, drop = store.create(OWNER, title="keep"), store.create(OWNER, title="drop")
    for c in (keep, drop):
        store.append(OWNER, c.id, "user", "hello")
        store.append(OWNER, c.id, "assistant", "hi")
    store.delete(OWNER, drop.id)
    with pytest.raises(ConversationNotFound):
        store.get(OWNER, drop.id)
    assert [c.id for c in store.list_conversations(OWNER)] == [keep.id]
    # Look at the file with plain sqlite3: the dropped conversation's messages are really gone.
    with sqlite3.connect(db_path) as raw:
        rows = raw.execute("SELECT conversation_id, COUNT(*) FROM messages GROUP BY conversation_id").fetchall()
    assert rows == [(keep.id, 2)]


def test_concurrent_appends_from_threads(store: ConversationStore) -> None:
    convs = [store.create(OWNER, title=f"c{i}") for i in range(3)]
    n_threads, per_thread = 8, 15
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                store.append(OWNER, convs[(t + i) % len(convs)].id, "user", f"t{t}-{i}")
        except BaseException as e:  # collected and asserted below; a thread cannot fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    stored = [m.content for c in convs for m in store.get(OWNER, c.id).messages]
    assert sorted(stored) == sorted(f"t{t}-{i}" for t in range(n_threads) for i in range(per_thread))
    for c in convs:  # each thread's own messages stay in the order it appended them
        by_thread: dict[str, list[int]] = {}
        for m in store.get(OWNER, c.id).messages:
            t, i = m.content[1:].split("-")
            by_thread.setdefault(t, []).append(int(i))
        assert all(seq == sorted(seq) for seq in by_thread.values())


def test_reopening_the_file_keeps_everything(db_path: Path) -> None:
    first = ConversationStore(f"sqlite:///{db_path}")
    c = first.create(OWNER, title="persisted", model="m", temperature=0.7)
    first.append(OWNER, c.id, "user", "question")
    first.append(OWNER, c.id, "assistant", "answer")
    first.close()

    again = ConversationStore(f"sqlite:///{db_path}")
    got = again.get(OWNER, c.id)
    assert (got.title, got.model, got.temperature) == ("persisted", "m", 0.7)
    assert [(m.role, m.content) for m in got.messages] == [("user", "question"), ("assistant", "answer")]
    assert got.created_at == c.created_at
    again.close()


def test_bad_database_url_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(HomegrownError, match="cannot parse database URL"):
        ConversationStore("not a url")
    with pytest.raises(HomegrownError, match="no database dialect"):
        ConversationStore("nosuchdb://host/db")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(HomegrownError, match="db-url"):
        ConversationStore(f"sqlite:///{blocker}/sub/chats.db")


def test_in_memory_database_is_shared_by_threads() -> None:
    """sqlite:// (no file) is one database for the whole store, not one per thread."""
    store = ConversationStore("sqlite://")
    made: list[str] = []
    th = threading.Thread(target=lambda: made.append(store.create(OWNER, title="from a thread").id))
    th.start()
    th.join()
    assert [c.title for c in store.list_conversations(OWNER)] == ["from a thread"]
    store.append(OWNER, made[0], "user", "hi")
    assert store.get(OWNER, made[0]).messages[0].content == "hi"
    store.close()


def test_each_owner_sees_only_their_own(store: ConversationStore) -> None:
    """Another owner's conversation is not found by any call, exactly like one that does not exist."""
    mine = store.create(OWNER, title="alice's")
    store.append(OWNER, mine.id, "user", "private")
    theirs = store.create("bob", title="bob's")
    assert [c.id for c in store.list_conversations(OWNER)] == [mine.id]
    assert [c.id for c in store.list_conversations("bob")] == [theirs.id]
    for call in (lambda: store.get("bob", mine.id), lambda: store.rename("bob", mine.id, "taken"),
                 lambda: store.append("bob", mine.id, "user", "x"), lambda: store.delete("bob", mine.id)):
        with pytest.raises(ConversationNotFound):
            call()
    got = store.get(OWNER, mine.id)
    assert (got.owner, got.title, [m.content for m in got.messages]) == (OWNER, "alice's", ["private"])


LEGACY_DB = Path(__file__).parent / "data" / "conversations_before_owners.sqlite"
"""A database written by the store before conversations had owners (main at 2c5d4dd): two conversations, the
first with a system, user and assistant message, the second with one user message."""


def test_a_database_from_before_owners_is_migrated(tmp_path: Path) -> None:
    from homegrown.serve.store import LEGACY_OWNER

    path = tmp_path / "old.sqlite"
    path.write_bytes(LEGACY_DB.read_bytes())
    with sqlite3.connect(path) as raw:
        assert "owner" not in [r[1] for r in raw.execute("PRAGMA table_info(conversations)")]
        before = raw.execute("SELECT * FROM conversations ORDER BY id").fetchall()
        before_messages = raw.execute("SELECT * FROM messages ORDER BY id").fetchall()
    store = ConversationStore(f"sqlite:///{path}")
    listed = store.list_conversations(LEGACY_OWNER)
    assert [c.title for c in listed] == ["Second chat", "Packaging wheels"], "everything old is the legacy user's"
    assert store.list_conversations(OWNER) == []
    old = store.get(LEGACY_OWNER, listed[1].id)
    assert (old.model, old.system_prompt, old.temperature) == ("small", "Be brief.", 0.5)
    assert [(m.role, m.content) for m in old.messages] == [
        ("system", "Be brief."), ("user", "How do I build a wheel?"),
        ("assistant", "Run `python -m build` — ünïcode ✓")]
    # The migrated file keeps working for both old and new owners, and reopening it changes nothing more.
    store.append(LEGACY_OWNER, old.id, "user", "and now?")
    new = store.create(OWNER, title="after the upgrade")
    store.close()
    again = ConversationStore(f"sqlite:///{path}")
    assert [c.id for c in again.list_conversations(OWNER)] == [new.id]
    assert again.get(LEGACY_OWNER, old.id).messages[-1].content == "and now?"
    again.close()
    with sqlite3.connect(path) as raw:
        after = raw.execute("SELECT id, title, model, system_prompt, temperature, created_at, owner "
                            "FROM conversations WHERE owner = ? ORDER BY id", (LEGACY_OWNER,)).fetchall()
        after_messages = raw.execute("SELECT * FROM messages ORDER BY id").fetchall()
    assert [row[:6] for row in before] == [row[:6] for row in after], "the old rows are unchanged"
    assert {row[6] for row in after} == {LEGACY_OWNER}
    assert after_messages[:len(before_messages)] == before_messages, "no old message lost or changed"
