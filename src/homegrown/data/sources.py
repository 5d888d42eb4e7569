"""Streaming readers for raw sources: HTML trees, WARC, JSONL (.gz/.zst), Parquet, plain text, the bundled corpus.

Every reader is a generator that holds one record at a time (one page, one JSONL line, one Parquet batch),
so a source of any size streams through the pipeline with flat memory. Files are visited in sorted order so
every run over the same input produces the same output (dedup keeps the first copy; order decides which).

A crawl is never clean. `iter_file` turns what is wrong with a file into `Skip(reason)` events instead of
exceptions — corrupt gzip/zstd, a WARC cut short, a broken JSONL line, a binary file, an empty file — after
yielding every good record that came before the damage, so the run completes and counts what it dropped.
Documents over `max_bytes` are cut (and marked `truncated`) without ever reading the rest of them.
"""

from __future__ import annotations

import codecs
import datetime as dt
import fnmatch
import gzip
import io
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from homegrown.errors import HomegrownError

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
WARC_SUFFIXES = (".warc", ".warc.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".txt.gz", ".md")
BINARY_PROBE = 8192
"""A NUL byte in the first this-many bytes marks a file as binary (text formats never contain one)."""


@dataclass
class Document:
    """One unit of text and everything known about where it came from (source URL, licence, title …)."""

    text: str
    meta: dict = field(default_factory=dict)


@dataclass
class SourceSpec:
    """One source: where it is, under which licence, the public URL its files are served at, its name.

    `exclude` holds shell patterns matched against each file's path relative to `path` or a directory
    above it (`_static` drops that directory, `genindex*` every generated index page; see `is_excluded`).
    `path` may also be a single file. Files are read by suffix (see `iter_file`). `name` labels the
    source in the audit and the mixture (`web`, `licensed`, `synthetic` …); empty = the URL's host.
    `text_field` is the JSONL field or Parquet column holding the text.
    """

    path: Path
    licence: str
    url_prefix: str = ""
    glob: str = "**/*.html"
    exclude: list[str] = field(default_factory=list)
    name: str = ""
    text_field: str = "text"

    @property
    def label(self) -> str:
        """The source's name for audit and mixture: `name`, else the URL prefix's host, else the path's name."""
        return self.name or urlsplit(self.url_prefix).hostname or Path(self.path).name


@dataclass
class RawDoc:
    """One document as read, before extraction: HTML bytes (`is_html`) or text, and its provenance."""

    url: str
    content: bytes | str
    is_html: bool
    retrieved: str
    """ISO 8601 UTC: WARC-Date, a record's own date field, or the file's modification time."""
    title: str | None = None
    truncated: bool = False
    invalid_utf8: bool = False


@dataclass(frozen=True)
class Skip:
    """Something in a file that is not a document, with the counted reason (`binary`, `corrupt_gzip` …)."""

    reason: str
    where: str


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
    return sorted(  # named pipes too: a crawl can be streamed in from another process
        p for p in root.glob(glob)
        if (p.is_file() or p.is_fifo()) and not is_excluded(p.relative_to(root).as_posix(), exclude)
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


def numbered_json_lines(lines: Iterable[str]) -> Iterator[tuple[int, Any, json.JSONDecodeError | None]]:
    """(line number, value, None) for each non-blank line, or (line number, None, error) where it is not JSON.

    Every JSONL reader numbers lines the same way; what a bad line means (fatal, reported and skipped,
    counted) is the caller's to decide.
    """
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            yield lineno, None, err
            continue
        yield lineno, value, None


def iter_jsonl(path: Path, text_field: str = "text") -> Iterator[Document]:
    """One Document per line of a trusted `.jsonl` / `.jsonl.gz` file; a bad line is a user error.

    For crawled input use `iter_file`, which counts and skips bad lines instead.
    """
    if not path.is_file():
        raise HomegrownError(f"JSONL file {path} does not exist")
    with _open_text(path) as f:
        for lineno, record, err in numbered_json_lines(f):
            if err is not None:
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
    """Stream the records of an ingested corpus split, shard after shard (layout: data/corpus.py)."""
    from homegrown.data.corpus import iter_split

    yield from iter_split(Path(dir), split)


# ---- crawled input: every reader below yields RawDoc or Skip and never raises on bad bytes ----

_COMPRESSION_ERRORS: tuple[type[BaseException], ...] = (gzip.BadGzipFile, EOFError, zlib.error, OSError)


def _compression_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (*_COMPRESSION_ERRORS, zstandard.ZstdError)


def _mtime_iso(path: Path) -> str:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_capped(f: IO[bytes], max_bytes: int) -> tuple[bytes, bool]:
    """At most `max_bytes` from `f` and whether more was there; the rest is never read."""
    data = f.read(max_bytes + 1)
    return data[:max_bytes], len(data) > max_bytes


def decode_text(data: bytes, truncated: bool) -> tuple[str, bool]:
    """UTF-8 text and whether bytes were invalid (replaced by U+FFFD); a character cut by truncation is dropped."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        return decoder.decode(data, final=not truncated), False
    except UnicodeDecodeError:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        return decoder.decode(data, final=not truncated), True


def _open_binary(path: Path) -> IO[bytes]:
    """Open for reading, decompressing `.gz` / `.zst` as a stream."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.open(path, "rb"))
    return path.open("rb")


def _read_whole(spec: SourceSpec, path: Path, url: str, max_bytes: int, is_html: bool) -> Iterator[RawDoc | Skip]:
    """One document per file (HTML page or text file), capped at `max_bytes`."""
    try:
        with _open_binary(path) as f:
            data, truncated = _read_capped(f, max_bytes)
    except _COMPRESSION_ERRORS:
        yield Skip("corrupt_compression", url)
        return
    if not data.strip():
        yield Skip("empty_file", url)
        return
    if b"\x00" in data[:BINARY_PROBE]:
        yield Skip("binary", url)
        return
    retrieved = _mtime_iso(path)
    if is_html:
        yield RawDoc(url=url, content=data, is_html=True, retrieved=retrieved, truncated=truncated)
        return
    text, invalid = decode_text(data, truncated)
    yield RawDoc(url=url, content=text, is_html=False, retrieved=retrieved, truncated=truncated, invalid_utf8=invalid)


def _first_str(record: dict, *keys: str) -> str | None:
    for key in keys:
        value = record.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _record_doc(record: dict, text: str, url: str, retrieved: str, max_bytes: int) -> RawDoc:
    """A JSONL line or Parquet row as a RawDoc: its own URL, title and date when present."""
    encoded = text.encode("utf-8", errors="replace")
    truncated = len(encoded) > max_bytes
    if truncated:
        text, _ = decode_text(encoded[:max_bytes], truncated=True)
    return RawDoc(
        url=_first_str(record, "url", "source", "id") or url,
        content=text,
        is_html=False,
        retrieved=_first_str(record, "retrieved", "date", "timestamp") or retrieved,
        title=_first_str(record, "title"),
        truncated=truncated,
    )


def _read_jsonl(spec: SourceSpec, path: Path, url: str, max_bytes: int) -> Iterator[RawDoc | Skip]:
    """One document per line; bad lines are counted and skipped, a damaged stream ends the file."""
    retrieved = _mtime_iso(path)
    errors = _compression_errors()
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                if b"\x00" in raw:
                    yield Skip("binary", f"{url}#L{lineno}")
                    continue
                line, invalid = decode_text(raw, truncated=False)
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    yield Skip("bad_json", f"{url}#L{lineno}")
                    continue
                text = record.get(spec.text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    yield Skip("no_text_field", f"{url}#L{lineno}")
                    continue
                doc = _record_doc(record, text, f"{url}#L{lineno}", retrieved, max_bytes)
                doc.invalid_utf8 = invalid
                yield doc
    except errors:
        yield Skip("corrupt_compression", f"{url}#L{lineno + 1}")
        return
    if lineno == 0:
        yield Skip("empty_file" if path.stat().st_size == 0 else "no_documents", url)


def _read_parquet(spec: SourceSpec, path: Path, url: str, max_bytes: int) -> Iterator[RawDoc | Skip]:
    """One document per row of column `spec.text_field`, read a batch at a time (never the whole table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    retrieved = _mtime_iso(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        yield Skip("corrupt_parquet", url)
        return
    names = set(pf.schema_arrow.names)
    if spec.text_field not in names:
        yield Skip("no_text_field", url)
        return
    columns = [c for c in (spec.text_field, "url", "source", "id", "title", "date", "retrieved") if c in names]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=256, columns=list(dict.fromkeys(columns))):
            for record in batch.to_pylist():
                row += 1
                text = record.get(spec.text_field)
                if not isinstance(text, str):
                    yield Skip("no_text_field", f"{url}#row{row}")
                    continue
                yield _record_doc(record, text, f"{url}#row{row}", retrieved, max_bytes)
    except (pa.ArrowException, OSError):
        yield Skip("corrupt_parquet", f"{url}#row{row + 1}")


def _drain(stream: IO[bytes]) -> None:
    while stream.read(1 << 16):
        pass


def _read_warc(spec: SourceSpec, path: Path, url: str, max_bytes: int) -> Iterator[RawDoc | Skip]:
    """One document per WARC `response` record holding HTML (or text); other records are not documents.

    warcio stops quietly at a cut-off file, so truncation is checked here: a record whose block ends
    early (bytes still owed by its Content-Length) is dropped, and the records must reach the file's end.
    """
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    errors = (*_compression_errors(), ArchiveLoadFailed, ValueError)
    seen = end = 0
    try:
        with _open_binary(path) as f:
            magic = f.read(5)
        if magic != b"WARC/":
            yield Skip("empty_file" if not magic else "not_warc", url)
            return
        with path.open("rb") as f:
            records = ArchiveIterator(f)
            for record in records:
                stream = record.content_stream()
                data, truncated = _read_capped(stream, max_bytes)
                _drain(stream)
                end = records.get_record_offset() + records.get_record_length()
                target = record.rec_headers.get_header("WARC-Target-URI") or f"{url}#record{seen + 1}"
                if record.length is None or getattr(record.raw_stream, "limit", 0) > 0:  # cut in headers / block
                    yield Skip("truncated_warc", target)
                    return
                if record.rec_type != "response":
                    continue
                seen += 1
                http = record.http_headers
                ctype = (http.get_header("Content-Type") if http else None) or "text/html"
                status = http.get_statuscode() if http else "200"
                if not str(status).startswith("2"):
                    yield Skip("http_status", target)
                    continue
                if "html" not in ctype and not ctype.startswith("text/"):
                    yield Skip("not_html", target)
                    continue
                if not data.strip():
                    yield Skip("empty_file", target)
                    continue
                if b"\x00" in data[:BINARY_PROBE]:
                    yield Skip("binary", target)
                    continue
                date = record.rec_headers.get_header("WARC-Date") or _mtime_iso(path)
                if "html" in ctype:
                    yield RawDoc(url=target, content=data, is_html=True, retrieved=date, truncated=truncated)
                else:
                    text, invalid = decode_text(data, truncated)
                    yield RawDoc(target, text, False, date, truncated=truncated, invalid_utf8=invalid)
    except errors:
        yield Skip("truncated_warc", f"{url}#record{seen + 1}")
        return
    if path.stat().st_size - end > 4:  # an uncompressed WARC ends with the last record's two CRLFs
        yield Skip("truncated_warc", f"{url}#record{seen + 1}")


def file_kind(path: Path) -> str | None:
    """`html`, `warc`, `jsonl`, `parquet` or `text` from the file name; None for anything else."""
    name = path.name.lower()
    for kind, suffixes in (
        ("html", HTML_SUFFIXES),
        ("warc", WARC_SUFFIXES),
        ("jsonl", JSONL_SUFFIXES),
        ("parquet", PARQUET_SUFFIXES),
        ("text", TEXT_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return kind
    return None


def iter_file(spec: SourceSpec, path: Path, max_bytes: int) -> Iterator[RawDoc | Skip]:
    """Every document in one input file of `spec`, by suffix, or a `Skip` saying why something was dropped."""
    url = source_url(Path(spec.path), path, spec.url_prefix)
    kind = file_kind(path)
    if kind in ("html", "text"):
        yield from _read_whole(spec, path, url, max_bytes, is_html=kind == "html")
    elif kind == "warc":
        yield from _read_warc(spec, path, url, max_bytes)
    elif kind == "jsonl":
        yield from _read_jsonl(spec, path, url, max_bytes)
    elif kind == "parquet":
        yield from _read_parquet(spec, path, url, max_bytes)
    else:
        yield Skip("unsupported_type", url)
