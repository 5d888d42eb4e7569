"""The conversation store on a real SQLite file: CRUD, cascade, threads, and data surviving a reopen."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from homegrown.errors import HomegrownError
from homegrown.serve.store import ConversationNotFound, ConversationStore


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
    a = store.create(title="first", model="tiny", system_prompt="be brief", temperature=0.3)
    time.sleep(0.01)
    b = store.create()
    assert a.id != b.id and b.title == "New chat" and b.temperature is None
    assert [c.id for c in store.list_conversations()] == [b.id, a.id], "newest first"

    got = store.get(a.id)
    assert (got.title, got.model, got.system_prompt, got.temperature) == ("first", "tiny", "be brief", 0.3)
    assert got.messages == []

    time.sleep(0.01)
    renamed = store.rename(a.id, "renamed")
    assert renamed.title == "renamed" and renamed.updated_at > a.updated_at
    assert [c.id for c in store.list_conversations()] == [a.id, b.id], "a change moves it to the top"
    changed = store.update(b.id, temperature=1.2, system_prompt="you are terse", model="other")
    assert (changed.temperature, changed.system_prompt, changed.model) == (1.2, "you are terse", "other")


def test_messages_keep_their_order(store: ConversationStore) -> None:
    c = store.create()
    for i, role in enumerate(["system", "user", "assistant", "user"]):
        store.append(c.id, role, f"text {i} — ünïcode ✓")
    msgs = store.get(c.id).messages
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user"]
    assert [m.content for m in msgs] == [f"text {i} — ünïcode ✓" for i in range(4)]
    assert all(m.conversation_id == c.id for m in msgs)


def test_unknown_ids_and_bad_values_are_clear_errors(store: ConversationStore) -> None:
    c = store.create()
    for call in (lambda: store.get("conv_missing"), lambda: store.rename("conv_missing", "x"),
                 lambda: store.append("conv_missing", "user", "x"), lambda: store.delete("conv_missing")):
        with pytest.raises(ConversationNotFound, match="conv_missing"):
            call()
    with pytest.raises(HomegrownError, match="unknown role 'robot'"):
        store.append(c.id, "robot", "x")
    with pytest.raises(HomegrownError, match="cannot change id"):
        store.update(c.id, id="conv_other")
    assert store.get(c.id).messages == [], "a refused append stores nothing"


def test_delete_cascades_to_messages(store: ConversationStore, db_path: Path) -> None:
    keep, drop = store.create(title="keep"), store.create(title="drop")
    for c in (keep, drop):
        store.append(c.id, "user", "hello")
        store.append(c.id, "assistant", "hi")
    store.delete(drop.id)
    with pytest.raises(ConversationNotFound):
        store.get(drop.id)
    assert [c.id for c in store.list_conversations()] == [keep.id]
    # Look at the file with plain sqlite3: the dropped conversation's messages are really gone.
    with sqlite3.connect(db_path) as raw:
        rows = raw.execute("SELECT conversation_id, COUNT(*) FROM messages GROUP BY conversation_id").fetchall()
    assert rows == [(keep.id, 2)]


def test_concurrent_appends_from_threads(store: ConversationStore) -> None:
    convs = [store.create(title=f"c{i}") for i in range(3)]
    n_threads, per_thread = 8, 15
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                store.append(convs[(t + i) % len(convs)].id, "user", f"t{t}-{i}")
        except BaseException as e:  # collected and asserted below; a thread cannot fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    stored = [m.content for c in convs for m in store.get(c.id).messages]
    assert sorted(stored) == sorted(f"t{t}-{i}" for t in range(n_threads) for i in range(per_thread))
    for c in convs:  # each thread's own messages stay in the order it appended them
        by_thread: dict[str, list[int]] = {}
        for m in store.get(c.id).messages:
            t, i = m.content[1:].split("-")
            by_thread.setdefault(t, []).append(int(i))
        assert all(seq == sorted(seq) for seq in by_thread.values())


def test_reopening_the_file_keeps_everything(db_path: Path) -> None:
    first = ConversationStore(f"sqlite:///{db_path}")
    c = first.create(title="persisted", model="m", temperature=0.7)
    first.append(c.id, "user", "question")
    first.append(c.id, "assistant", "answer")
    first.close()

    again = ConversationStore(f"sqlite:///{db_path}")
    got = again.get(c.id)
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
    th = threading.Thread(target=lambda: made.append(store.create(title="from a thread").id))
    th.start()
    th.join()
    assert [c.title for c in store.list_conversations()] == ["from a thread"]
    store.append(made[0], "user", "hi")
    assert store.get(made[0]).messages[0].content == "hi"
    store.close()
