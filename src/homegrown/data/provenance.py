"""Lineage of every kept document: the manifest, the opt-out list and the audit (`forget` is data/forget.py).

Copyright and privacy questions are about single documents ("was my page in it?", "remove it"), so
every kept document has a manifest row next to the corpus (``manifest.jsonl.gz``, same order as the
corpus): id, source URL, source name, licence, retrieval time, sha256 of the kept text, language,
characters, the quality rules it passed, PII replaced. ``MANIFEST.json`` records the sha256 of the
manifest and both splits and is written last, so the three files are committed together.

Opt-out list format (one entry per line, ``#`` starts a comment)::

    domain: example.com                 # that host and every subdomain
    prefix: https://example.org/blog/   # every URL starting with this
    sha256: 9f86d081884c7d65…           # a document whose text (extracted or kept) has this hash

A bare line is read by its shape: 64 hex digits are a hash, ``http(s)://…`` a prefix, anything else
a domain. Entries are honoured at ingest (dropped and counted per kind) and `forget` removes documents
already ingested, logging what it removed and which checkpoints saw them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from homegrown.data.corpus import MANIFEST_NAME, SPLITS, iter_jsonl_gz, list_shards
from homegrown.errors import HomegrownError
from homegrown.io import atomic_path, remove_stale_temps, temp_sibling
from homegrown.layout import MANIFEST, RunLayout

__all__ = ["MANIFEST_NAME", "SPLITS", "AtomicJsonlGz", "OptOut", "audit", "iter_documents", "iter_documents_of",
           "iter_jsonl_gz"]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class AtomicJsonlGz:
    """A gzip JSONL file written under a temporary name and moved into place only by `commit`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        remove_stale_temps(self.path)  # this writer owns the file: what a killed run left is garbage
        self.tmp = temp_sibling(self.path)
        self._raw = self.tmp.open("wb")
        # mtime=0 and no file name in the header: the same records give the same bytes
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=6, mtime=0)
        self._text = io.TextIOWrapper(self._gz, encoding="utf-8", newline="\n")

    def write(self, record: dict) -> None:
        self._text.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        """Finish the temporary file (gzip trailer) without moving it into place."""
        if not self._raw.closed:
            self._text.close()  # also closes the GzipFile, which writes the trailer
            self._raw.close()

    def commit(self) -> None:
        self.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)


