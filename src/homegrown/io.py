"""Atomic writes: the one place that knows "write under a temporary name, then rename into place".

A reader (another command, a resumed run, a crash-restart) sees the old file or the new one, never half of
one: rename is atomic on POSIX filesystems. Temporary names are hidden siblings (`.NAME.PID.tmp`), so they
sit on the same filesystem as their target, never look like a finished file (checkpoint and shard listings
match names exactly), and two processes writing into one directory (ingest shards) never share one.
Directories are assembled under `.NAME.tmp` instead, the same name in every rank of a distributed job.
A leaf module: it imports nothing from homegrown.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def temp_sibling(path: Path) -> Path:
    """The temporary name `path` is written under before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temps(path: Path) -> None:
    """Delete temporary siblings of `path` left by killed writers (any PID).

    Only for a caller that is the sole writer of `path` (an ingest part has one owner): a live writer's
    temporary file would be pulled from under it. Resumed runs call it so a kill leaves no litter behind."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a file name (safetensors, matplotlib, GGUF …).

    On success the temporary file replaces `path`; on any exception it is removed and `path` is untouched.
    The parent directory is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file for writing (`w` or `wb`); it replaces `path` when the block ends cleanly."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp, tmp.open(mode, encoding=None if "b" in mode else encoding) as f:
        yield f


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: Path, obj: Any, indent: int = 2) -> Path:
    """Write `obj` as JSON (UTF-8, non-ASCII kept, trailing newline) to `path` atomically; returns `path`."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def temp_dir_of(final: Path) -> Path:
    """The temporary name directory `final` is assembled under: the same in every process (see `start_dir`)."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp")


def start_dir(final: Path) -> Path:
    """A fresh, empty temporary directory beside `final`, to be moved into place by `finish_dir`.

    Its name does not depend on the process, so that every rank of a distributed job writes into the one
    directory rank 0 created (checkpoints). Most callers want `atomic_dir`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_of(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def finish_dir(tmp: Path, final: Path) -> Path:
    """Move the finished temporary directory `tmp` to `final` in one rename, replacing an existing `final`."""
    final = Path(final)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `final`; when the block ends cleanly it replaces `final`.

    A directory is finished by one rename, so a listing sees the whole of it or none of it (checkpoints, HF
    exports, the copied corpus). An existing `final` is removed just before the rename. On an exception the
    temporary directory is removed and `final` is untouched.
    """
    tmp = start_dir(final)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finish_dir(tmp, final)
