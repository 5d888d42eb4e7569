"""Readers for every input format, on real files built here: what each yields, with which provenance."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from crawl_kit import sample_docs, warc_bytes, write_jsonl, write_parquet, write_site

from homegrown.data.sources import RawDoc, Skip, SourceSpec, file_kind, iter_file, list_files


def _docs(items: list) -> list[RawDoc]:
    return [i for i in items if isinstance(i, RawDoc)]


def test_html_tree_gives_url_and_mtime(tmp_path: Path) -> None:
    paths = write_site(tmp_path / "site" / "sub", sample_docs(2))
    os.utime(paths[0], (1_700_000_000, 1_700_000_000))
    spec = SourceSpec(path=tmp_path / "site", licence="CC0-1.0", url_prefix="https://example.org/docs/")
    files = list_files(spec.path, spec.glob)
    assert files == paths
    (doc,) = _docs(list(iter_file(spec, files[0], 1_000_000)))
    assert doc.url == "https://example.org/docs/sub/page0000.html" and doc.is_html
    assert doc.retrieved == dt.datetime.fromtimestamp(1_700_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert b"<main>" in doc.content and not doc.truncated
    assert spec.label == "example.org"


def test_warc_response_records_with_warc_date(tmp_path: Path) -> None:
    docs = sample_docs(3)
    path = tmp_path / "crawl.warc.gz"
    path.write_bytes(warc_bytes(docs))
    items = list(iter_file(SourceSpec(path=path, licence="CC-BY-4.0"), path, 1_000_000))
    got = _docs(items)
    assert len(items) == 3, "the warcinfo record is not a document"
    assert [d.url for d in got] == [f"https://example.org/doc{i}.html" for i in range(3)]
    assert [d.retrieved for d in got] == ["2024-05-01T10:00:00Z", "2024-05-02T10:00:00Z", "2024-05-03T10:00:00Z"]
    assert docs[1]["text"].split("\n")[0][:40].encode() in got[1].content


def test_jsonl_gz_and_zst_use_record_fields(tmp_path: Path) -> None:
    records = [{"text": "first text", "url": "https://a.example/1", "title": "One", "date": "2023-01-02"},
               {"text": "second text"}]
    for name in ("docs.jsonl.gz", "docs.jsonl.zst", "docs.jsonl"):
        path = write_jsonl(tmp_path / name, records)
        got = _docs(list(iter_file(SourceSpec(path=path, licence="MIT", url_prefix="https://b.example/"),
                                   path, 1_000_000)))
        assert [(d.url, d.title, d.content, d.is_html) for d in got] == [
            ("https://a.example/1", "One", "first text", False),
            (f"https://b.example/{name}#L2", None, "second text", False),
        ]
        assert got[0].retrieved == "2023-01-02"


def test_parquet_reads_the_chosen_column_by_batches(tmp_path: Path) -> None:
    records = [{"text": f"row {i} text", "url": f"https://p.example/{i}"} for i in range(7)]
    path = write_parquet(tmp_path / "t.parquet", records, text_column="content")
    spec = SourceSpec(path=path, licence="CC0-1.0", text_field="content")
    got = _docs(list(iter_file(spec, path, 1_000_000)))
    assert [(d.url, d.content) for d in got] == [(r["url"], r["text"]) for r in records]
    wrong = SourceSpec(path=path, licence="CC0-1.0", text_field="body")
    assert list(iter_file(wrong, path, 1_000_000)) == [Skip("no_text_field", "t.parquet")]


def test_plain_text_and_unknown_suffix(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("A plain note.\n", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n")
    spec = SourceSpec(path=tmp_path, licence="CC0-1.0", url_prefix="https://n.example/", glob="*")
    (note,) = _docs(list(iter_file(spec, tmp_path / "note.txt", 100)))
    assert (note.url, note.content) == ("https://n.example/note.txt", "A plain note.\n")
    assert list(iter_file(spec, tmp_path / "image.png", 100)) == [Skip("unsupported_type", "https://n.example/image.png")]
    assert [file_kind(Path(n)) for n in ("a.HTML", "b.warc.gz", "c.jsonl.zst", "d.parquet", "e.md", "f.bin")] == [
        "html", "warc", "jsonl", "parquet", "text", None]
