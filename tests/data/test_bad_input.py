"""A crawl with broken files in it: every one is skipped or cut with a counted reason, good text survives."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from crawl_kit import html_page, sample_docs, warc_bytes, write_jsonl, write_site

from homegrown.config import IngestConfig
from homegrown.data.corpus import corpus_files
from homegrown.data.ingest import SourceSpec, ingest
from homegrown.data.sources import Skip, iter_corpus, iter_file

pytestmark = pytest.mark.usefixtures("ray_session")  # ingest runs on one local Ray per session

MAX_DOC = 300_000


def _crawl(root: Path) -> Path:
    """Good pages in every format, interleaved with each kind of damage."""
    docs = sample_docs(10)
    write_site(root, docs[:2])
    # WARC cut inside its last record: the records before the cut must be kept
    warc = warc_bytes(docs[2:5], base="https://w.example/")
    cut = warc.rfind(b"WARC/1.") + 200
    plain = warc_bytes(docs[2:5], gz=False, base="https://w.example/")
    (root / "cut.warc").write_bytes(plain[: plain.rfind(b"WARC/1.") + 600])
    (root / "cut.warc.gz").write_bytes(warc[:cut])
    # gzip JSONL whose stream breaks after its first member: the first line is kept
    good = gzip.compress((json.dumps({"text": docs[5]["text"], "url": "https://j.example/0"}) + "\n").encode())
    (root / "broken.jsonl.gz").write_bytes(good + b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage-not-deflate")
    write_jsonl(root / "lines.jsonl", [{"text": docs[6]["text"], "url": "https://j.example/1"}])
    with (root / "lines.jsonl").open("a") as f:
        f.write('{"text": "unterminated\n{"no_text": 1}\n')
    # invalid UTF-8 in a text file: bad bytes replaced, the document kept and noted
    (root / "latin1.txt").write_bytes(docs[7]["text"].encode() + "\nCaf\xe9 cr\xe8me in Latin-1.\n".encode("latin-1"))
    (root / "binary.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)) * 40)
    (root / "empty.html").write_bytes(b"")
    (root / "empty.txt").write_bytes(b"")
    # a 50 MB single document: read only up to max_doc_bytes and cut there
    with (root / "huge.txt").open("w", encoding="utf-8") as f:
        block = (docs[8]["text"] + "\n") * 20
        while f.tell() < 50_000_000:
            f.write(block)
    (root / "page9.html").write_text(html_page(docs[9]["title"], docs[9]["text"]))
    return root


def test_broken_files_are_counted_and_good_text_kept(tmp_path: Path) -> None:
    root = _crawl(tmp_path / "crawl")
    spec = SourceSpec(path=root, licence="CC0-1.0", url_prefix="https://example.org/", glob="*")
    stats = ingest([spec], tmp_path / "out", cfg=IngestConfig(max_doc_bytes=MAX_DOC), progress=False)

    assert stats.rejected["truncated_warc"] == 2  # one per cut WARC
    assert stats.rejected["corrupt_compression"] == 1
    assert stats.rejected["bad_json"] == 1 and stats.rejected["no_text_field"] == 1
    assert stats.rejected["binary"] == 1 and stats.rejected["empty_file"] == 2
    assert stats.notes == {"invalid_utf8": 1, "truncated": 1}
    records = {r["source"]: r for split in ("train", "val") for r in _read(tmp_path / "out", split)}
    # what came before each break survived
    expected = {"https://example.org/page0000.html", "https://example.org/page0001.html",
                "https://w.example/doc0.html", "https://w.example/doc1.html",
                "https://j.example/0", "https://j.example/1", "https://example.org/latin1.txt",
                "https://example.org/page9.html"}
    assert expected <= set(records)
    assert "Caf\ufffd cr\ufffdme" in records["https://example.org/latin1.txt"]["text"]
    if "https://example.org/huge.txt" in records:  # kept unless a quality rule rejects the repeated text
        assert len(records["https://example.org/huge.txt"]["text"].encode()) <= MAX_DOC
    else:
        assert any(k.startswith("quality:") for k in stats.rejected)
    assert stats.pages_read == stats.kept + sum(stats.rejected.values())


def _read(out: Path, split: str) -> list[dict]:
    return list(iter_corpus(out, split))


def test_huge_document_is_never_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with path.open("wb") as f:
        f.truncate(50_000_000)  # sparse: 50 MB of NULs reads as binary after 8 KB
    (item,) = iter_file(SourceSpec(path=path, licence="x"), path, 1000)
    assert item == Skip("binary", "huge.txt")
    path.write_bytes(("é" * 600).encode())
    (doc,) = iter_file(SourceSpec(path=path, licence="x"), path, 1001)
    assert doc.truncated and doc.content == "é" * 500  # the character cut in half is dropped, not mangled


def test_interrupted_write_leaves_no_finished_looking_file(tmp_path: Path) -> None:
    write_site(tmp_path / "site", sample_docs(2))
    spec = SourceSpec(path=tmp_path / "site", licence="CC0-1.0", url_prefix="https://example.org/")
    ingest([spec], tmp_path / "out", progress=False)
    before = {name: (tmp_path / "out" / name).read_bytes() for name in corpus_files(tmp_path / "out")}
    (tmp_path / "site" / "page0001.html").write_bytes(b"\x00\x01binary now")
    (tmp_path / "bad.opt").write_text("sha256: not-a-hash\n")
    try:
        ingest([spec], tmp_path / "out", progress=False, opt_out=tmp_path / "bad.opt")
    except Exception as err:
        assert "not a sha256" in str(err)
    assert {name: (tmp_path / "out" / name).read_bytes() for name in corpus_files(tmp_path / "out")} == before
    assert not list((tmp_path / "out").glob("*.tmp"))
