"""Ingest stage: every rejection counted by reason, dedup, PII, opt-out, formats, the split rule, the sample."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from crawl_kit import html_page, sample_docs, warc_bytes, write_jsonl, write_parquet, write_site

from homegrown.config import IngestConfig
from homegrown.data.corpus import corpus_files, list_shards
from homegrown.data.dedup import ExactDedup
from homegrown.data.extract import extract_html
from homegrown.data.filters import QualityFilter
from homegrown.data.ingest import SourceSpec, ingest, main, split_bucket, split_of
from homegrown.data.provenance import MANIFEST_NAME, doc_id, iter_jsonl_gz
from homegrown.data.sources import iter_corpus, iter_jsonl
from homegrown.errors import HomegrownError

pytestmark = pytest.mark.usefixtures("ray_session")  # ingest runs on one local Ray per session

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
FIELDS = {"text", "title", "source", "licence", "sha256"}
PREFIX = "https://example.org/docs/"


GERMAN = ("Die Dokumentation beschreibt, wie man das Paket installiert und konfiguriert. Zuerst muss die "
          "Datei heruntergeladen werden, danach wird sie mit dem Paketmanager eingespielt. Wenn dabei ein Fehler "
          "auftritt, sollte man die Protokolle lesen und die Abhängigkeiten prüfen. ") * 4


def _site(root: Path) -> tuple[Path, list[dict]]:
    """Real pages plus an exact copy, a re-cased copy, a near-copy, an empty page, a German page, an excluded dir.

    Copies are named `zz_*` so that they sort after their originals: dedup keeps the first copy.
    """
    docs = sample_docs(5)
    write_site(root, docs)
    (root / "_static").mkdir()
    (root / "zz_copy.html").write_text(html_page(docs[0]["title"], docs[0]["text"]))
    recased = docs[1]["text"].lower().replace("\n", "\n\n").replace(" ", "  ")
    (root / "zz_recased.html").write_text(html_page(docs[1]["title"].lower(), recased))
    near = docs[3]["text"].replace(" the ", " a ", 1) + "\nOne more line at the end of it."
    (root / "zz_near.html").write_text(html_page("Near", near))
    (root / "zz_empty.html").write_text("<html><head><title>Nothing</title></head><body><nav>Home</nav></body></html>")
    (root / "zz_german.html").write_text(html_page("Deutsch", GERMAN))
    (root / "_static" / "skipped.html").write_text(html_page("Static", docs[3]["text"] + " skipped"))
    return root, docs


def _rows(corpus: Path) -> list[dict]:
    """Every manifest row of a sharded corpus, shard after shard."""
    return [row for shard in list_shards(corpus) for row in iter_jsonl_gz(shard["manifest"])]


def test_ingest_counts_and_outputs(tmp_path: Path) -> None:
    site, docs = _site(tmp_path / "site")
    # one page carries PII, which must be replaced and counted
    (site / "page0004.html").write_text(html_page("Mail", docs[4]["text"] + "\nWrite to jane.doe@example.com today."))
    spec = SourceSpec(path=site, licence="CC0-1.0", url_prefix=PREFIX, exclude=["_static"])
    stats = ingest([spec], tmp_path / "out", holdout_fraction=0.5, progress=False,
                   cfg=IngestConfig(languages=["en"]))

    assert stats.pages_read == 10 and stats.kept == 5
    assert stats.rejected == {"duplicate_exact": 2, "duplicate_near": 1, "empty": 1, "language": 1}
    assert (stats.dropped_empty, stats.dropped_duplicate) == (1, 3)
    assert stats.pii.get("EMAIL", 0) >= 1 and stats.train_pages + stats.val_pages == 5
    records = {split: list(iter_corpus(tmp_path / "out", split)) for split in ("train", "val")}
    kept = records["train"] + records["val"]
    assert sorted(r["source"] for r in kept) == [PREFIX + f"page{i:04d}.html" for i in range(5)]
    for split, recs in records.items():
        for r in recs:
            assert set(r) == FIELDS
            assert r["licence"] == "CC0-1.0"
            assert r["sha256"] == hashlib.sha256(r["text"].encode("utf-8")).hexdigest()
            assert split_of(r["source"], 0.5) == split
    mail = next(r for r in kept if r["source"].endswith("page0004.html"))
    assert "jane.doe@example.com" not in mail["text"] and "<EMAIL>" in mail["text"]

    rows = _rows(tmp_path / "out")
    assert len(rows) == 5 and {r["sha256"] for r in rows} == {r["sha256"] for r in kept}
    for row in rows:
        assert row["id"] == doc_id(row["source"], row["sha256"]) and row["language"] == "en"
        assert row["licence"] == "CC0-1.0" and row["name"] == "example.org" and row["retrieved"].endswith("Z")
        assert "word_count" in row["filters"]
    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert manifest["kept"] == 5 and manifest["rejected"] == stats.rejected and manifest["pii"] == stats.pii
    assert manifest["sources"][0]["text_bytes"] == sum(len(r["text"].encode()) for r in kept)
    assert sorted(manifest["files"]) == sorted(corpus_files(tmp_path / "out"))
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest() == digest["sha256"]
    assert not list((tmp_path / "out").glob("*.tmp"))
    assert not (tmp_path / "out" / "parts").exists(), "a whole-crawl ingest removes its intermediate parts"
    assert not (tmp_path / "out" / "dedup").exists(), "and the dedup stages' work files"


def test_quality_rules_reject_junk_by_rule_name(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    write_site(tmp_path / "site", sample_docs(1))
    menu = "\n".join(["Home", "About", "Shop", "Contact", "Login"] * 20)
    (tmp_path / "site" / "menu.html").write_text(html_page("Menu", menu))
    stats = ingest([SourceSpec(path=tmp_path / "site", licence="CC0-1.0", url_prefix=PREFIX)], tmp_path / "out",
                   progress=False)
    assert stats.kept == 1
    (reason,) = stats.rejected
    assert reason.startswith("quality:") and reason.removeprefix("quality:") in QualityFilter().rule_names


def test_opt_out_is_honoured_at_ingest(tmp_path: Path) -> None:
    site, docs = _site(tmp_path / "site")
    jsonl = write_jsonl(tmp_path / "partner.jsonl.gz", [
        {"text": docs[3]["text"] + "\nPartner copy.", "url": "https://partner.example.net/a"},
        {"text": docs[4]["text"] + "\nPrivate.", "url": "https://blog.example.com/private/b"},
    ])
    first = hashlib.sha256(
        next(r for r in _ingested(tmp_path, site) if r["source"].endswith("page0001.html"))["text"].encode()
    ).hexdigest()
    opt_out = tmp_path / "opt-out.txt"
    opt_out.write_text(f"# opted out\ndomain: example.net\nhttps://blog.example.com/private/\n{first}\n")
    stats = ingest([SourceSpec(path=site, licence="CC0-1.0", url_prefix=PREFIX, exclude=["zz_*", "_static"]),
                    SourceSpec(path=jsonl, licence="CC-BY-4.0", name="partner")],
                   tmp_path / "out", progress=False, opt_out=opt_out)
    assert {k: v for k, v in stats.rejected.items() if k.startswith("opt_out")} == {
        "opt_out_domain": 1, "opt_out_prefix": 1, "opt_out_hash": 1}
    sources = {r["source"] for split in ("train", "val") for r in iter_corpus(tmp_path / "out", split)}
    assert sources == {PREFIX + f"page{i:04d}.html" for i in (0, 2, 3, 4)}
    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert manifest["opt_out"] == {"entries": 3, "sha256": hashlib.sha256(opt_out.read_bytes()).hexdigest()}


def _ingested(tmp_path: Path, site: Path) -> list[dict]:
    out = tmp_path / "first"
    ingest([SourceSpec(path=site, licence="CC0-1.0", url_prefix=PREFIX, exclude=["zz_*", "_static"])], out,
           progress=False)
    return [r for split in ("train", "val") for r in iter_corpus(out, split)]


def test_ingest_is_byte_reproducible(tmp_path: Path) -> None:
    site, _ = _site(tmp_path / "site")
    spec = SourceSpec(path=site, licence="CC0-1.0", url_prefix=PREFIX)
    for out in ("a", "b"):
        ingest([spec], tmp_path / out, progress=False)
    names = [*corpus_files(tmp_path / "a"), "MANIFEST.json"]
    assert len(names) == 3 * 8 + 1  # the site's 11 files in 8 shards (the default)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_ingest_reads_jsonl_warc_parquet_and_text(tmp_path: Path) -> None:
    docs = sample_docs(4)
    jsonl = write_jsonl(tmp_path / "pages.jsonl.zst", [{"text": docs[0]["text"], "title": "T",
                                                         "url": "https://example.org/t"}, {"text": "   "}])
    (tmp_path / "crawl.warc.gz").write_bytes(warc_bytes(docs[1:2], base="https://w.example/"))
    parquet = write_parquet(tmp_path / "p.parquet", [{"text": docs[2]["text"], "url": "https://p.example/0"}])
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "note.txt").write_text(docs[3]["text"])
    stats = ingest(
        [
            SourceSpec(path=jsonl, licence="CC-BY-4.0", url_prefix=PREFIX),
            SourceSpec(path=tmp_path / "crawl.warc.gz", licence="CC-BY-4.0"),
            SourceSpec(path=parquet, licence="CC0-1.0", text_field="content"),
            SourceSpec(path=tmp_path / "txt", licence="CC0-1.0", url_prefix=PREFIX, glob="*.txt"),
        ],
        tmp_path / "out",
        holdout_fraction=0.0,
        progress=False,
    )
    assert (stats.pages_read, stats.kept, stats.dropped_empty, stats.val_pages) == (5, 4, 1, 0)
    records = list(iter_corpus(tmp_path / "out", "train"))
    assert [(r["source"], r["title"]) for r in records] == [
        ("https://example.org/t", "T"), ("https://w.example/doc0.html", docs[1]["title"]),
        ("https://p.example/0", None), (PREFIX + "note.txt", None)]
    assert records[0]["text"] == docs[0]["text"].strip()


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


def test_module_cli_applies_excludes_to_the_preceding_source(tmp_path: Path) -> None:
    site, _ = _site(tmp_path / "site")
    main(["--source", f"{site}:CC0-1.0:{PREFIX}", "--exclude", "zz_*", "--exclude", "page0001.html",
          "--out", str(tmp_path / "out"), "--no-progress"])
    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert manifest["sources"][0]["files"] == 5  # page0000, 0002-0004, _static/skipped
    sources = {r["source"] for split in ("train", "val") for r in iter_corpus(tmp_path / "out", split)}
    assert PREFIX + "_static/skipped.html" in sources and PREFIX + "page0001.html" not in sources


def test_cli_ingest_prints_counts_and_errors_in_one_line(tmp_path: Path, cli) -> None:
    site, _ = _site(tmp_path / "site")
    result = cli("data", "ingest", str(site), "--out", str(tmp_path / "out"), "--licence", "CC0-1.0",
                 "--url-prefix", PREFIX, "--exclude", "_static", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "kept 5 of 10" in result.stderr and "duplicate_exact 2" in result.stderr
    assert json.loads((tmp_path / "out" / "MANIFEST.json").read_text())["kept"] == 5
    bad = cli("data", "ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "o2"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


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
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": \n')  # a blank line still counts in the numbering
    with pytest.raises(HomegrownError, match=r"bad\.jsonl:3: not valid JSON"):
        list(iter_jsonl(bad))


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
    # built by the full pipeline (scripts/build_sample.sh): a provenance row per page, rules and PII recorded
    assert manifest["format"] == "homegrown-corpus/2" and manifest["extraction"]["tool"] == "resiliparse"
    rows_path = SAMPLE / MANIFEST_NAME
    assert hashlib.sha256(rows_path.read_bytes()).hexdigest() == manifest["files"][MANIFEST_NAME]["sha256"]
    rows = list(iter_jsonl_gz(rows_path))
    assert {r["source"]: r["split"] for r in rows} == {u: k for k, us in sources.items() for u in us}
    assert all(r["filters"] == manifest["quality_rules"] and r["licence"] for r in rows)
    assert sum(sum(r["pii"].values()) for r in rows) == sum(manifest["pii"].values())
    assert manifest["kept"] == len(rows) and manifest["pages_read"] == len(rows) + sum(manifest["rejected"].values())


def test_a_small_crawl_still_gets_one_held_out_page(tmp_path: Path) -> None:
    site = tmp_path / "site"
    write_site(site, sample_docs(6))
    prefix = "https://small0.example/"
    urls = [prefix + f"page{i:04d}.html" for i in range(6)]
    assert not any(split_of(u, 0.05) == "val" for u in urls)  # the plain rule would hold out nothing
    stats = ingest([SourceSpec(path=site, licence="CC0-1.0", url_prefix=prefix)], tmp_path / "out", progress=False)
    nearest = min(urls, key=split_bucket)
    val, train = (list(iter_corpus(tmp_path / "out", s)) for s in ("val", "train"))
    assert [r["source"] for r in val] == [nearest] and len(train) == 5
    assert (stats.train_pages, stats.val_pages) == (5, 1)
    assert stats.val_text_bytes == len(val[0]["text"].encode("utf-8"))
    rows = {r["source"]: r["split"] for r in _rows(tmp_path / "out")}
    assert rows == {u: "val" if u == nearest else "train" for u in urls}
    meta = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert meta["val_pages"] == 1 and "lowest" in meta["split_rule"]
    assert not list((tmp_path / "out").glob("*.tmp*"))
    # with holdout 0 nothing is held out, as asked
    none = ingest([SourceSpec(path=site, licence="CC0-1.0", url_prefix=prefix)], tmp_path / "out0",
                  holdout_fraction=0.0, progress=False)
    assert none.val_pages == 0
