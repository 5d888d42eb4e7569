"""Lineage: the opt-out format, the audit (table + PNG), and `forget` through corpus, shards and checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from crawl_kit import sample_docs, warc_bytes, write_site

from homegrown.config import ModelConfig
from homegrown.data.corpus import corpus_files
from homegrown.data.forget import FORGET_LOG, forget
from homegrown.data.ingest import SourceSpec, ingest
from homegrown.data.provenance import MANIFEST_NAME, OptOut, audit, iter_documents
from homegrown.errors import HomegrownError
from homegrown.model import Transformer
from homegrown.pipeline import prepare_shards, prepare_tokenizer
from homegrown.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("ray_session")  # ingest runs on one local Ray per session

PREFIX = "https://docs.example.org/"
SHA = "ab" * 32


def test_opt_out_format(tmp_path: Path) -> None:
    path = tmp_path / "opt-out.txt"
    path.write_text(f"# who asked\ndomain: Example.COM\nprefix: https://a.org/private/  # blog\n"
                    f"sha256: {SHA.upper()}\nbare.net\nhttps://b.org/x/\n{'cd' * 32}\n\n")
    opt = OptOut.load(path)
    assert (opt.domains, opt.prefixes, opt.hashes) == (
        {"example.com", "bare.net"}, ["https://a.org/private/", "https://b.org/x/"], {SHA, "cd" * 32})
    assert opt.match("https://www.example.com/page") == "opt_out_domain"
    assert opt.match("https://notexample.com/page") is None
    assert opt.match("https://a.org/private/1") == "opt_out_prefix" and opt.match("https://a.org/public") is None
    assert opt.match("https://c.org/", ["00" * 32, SHA]) == "opt_out_hash"
    assert len(opt) == 6 and opt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text("sha256: 1234\n")
    with pytest.raises(HomegrownError, match="not a sha256"):
        OptOut.load(path)
    with pytest.raises(HomegrownError, match="does not exist"):
        OptOut.load(tmp_path / "missing.txt")


def _run(tmp_path: Path) -> Path:
    """A run directory: corpus from two sources, tokenizer, shards."""
    docs = sample_docs(8)
    write_site(tmp_path / "site", docs[:6])
    (tmp_path / "crawl.warc.gz").write_bytes(warc_bytes(docs[6:], base="https://web.example/"))
    run = tmp_path / "run"
    ingest([SourceSpec(path=tmp_path / "site", licence="CC-BY-4.0", url_prefix=PREFIX, name="licensed"),
            SourceSpec(path=tmp_path / "crawl.warc.gz", licence="unknown", name="web")],
           run / "corpus", holdout_fraction=0.2, progress=False)
    return run


def test_audit_shares_in_characters_then_tokens(tmp_path: Path, cli) -> None:
    run = _run(tmp_path)
    chars = audit(run)
    rows = [row for _, row in iter_documents(run / "corpus")]
    assert chars.unit == "characters" and chars.documents == len(rows) == 8
    assert chars.by["source"] == {
        name: sum(r["chars"] for r in rows if r["name"] == name) for name in ("licensed", "web")}
    assert dict((k, v) for k, v, _ in chars.shares("licence")) == {
        "CC-BY-4.0": chars.by["source"]["licensed"], "unknown": chars.by["source"]["web"]}
    assert chars.by["language"] == {"en": chars.total}
    assert sum(share for _, _, share in chars.shares("source")) == pytest.approx(1.0)

    prepare_tokenizer(run / "corpus", 300, run / "tokenizer.json")
    tokens = audit(run)
    assert tokens.unit == "tokens" and 0 < tokens.total < chars.total

    result = cli("data", "audit", str(run))
    assert result.returncode == 0, result.stderr
    assert "tokens by licence" in result.stderr and "CC-BY-4.0" in result.stderr and "%" in result.stderr
    assert (run / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _checkpoint(run: Path, root: str, step: int) -> Path:
    cfg = ModelConfig(vocab_size=300, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=16)
    return save_checkpoint(run / root, step, Transformer(cfg), run / "tokenizer.json", keep=0)


def test_forget_removes_from_corpus_and_shards_and_names_checkpoints(tmp_path: Path, cli) -> None:
    run = _run(tmp_path)
    tok = prepare_tokenizer(run / "corpus", 300, run / "tokenizer.json")
    old = _checkpoint(run, "ckpt", 1)  # trained before these shards existed
    for f in old.iterdir():
        os.utime(f, (1_000_000_000, 1_000_000_000))
    prepare_shards(run / "corpus", tok, run / "shards")
    before = json.loads((run / "shards" / "index.json").read_text())
    newer = [_checkpoint(run, "ckpt", 2), _checkpoint(run, "sft", 3)]

    docs = [(record, row) for record, row in iter_documents(run / "corpus")]
    victim_record, victim = next((rec, row) for rec, row in docs if row["split"] == "train")
    result = forget(run, urls=[victim["source"]])
    assert [d["id"] for d in result.removed] == [victim["id"]]
    assert sorted(result.checkpoints) == sorted(newer) and result.shards_repacked

    left = [row for _, row in iter_documents(run / "corpus")]
    assert len(left) == len(docs) - 1 and victim["id"] not in {r["id"] for r in left}
    meta = json.loads((run / "corpus" / "MANIFEST.json").read_text())
    assert meta["kept"] == len(left) and meta["forgotten"] == 1
    assert sorted(meta["files"]) == sorted(corpus_files(run / "corpus")) and len(meta["shards"]) > 1
    for name in meta["files"]:
        assert hashlib.sha256((run / "corpus" / name).read_bytes()).hexdigest() == meta["files"][name]["sha256"]
    assert sum(s["train_pages"] + s["val_pages"] for s in meta["shards"]) == len(left)
    after = json.loads((run / "shards" / "index.json").read_text())
    assert after["splits"]["train"]["documents"] == before["splits"]["train"]["documents"] - 1
    assert after["splits"]["train"]["text_bytes"] == (
        before["splits"]["train"]["text_bytes"] - len(victim_record["text"].encode()))
    (entry,) = [json.loads(line) for line in (run / "corpus" / FORGET_LOG).read_text().splitlines()]
    assert entry["removed"][0]["sha256"] == victim["sha256"]
    assert sorted(entry["checkpoints_trained_on_it"]) == ["ckpt/step_2", "sft/step_3"]

    # the CLI: by content hash, and a request matching nothing is a user error
    other = next(row for _, row in docs if row["id"] != victim["id"])
    ok = cli("data", "forget", str(run), "--hash", other["sha256"])
    assert ok.returncode == 0, ok.stderr
    assert other["id"] in ok.stderr and "ckpt/step_2" in ok.stderr and "retrain" in ok.stderr
    missing = cli("data", "forget", str(run), "--id", victim["id"])
    assert missing.returncode == 2 and "no document matches" in missing.stderr
    assert len((run / "corpus" / FORGET_LOG).read_text().splitlines()) == 2


def test_corpus_without_manifest_can_be_audited_and_forgotten(tiny_run: Path, tmp_path: Path) -> None:
    """A run on the shipped sample (no manifest.jsonl.gz): rows are derived from the corpus records."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    report = audit(run)
    assert report.unit == "tokens" and set(report.by["language"]) == {"unknown"}
    assert set(report.by["source"]) <= {"docs.python.org", "debian-handbook.info"}
    record, _ = next(iter_documents(run / "corpus"))
    result = forget(run, hashes=[record["sha256"]])
    assert [d["source"] for d in result.removed] == [record["source"]] and result.shards_repacked
    assert not (run / "corpus" / MANIFEST_NAME).exists()
    assert record["sha256"] not in {r["sha256"] for r, _ in iter_documents(run / "corpus")}
