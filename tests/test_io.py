"""Atomic writes: a reader sees the old content or the new, never half; a failed write leaves no litter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homegrown.io import (
    atomic_dir,
    atomic_open,
    atomic_path,
    remove_stale_temps,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_writes_replace_whole_files_and_create_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.json"
    write_json_atomic(target, {"n": 1, "word": "café"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"n": 1, "word": "café"}
    assert "café" in target.read_text(encoding="utf-8")  # non-ASCII kept, not \\u-escaped
    write_text_atomic(target, "short")
    assert target.read_text() == "short"
    write_bytes_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with atomic_open(target) as f:
        f.write("line\n")
    assert target.read_text() == "line\n"
    assert _names(target.parent) == ["x.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half of the new")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible until the block ends
        raise RuntimeError
    assert _names(tmp_path) == ["x.txt"]


def test_atomic_open_refuses_append(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whole files"), atomic_open(tmp_path / "x", "a"):
        pass


def test_a_directory_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("1")
        assert not final.exists()
    assert _names(final) == ["weights"]
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "weights").write_text("2")
        raise RuntimeError
    assert (final / "weights").read_text() == "1" and _names(tmp_path) == ["ckpt"]
    with atomic_dir(final) as tmp:
        (tmp / "other").write_text("3")
    assert _names(final) == ["other"]  # replaced, not merged


def test_remove_stale_temps_clears_what_killed_writers_left_and_nothing_else(tmp_path):
    target = tmp_path / "part[1].jsonl.gz"
    stale = [tmp_path / ".part[1].jsonl.gz.123.tmp", tmp_path / ".part[1].jsonl.gz.456.tmp"]
    others = [tmp_path / ".part[2].jsonl.gz.123.tmp", tmp_path / "part[1].jsonl.gz.pre", target]
    for p in stale + others:
        p.write_text("x")
    remove_stale_temps(target)
    assert [p.exists() for p in stale] == [False, False] and all(p.exists() for p in others)
