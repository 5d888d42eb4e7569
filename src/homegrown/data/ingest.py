"""Ingest stage: raw sources → deduplicated text with provenance, split into train and held-out val.

Output (``out_dir``):

* ``train.jsonl.gz`` and ``val.jsonl.gz``: one JSON object per line with ``text``, ``title``,
  ``source`` (public URL), ``licence`` and ``sha256`` (of the UTF-8 text), in input order.
* ``MANIFEST.json``: counts (read, kept, dropped empty / duplicate, per source, bytes), the split rule,
  the extraction settings and the size and sha256 of each output file. It is written last, so its
  presence means the corpus is complete.

The split depends on the page's URL only, not on the run, the order or the other pages: a page
stays in the same split when sources are added or the corpus is rebuilt, so val never leaks into
train. Output is byte-for-byte reproducible (gzip header without time or name).

Run as ``python -m homegrown.data.ingest --source PATH:LICENCE:URL_PREFIX [--exclude PAT ...] ... --out DIR``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from homegrown.data.dedup import ExactDedup
from homegrown.data.extract import TRAFILATURA_OPTIONS, extract_html
from homegrown.data.sources import iter_jsonl, list_files, source_url
from homegrown.errors import HomegrownError
from homegrown.progress import StepProgress

log = logging.getLogger(__name__)

SPLIT_RULE = (
    "val if int(sha256(source URL as UTF-8).hexdigest()[:8], 16) % 1000 < round(holdout_fraction * 1000), "
    "else train"
)
_HTML_SUFFIXES = (".html", ".htm", ".xhtml")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


@dataclass
class SourceSpec:
    """One source tree: where it is, under which licence, and the public URL its files are served at.

    `exclude` holds shell patterns matched against each file's path relative to `path` or a directory
    above it (`_static` drops that directory, `genindex*` every generated index page; see
    `sources.is_excluded`). `path` may also be a single file. Files are read by suffix: HTML is
    extracted, `.txt` is taken as is, `.jsonl[.gz]` gives one page per line (field `text`; `title`
    and `url`/`source` are used when present).
    """

    path: Path
    licence: str
    url_prefix: str
    glob: str = "**/*.html"
    exclude: list[str] = field(default_factory=list)


@dataclass
class SourceStats:
    """Counts for one source; `text_bytes` is the UTF-8 size of the kept text."""

    url_prefix: str
    licence: str
    files: int = 0
    pages_read: int = 0
    kept: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0
    text_bytes: int = 0


@dataclass
class IngestStats:
    """What `ingest` read, kept and dropped, over all sources and per source."""

    pages_read: int = 0
    kept: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0
    train_pages: int = 0
    val_pages: int = 0
    train_text_bytes: int = 0
    val_text_bytes: int = 0
    per_source: list[SourceStats] = field(default_factory=list)


def split_of(source: str, holdout_fraction: float) -> str:
    """'val' or 'train' for a page, from its URL alone (see SPLIT_RULE)."""
    bucket = int(hashlib.sha256(source.encode("utf-8")).hexdigest()[:8], 16) % 1000
    return "val" if bucket < round(holdout_fraction * 1000) else "train"


class _AtomicJsonlGz:
    """A gzip JSONL file written under a temporary name and moved into place only by `commit`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self._raw = self.tmp.open("wb")
        # mtime=0 and no file name in the header: the same records give the same bytes
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=9, mtime=0)
        self._text = io.TextIOWrapper(self._gz, encoding="utf-8", newline="\n")

    def write(self, record: dict) -> None:
        self._text.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _close(self) -> None:
        if not self._raw.closed:
            self._text.close()  # also closes the GzipFile, which writes the trailer
            self._raw.close()

    def commit(self) -> None:
        self._close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._close()
        self.tmp.unlink(missing_ok=True)


def _file_digest(path: Path) -> dict[str, int | str]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _iter_pages(spec: SourceSpec, path: Path) -> Iterator[tuple[str, str | None, str | None]]:
    """Yield (source URL, title, text) for each page in one file; text is None when nothing usable is left."""
    url = source_url(spec.path, path, spec.url_prefix)
    name = path.name.lower()
    if name.endswith(_HTML_SUFFIXES):
        page = extract_html(path.read_bytes(), url=url)
        yield (url, page.title, page.text) if page else (url, None, None)
    elif name.endswith(_JSONL_SUFFIXES):
        for lineno, doc in enumerate(iter_jsonl(path), 1):
            source = doc.meta.get("url") or doc.meta.get("source") or f"{url}#L{lineno}"
            yield source, doc.meta.get("title"), doc.text.strip() or None
    else:
        yield url, None, path.read_text(encoding="utf-8", errors="replace").strip() or None


