"""Streaming readers for raw sources: HTML trees, JSONL (optionally gzipped), plain text, the bundled corpus.

Every reader is a generator that holds one file (or one JSONL line) at a time, so a source of any
size streams through the pipeline. Files are visited in sorted order so that every run over the
same input produces the same output (dedup keeps the first copy; order decides which).
"""

from __future__ import annotations

import fnmatch
import gzip
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from homegrown.errors import HomegrownError


@dataclass
class Document:
    """One unit of text and everything known about where it came from (source URL, licence, title …)."""

    text: str
    meta: dict = field(default_factory=dict)


def is_excluded(rel_path: str, exclude: Sequence[str]) -> bool:
    """True when a shell pattern matches the POSIX path relative to the source root, or a directory above it.

    `*` also matches `/`. So `_static` drops that directory, `index.html` only the top-level page,
    `*/index.html` every index page below the top, and `genindex*` all generated index pages.
    """
    return any(
        fnmatch.fnmatchcase(rel_path, pat) or fnmatch.fnmatchcase(rel_path, pat.rstrip("/") + "/*")
        for pat in exclude
    )


def list_files(root: Path, glob: str, exclude: Sequence[str] = ()) -> list[Path]:
    """Sorted files under `root` matching `glob` and no `exclude` pattern; `root` may be a single file.

    Paths only (not contents) are listed up front: sorting needs them, and a progress bar needs the count.
    """
    if not root.exists():
        raise HomegrownError(f"source path {root} does not exist; check the path or unpack the source first")
    if root.is_file():
        return [root]
    return sorted(
        p for p in root.glob(glob) if p.is_file() and not is_excluded(p.relative_to(root).as_posix(), exclude)
    )


def source_url(root: Path, path: Path, url_prefix: str) -> str:
    """Public URL of a file: `url_prefix` + its path relative to `root` (its name if `root` is the file)."""
    rel = path.name if root.is_file() else path.relative_to(root).as_posix()
    return url_prefix.rstrip("/") + "/" + rel if url_prefix else rel


def iter_html_files(
    root: Path, url_prefix: str, glob: str = "**/*.html", exclude: Sequence[str] = ()
) -> Iterator[tuple[Path, str]]:
    """Yield (path, public URL) per HTML file under `root`; the caller reads and extracts one at a time."""
    for path in list_files(root, glob, exclude):
        yield path, source_url(root, path, url_prefix)


def _open_text(path: Path) -> IO[str]:
    """Open a text file for reading, transparently gunzipping `.gz`."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def iter_jsonl(path: Path, text_field: str = "text") -> Iterator[Document]:
    """One Document per line of a `.jsonl` / `.jsonl.gz` file: `text_field` is the text, the rest meta."""
    if not path.is_file():
        raise HomegrownError(f"JSONL file {path} does not exist")
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise HomegrownError(
                    f"{path}:{lineno}: not valid JSON ({err.msg}); fix or remove the line"
                ) from err
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise HomegrownError(
                    f"{path}:{lineno}: expected an object with a string field {text_field!r}"
                )
            text = record.pop(text_field)
            yield Document(text=text, meta=record)


def iter_text_files(root: Path, glob: str = "**/*.txt", exclude: Sequence[str] = ()) -> Iterator[Document]:
    """Yield one Document per plain-text file, with its path in meta."""
    for path in list_files(root, glob, exclude):
        yield Document(text=path.read_text(encoding="utf-8", errors="replace"), meta={"path": str(path)})


def iter_corpus(dir: Path, split: str) -> Iterator[dict]:
    """Stream the records of an ingested corpus split (`{split}.jsonl.gz`, as written by `ingest`)."""
    path = Path(dir) / f"{split}.jsonl.gz"
    if not path.is_file():
        raise HomegrownError(
            f"corpus split {path} not found; build it with `homegrown data ingest` "
            "(the bundled sample: `bash scripts/build_sample.sh`)"
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