def file_digest(path: Path) -> dict[str, int | str]:
    """Size and sha256 of a file, as recorded in MANIFEST.json."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def doc_id(source: str, sha256: str) -> str:
    """A stable id from the URL and the content hash: the same page with the same text keeps its id."""
    return hashlib.sha256(f"{source}\n{sha256}".encode()).hexdigest()[:16]


# ---- opt-out ----


@dataclass
class OptOut:
    """Domains, URL prefixes and content hashes whose documents must not be in the corpus."""

    domains: set[str] = field(default_factory=set)
    prefixes: list[str] = field(default_factory=list)
    hashes: set[str] = field(default_factory=set)
    sha256: str = ""
    """Of the list file, recorded in MANIFEST.json so a corpus says which list it honoured."""

    @classmethod
    def load(cls, path: Path | str | None) -> OptOut:
        """Parse the list (format in the module docstring); no path → an empty list."""
        if not path:
            return cls()
        path = Path(path)
        if not path.is_file():
            raise HomegrownError(f"opt-out list {path} does not exist; pass an existing file or leave it out")
        raw = path.read_bytes()
        out = cls(sha256=hashlib.sha256(raw).hexdigest())
        for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            kind, sep, value = entry.partition(":")
            if sep and kind.strip().lower() in ("domain", "prefix", "sha256"):
                kind, value = kind.strip().lower(), value.strip()
            else:
                value = entry
                kind = "sha256" if _HEX64.match(entry.lower()) else "prefix" if "://" in entry else "domain"
            if not value:
                raise HomegrownError(f"{path}:{lineno}: empty {kind} entry; write e.g. `domain: example.com`")
            if kind == "sha256":
                if not _HEX64.match(value.lower()):
                    raise HomegrownError(f"{path}:{lineno}: {value!r} is not a sha256 (64 hex digits)")
                out.hashes.add(value.lower())
            elif kind == "prefix":
                out.prefixes.append(value)
            else:
                out.domains.add(value.lower().lstrip(".").rstrip("/"))
        return out

    def __len__(self) -> int:
        return len(self.domains) + len(self.prefixes) + len(self.hashes)

    def match(self, url: str, hashes: Iterable[str] = ()) -> str | None:
        """`opt_out_domain` / `opt_out_prefix` / `opt_out_hash` when the document is opted out, else None."""
        if self.domains:
            host = (urlsplit(url).hostname or "").lower()
            parts = host.split(".")
            if any(".".join(parts[i:]) in self.domains for i in range(len(parts))):
                return "opt_out_domain"
        if any(url.startswith(p) for p in self.prefixes):
            return "opt_out_prefix"
        if any(h in self.hashes for h in hashes):
            return "opt_out_hash"
        return None


# ---- reading a corpus with its manifest ----


def corpus_dir_of(run: Path) -> Path:
    """`RUN/corpus` for a run directory, or `run` itself when it is a corpus directory."""
    run = Path(run)
    if RunLayout(run).corpus_done():
        return RunLayout(run).corpus
    if (run / MANIFEST).is_file():
        return run
    raise HomegrownError(f"{run} holds no corpus (no MANIFEST.json in it or in {run}/corpus); ingest one first")


def _row_from_record(record: dict, split: str) -> dict:
    """A manifest row for a corpus built before manifests existed (e.g. a copy of an old sample)."""
    return {
        "id": doc_id(record["source"], record["sha256"]),
        "source": record["source"],
        "name": urlsplit(record["source"]).hostname or "unknown",
        "licence": record.get("licence") or "unknown",
        "language": "unknown",
        "sha256": record["sha256"],
        "chars": len(record["text"]),
        "split": split,
    }


def iter_documents_of(shard: dict[str, Path]) -> Iterator[tuple[dict, dict]]:
    """(corpus record, manifest row) for every document of one shard (corpus.list_shards), in manifest order.

    The manifest and the splits are written in the same order, so they are zipped, not joined through an
    in-memory index; a hash mismatch means the files were edited apart and is reported.
    """
    records = {split: iter_jsonl_gz(shard[split]) for split in SPLITS}
    if not shard["manifest"].is_file():
        for split in SPLITS:
            for record in records[split]:
                yield record, _row_from_record(record, split)
        return
    for row in iter_jsonl_gz(shard["manifest"]):
        record = next(records[row["split"]], None)
        if record is None or record["sha256"] != row["sha256"]:
            raise HomegrownError(f"{shard['manifest']} does not match the corpus splits next to it; re-run the ingest")
        yield record, row


def iter_documents(corpus_dir: Path) -> Iterator[tuple[dict, dict]]:
    """(corpus record, manifest row) for every document, shard after shard (train then val within each)."""
    for shard in list_shards(corpus_dir):
        yield from iter_documents_of(shard)


# ---- audit ----


@dataclass
class Audit:
    """Share of the corpus by source name, licence and language, in tokens (or characters without a tokenizer)."""

    unit: str
    total: int
    documents: int
    by: dict[str, dict[str, int]]

    def shares(self, key: str) -> list[tuple[str, int, float]]:
        """(value, amount, share) for one breakdown, largest first."""
        items = sorted(self.by[key].items(), key=lambda kv: (-kv[1], kv[0]))
        return [(k, v, v / self.total if self.total else 0.0) for k, v in items]


def audit(run: Path) -> Audit:
    """Count the corpus of `run` (a run directory or a corpus directory) by source, licence and language.

    Tokens are counted with `RUN/tokenizer.json` when there is one, so the shares are what training sees.
    """
    corpus = corpus_dir_of(run)
    tok_path = RunLayout(run).tokenizer  # beside RUN/corpus, or inside a corpus directory given as `run`
    tok = None
    if tok_path.is_file():
        from homegrown.tokenizer import load_tokenizer

        tok = load_tokenizer(tok_path)
    by: dict[str, dict[str, int]] = {"source": {}, "licence": {}, "language": {}}
    total = docs = 0
    batch: list[tuple[str, dict]] = []

    def flush() -> None:
        nonlocal total, docs
        if tok is not None:
            sizes = [len(e.ids) for e in tok.encode_batch([t for t, _ in batch], add_special_tokens=False)]
        else:
            sizes = [len(t) for t, _ in batch]
        for size, (_, row) in zip(sizes, batch, strict=True):
            for key, value in (("source", row["name"]), ("licence", row["licence"]), ("language", row["language"])):
                by[key][value] = by[key].get(value, 0) + size
            total += size
            docs += 1
        batch.clear()

    for record, row in iter_documents(corpus):
        batch.append((record["text"], row))
        if len(batch) >= 256:
            flush()
    flush()
    return Audit("tokens" if tok is not None else "characters", total, docs, by)


def print_audit(report: Audit) -> None:
    """One table per breakdown (source, licence, language): amount and share, largest first."""
    from rich.table import Table

    from homegrown.progress import console

    for key in report.by:
        table = Table(title=f"{report.unit} by {key}")
        for col in (key, report.unit, "share"):
            table.add_column(col, justify="left" if col == key else "right")
        for value, amount, share in report.shares(key):
            table.add_row(value, f"{amount:,}", f"{100 * share:.1f}%")
        console.print(table)


def audit_chart(report: Audit, path: Path) -> Path:
    """A PNG with one horizontal bar chart per breakdown (source, licence, language), shares in percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(report.by)
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2 + 1.2 * sum(min(len(report.by[k]), 12) for k in keys) / 2))
    for ax, key in zip(axes, keys, strict=True):
        rows = report.shares(key)[:12][::-1]
        ax.barh([r[0][:40] for r in rows], [100 * r[2] for r in rows], color="#4477aa")
        ax.set_title(f"{report.unit} share by {key}")
        ax.set_xlim(0, 100)
        ax.set_xlabel("%")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