def ingest(
    sources: list[SourceSpec], out_dir: Path, holdout_fraction: float = 0.05, progress: bool = True
) -> IngestStats:
    """Read, extract, deduplicate and split `sources` into `out_dir`; return the counts (also in MANIFEST).

    Dedup is exact (normalised text) and shared across sources, so the first copy in source order wins.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise HomegrownError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if not sources:
        raise HomegrownError("no sources given; pass at least one source directory")
    # listing every source first fails fast on a missing path, before any output is touched
    files = [list_files(spec.path, spec.glob, spec.exclude) for spec in sources]
    for spec, found in zip(sources, files, strict=True):
        if not found:
            raise HomegrownError(f"no files match {spec.glob!r} under {spec.path} (after excludes)")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "MANIFEST.json").unlink(missing_ok=True)  # the corpus is incomplete until it is rewritten
    stats = IngestStats()
    dedup = ExactDedup()
    writers = {split: _AtomicJsonlGz(out_dir / f"{split}.jsonl.gz") for split in ("train", "val")}
    try:
        done = 0
        with StepProgress("ingest", total=sum(map(len, files)), enabled=progress) as bar:
            for spec, paths in zip(sources, files, strict=True):
                src = SourceStats(url_prefix=spec.url_prefix, licence=spec.licence, files=len(paths))
                stats.per_source.append(src)
                log.info("ingest: %d files from %s (%s)", len(paths), spec.path, spec.licence)
                for path in paths:
                    for source, title, text in _iter_pages(spec, path):
                        src.pages_read += 1
                        if text is None:
                            src.dropped_empty += 1
                        elif dedup.seen(text):
                            src.dropped_duplicate += 1
                        else:
                            src.kept += 1
                            nbytes = len(text.encode("utf-8"))
                            src.text_bytes += nbytes
                            split = split_of(source, holdout_fraction)
                            writers[split].write(
                                {
                                    "text": text,
                                    "title": title,
                                    "source": source,
                                    "licence": spec.licence,
                                    "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                                }
                            )
                            if split == "val":
                                stats.val_pages += 1
                                stats.val_text_bytes += nbytes
                            else:
                                stats.train_pages += 1
                                stats.train_text_bytes += nbytes
                    done += 1
                    bar.update(done, kept=stats.kept + src.kept)
                stats.pages_read += src.pages_read
                stats.kept += src.kept
                stats.dropped_empty += src.dropped_empty
                stats.dropped_duplicate += src.dropped_duplicate
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise

    manifest = {
        "format": "homegrown-corpus/1",
        **{k: v for k, v in asdict(stats).items() if k != "per_source"},
        "holdout_fraction": holdout_fraction,
        "split_rule": SPLIT_RULE,
        "dedup": "exact: sha256 of lowercased, whitespace-collapsed text; first copy in source order kept",
        "extraction": {"tool": "trafilatura", **TRAFILATURA_OPTIONS},
        "sources": [asdict(s) for s in stats.per_source],
        "files": {
            f"{split}.jsonl.gz": _file_digest(out_dir / f"{split}.jsonl.gz") for split in ("train", "val")
        },
    }
    _write_json_atomic(out_dir / "MANIFEST.json", manifest)
    log.info(
        "ingest: kept %d of %d pages (%d empty, %d duplicate); train %d, val %d -> %s",
        stats.kept,
        stats.pages_read,
        stats.dropped_empty,
        stats.dropped_duplicate,
        stats.train_pages,
        stats.val_pages,
        out_dir,
    )
    return stats


class _AddSource(argparse.Action):
    """`--source PATH:LICENCE:URL_PREFIX` starts a new source; the URL prefix may itself contain colons."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        value: str,
        option_string: str | None = None,
    ) -> None:
        parts = value.split(":", 2)
        if len(parts) != 3 or not all(parts[:2]):
            parser.error(f"--source expects PATH:LICENCE:URL_PREFIX, got {value!r}")
        namespace.sources.append(SourceSpec(path=Path(parts[0]), licence=parts[1], url_prefix=parts[2]))


class _SetOnLastSource(argparse.Action):
    """`--exclude` / `--glob` apply to the `--source` given just before them."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        value: str,
        option_string: str | None = None,
    ) -> None:
        if not namespace.sources:
            parser.error(f"{option_string} must follow the --source it applies to")
        spec = namespace.sources[-1]
        if self.dest == "exclude":
            spec.exclude.append(value)
        else:
            spec.glob = value


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: parse sources and run `ingest`; user errors print one line and exit 2."""
    parser = argparse.ArgumentParser(
        prog="python -m homegrown.data.ingest", description=__doc__.splitlines()[0]
    )
    parser.set_defaults(sources=[])
    parser.add_argument(
        "--source",
        action=_AddSource,
        metavar="PATH:LICENCE:URL_PREFIX",
        required=True,
        help="a source tree, its licence (SPDX) and the public URL its files are served at",
    )
    parser.add_argument(
        "--exclude",
        action=_SetOnLastSource,
        metavar="PATTERN",
        help="skip files whose relative path or any path component matches (repeatable)",
    )
    parser.add_argument(
        "--glob", action=_SetOnLastSource, metavar="GLOB", help="files to read, default **/*.html"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--holdout-fraction", type=float, default=0.05)
    parser.add_argument("--no-progress", action="store_true", help="plain log lines even on a terminal")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ingest(args.sources, args.out, holdout_fraction=args.holdout_fraction, progress=not args.no_progress)
    except HomegrownError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
