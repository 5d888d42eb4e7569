"""Ingest stage: extraction, exact dedup, the fixed train/val rule, output format, the shipped sample."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from homegrown.data.dedup import ExactDedup
from homegrown.data.extract import extract_html
from homegrown.data.ingest import SourceSpec, ingest, main, split_of
from homegrown.data.sources import iter_corpus, iter_jsonl
from homegrown.errors import HomegrownError

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
FIELDS = {"text", "title", "source", "licence", "sha256"}
PREFIX = "https://example.org/docs/"


def _page(title: str, body: str) -> str:
    paragraphs = "".join(
        f"<p>{body} Sentence {i} adds a little more text about {title}.</p>" for i in range(4)
    )
    head = f"<head><title>{title}</title></head>"
    return f"<html>{head}<body><main><h1>{title}</h1>{paragraphs}</main></body></html>"


def _site(root: Path) -> Path:
    """Five pages: two distinct, an exact copy, a copy differing in case and spacing, an empty one."""
    (root / "sub").mkdir(parents=True)
    (root / "_static").mkdir()
    (root / "alpha.html").write_text(_page("Alpha", "Alpha pages explain how the frobnicator spins up."))
    (root / "sub" / "beta.html").write_text(_page("Beta", "Beta pages describe the widget cache in detail."))
    (root / "copy.html").write_text((root / "alpha.html").read_text())
    (root / "recased.html").write_text(_page("ALPHA", "ALPHA   pages explain how the FROBNICATOR spins up."))
    (root / "empty.html").write_text(
        "<html><head><title>Nothing</title></head><body><nav>Home</nav></body></html>"
    )
    (root / "_static" / "skipped.html").write_text(_page("Static", "Never read, the directory is excluded."))
    return root


def _records(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_ingest_counts_and_outputs(tmp_path: Path) -> None:
    site = _site(tmp_path / "site")
    spec = SourceSpec(path=site, licence="CC0-1.0", url_prefix=PREFIX, exclude=["_static"])
    stats = ingest([spec], tmp_path / "out", holdout_fraction=0.5, progress=False)

    assert (stats.pages_read, stats.kept, stats.dropped_empty, stats.dropped_duplicate) == (5, 2, 1, 2)
    assert stats.train_pages + stats.val_pages == 2
    records = {split: _records(tmp_path / "out" / f"{split}.jsonl.gz") for split in ("train", "val")}
    kept = records["train"] + records["val"]
    # sorted file order: alpha.html comes first, so its copies are the ones dropped
    assert sorted(r["source"] for r in kept) == [PREFIX + "alpha.html", PREFIX + "sub/beta.html"]
    for split, recs in records.items():
        for r in recs:
            assert set(r) == FIELDS
            assert r["licence"] == "CC0-1.0"
            assert r["sha256"] == hashlib.sha256(r["text"].encode("utf-8")).hexdigest()
            assert split_of(r["source"], 0.5) == split
    alpha = next(r for r in kept if r["source"].endswith("alpha.html"))
    assert alpha["title"] == "Alpha" and "frobnicator spins up" in alpha["text"]

    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert manifest["kept"] == 2 and manifest["dropped_duplicate"] == 2 and manifest["dropped_empty"] == 1
    assert manifest["sources"][0]["text_bytes"] == sum(len(r["text"].encode()) for r in kept)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_ingest_is_byte_reproducible(tmp_path: Path) -> None:
    site = _site(tmp_path / "site")
    spec = SourceSpec(path=site, licence="CC0-1.0", url_prefix=PREFIX)
    for out in ("a", "b"):
        ingest([spec], tmp_path / out, progress=False)
    for name in ("train.jsonl.gz", "val.jsonl.gz", "MANIFEST.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_ingest_reads_jsonl_and_text(tmp_path: Path) -> None:
    jsonl = tmp_path / "pages.jsonl.gz"
    with gzip.open(jsonl, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "A licensed page.", "title": "T", "url": "https://example.org/t"}) + "\n")
        f.write(json.dumps({"text": "   "}) + "\n")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "note.txt").write_text("A plain note.\n")
    stats = ingest(
        [
            SourceSpec(path=jsonl, licence="CC-BY-4.0", url_prefix=PREFIX),
            SourceSpec(path=tmp_path / "txt", licence="CC0-1.0", url_prefix=PREFIX, glob="*.txt"),
        ],
        tmp_path / "out",
        holdout_fraction=0.0,
        progress=False,
    )
    assert (stats.pages_read, stats.kept, stats.dropped_empty, stats.val_pages) == (3, 2, 1, 0)
    records = list(iter_corpus(tmp_path / "out", "train"))
    assert [(r["source"], r["title"], r["text"]) for r in records] == [
        ("https://example.org/t", "T", "A licensed page."),
        (PREFIX + "note.txt", None, "A plain note."),
    ]


def test_split_rule_is_fixed() -> None:
    url = "https://docs.python.org/3.11/library/os.html"
    bucket = int(hashlib.sha256(url.encode()).hexdigest()[:8], 16) % 1000
    assert split_of(url, 0.05) == ("val" if bucket < 50 else "train")
    assert split_of(url, 0.0) == "train"
    urls = [f"https://example.org/page{i}.html" for i in range(20_000)]
    share = sum(split_of(u, 0.05) == "val" for u in urls) / len(urls)
    assert 0.045 < share < 0.055
    assert [split_of(u, 0.05) for u in urls[:200]] == [split_of(u, 0.05) for u in urls[:200]]


def test_missing_source_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(HomegrownError, match="does not exist"):
        ingest([SourceSpec(path=tmp_path / "nope", licence="MIT", url_prefix=PREFIX)], tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", f"{tmp_path / 'nope'}:MIT:{PREFIX}", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_applies_excludes_to_the_preceding_source(tmp_path: Path) -> None:
    site = _site(tmp_path / "site")
    main(
        [
            "--source",
            f"{site}:CC0-1.0:{PREFIX}",
            "--exclude",
            "copy.html",
            "--exclude",
            "sub",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert manifest["sources"][0]["files"] == 4  # alpha, recased, empty, _static/skipped
    sources = {r["source"] for split in ("train", "val") for r in iter_corpus(tmp_path / "out", split)}
    assert PREFIX + "_static/skipped.html" in sources and PREFIX + "sub/beta.html" not in sources


def test_extract_keeps_code_notes_and_drops_chrome() -> None:
    html = b"""<?xml version="1.0" encoding="UTF-8"?><html><head><title>T</title></head><body>
      <ul class="docnav"><li>Prev</li><li>Next</li></ul>
      <div class="section"><div class="titlepage"><div><div><h2 class="title"><a id="s1"></a>1.2. Setup
        <a class="headerlink" href="#s1">\xc2\xb6</a></h2></div></div></div>
      <div class="para">The setup needs a
          few commands, wrapped over
          several source lines.</div>
      <pre>def f():
    return 1</pre>
      <div class="sidebar"><div class="titlepage"><p class="title"><strong>TIP</strong> Faster</p></div>
        <div class="para">Boxed tips are part of the text, not page chrome.</div></div>
      </div></body></html>"""
    page = extract_html(html)
    assert page is not None
    assert "1.2. Setup" in page.text and "\u00b6" not in page.text
    assert "The setup needs a few commands, wrapped over several source lines." in page.text
    assert "def f():\n    return 1" in page.text
    assert "Boxed tips are part of the text" in page.text
    assert "Prev" not in page.text
    assert extract_html(b"<html><body><p>Hi.</p></body></html>") is None


def test_exact_dedup_normalises_case_and_whitespace() -> None:
    dedup = ExactDedup()
    assert not dedup.seen("Hello  World\n")
    assert dedup.seen("hello world")
    assert not dedup.seen("hello, world")
    assert (dedup.checked, dedup.duplicates, dedup.unique) == (3, 1, 2)


def test_iter_jsonl_splits_text_from_meta(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(
            json.dumps({"text": "one", "url": "u1"}) + "\n\n" + json.dumps({"text": "two", "id": 2}) + "\n"
        )
    docs = list(iter_jsonl(path))
    assert [(d.text, d.meta) for d in docs] == [("one", {"url": "u1"}), ("two", {"id": 2})]


def test_shipped_sample_is_well_formed() -> None:
    manifest = json.loads((SAMPLE / "MANIFEST.json").read_text())
    sources: dict[str, set[str]] = {}
    for split in ("train", "val"):
        path = SAMPLE / f"{split}.jsonl.gz"
        assert (
            hashlib.sha256(path.read_bytes()).hexdigest() == manifest["files"][f"{split}.jsonl.gz"]["sha256"]
        )
        records = list(iter_corpus(SAMPLE, split))
        assert len(records) == manifest[f"{split}_pages"]
        for r in records:
            assert set(r) == FIELDS
            assert r["text"].strip() and r["source"].startswith("https://") and r["licence"]
            assert r["sha256"] == hashlib.sha256(r["text"].encode("utf-8")).hexdigest()
            assert split_of(r["source"], manifest["holdout_fraction"]) == split
        sources[split] = {r["source"] for r in records}
        assert len(sources[split]) == len(records)
    assert sources["val"], "the held-out split must not be empty"
    assert not sources["train"] & sources["val"]
    assert sum(f["bytes"] for f in manifest["files"].values()) <= 6_000_000
