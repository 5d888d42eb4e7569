"""Builds real crawl files for the ingest tests from the bundled corpus: HTML trees, WARC, JSONL, Parquet.

The pages are real text (the shipped sample), so they pass the quality rules the way real pages do;
the tests then add copies, near-copies, PII and broken files on top and check what comes out.
"""

from __future__ import annotations

import gzip
import html
import io
import itertools
import json
from pathlib import Path

from homegrown.data.sources import iter_corpus
from homegrown.pipeline import SAMPLE_DIR

SITE = "https://example.org/"


def sample_docs(n: int, offset: int = 0, max_chars: int = 2500) -> list[dict]:
    """`n` train pages of the bundled corpus (text cut at a paragraph near `max_chars`), with a title."""
    docs = []
    for record in itertools.islice(iter_corpus(SAMPLE_DIR, "train"), offset, offset + n):
        text = record["text"]
        if len(text) > max_chars:
            cut = text.rfind("\n", 0, max_chars)
            text = text[: cut if cut > max_chars // 2 else max_chars]
        docs.append({"title": record["title"] or "Untitled", "text": text})
    return docs


def html_page(title: str, text: str) -> str:
    """A page as a site would serve it: navigation and footer around the main text."""
    body = "".join(f"<p>{html.escape(p)}</p>\n" for p in text.split("\n") if p.strip())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            "<nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>"
            f"<main><article><h1>{html.escape(title)}</h1>\n{body}</article></main>"
            "<footer>Site footer. Contact the webmaster.</footer></body></html>")


def write_site(root: Path, docs: list[dict], start: int = 0) -> list[Path]:
    """One HTML file per document: page0000.html, page0001.html …"""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, doc in enumerate(docs, start):
        path = root / f"page{i:04d}.html"
        path.write_text(html_page(doc["title"], doc["text"]), encoding="utf-8")
        paths.append(path)
    return paths


def warc_bytes(docs: list[dict], gz: bool = True, base: str = SITE) -> bytes:
    """A WARC (gzip per record when `gz`) with a warcinfo record and one HTML response per document."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gz)
    writer.write_record(writer.create_warcinfo_record("crawl.warc", {"software": "homegrown tests"}))
    for i, doc in enumerate(docs):
        payload = html_page(doc["title"], doc["text"]).encode("utf-8")
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        record = writer.create_warc_record(f"{base}doc{i}.html", "response", payload=io.BytesIO(payload),
                                           http_headers=headers,
                                           warc_headers_dict={"WARC-Date": f"2024-05-{1 + i % 28:02d}T10:00:00Z"})
        writer.write_record(record)
    return out.getvalue()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """JSONL, gzip- or zstd-compressed by suffix."""
    data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    elif path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def write_parquet(path: Path, records: list[dict], text_column: str = "content") -> Path:
    """A Parquet file with several row groups, the text in `text_column`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({text_column: [r["text"] for r in records], "url": [r["url"] for r in records],
                      "title": [r.get("title") for r in records]})
    pq.write_table(table, path, row_group_size=2)
    return path
