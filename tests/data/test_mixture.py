"""Mixture: target token shares per named source are reached in the train shards and reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from crawl_kit import sample_docs, warc_bytes, write_site

from homegrown.data.corpus import list_shards
from homegrown.data.ingest import SourceSpec, ingest
from homegrown.data.mixture import COUNTS_DIR, pack_corpus, parse_mixture, plan_mixture
from homegrown.data.pack import TokenShards
from homegrown.data.provenance import iter_documents
from homegrown.errors import HomegrownError
from homegrown.pipeline import prepare_tokenizer

pytestmark = pytest.mark.usefixtures("ray_session")  # ingest runs on one local Ray per session


def test_parse_and_plan() -> None:
    assert parse_mixture("web=3, licensed=1") == {"web": 0.75, "licensed": 0.25}
    for bad in ("web", "web=x", "web=-1", "web=0", ""):
        with pytest.raises(HomegrownError):
            parse_mixture(bad)
    plan = plan_mixture({"web": 900, "licensed": 100, "other": 50}, {"web": 0.5, "licensed": 0.5}, max_repeat=4.0)
    assert plan.rate["web"] == pytest.approx(0.5 * 1050 / 900)
    assert plan.rate["licensed"] == 4.0  # 5.25× wanted, capped
    assert plan.rate["other"] == 0.0  # not named: left out
    with pytest.raises(HomegrownError, match="synthetic"):
        plan_mixture({"web": 10}, {"web": 0.5, "synthetic": 0.5}, 4.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus with a large `licensed` source and a small `web` one, and a tokenizer."""
    root = tmp_path_factory.mktemp("mix")
    write_site(root / "site", sample_docs(12, max_chars=800))
    (root / "crawl.warc.gz").write_bytes(warc_bytes(sample_docs(4, offset=12, max_chars=800)))
    run = root / "run"
    ingest([SourceSpec(path=root / "site", licence="CC-BY-4.0", url_prefix="https://l.example/", name="licensed"),
            SourceSpec(path=root / "crawl.warc.gz", licence="unknown", name="web")],
           run / "corpus", holdout_fraction=0.2, progress=False)
    prepare_tokenizer(run / "corpus", 300, run / "tokenizer.json")
    return run


def test_shards_reach_the_target_shares(run: Path) -> None:
    stats, plan = pack_corpus(run / "corpus", run / "tokenizer.json", run / "shards", "web=1,licensed=1", 4.0)
    assert plan is not None and plan.rate["web"] > 1 > plan.rate["licensed"]  # web repeated, licensed thinned
    assert plan.achieved["web"] == pytest.approx(0.5, abs=0.08)
    index = json.loads((run / "shards" / "index.json").read_text())
    assert index["mixture"]["achieved"]["web"] == pytest.approx(plan.achieved["web"], abs=1e-6)
    assert index["mixture"]["spec"] == "web=1,licensed=1"
    assert sum(plan.emitted.values()) == stats.tokens["train"] == TokenShards(run / "shards", "train").tokens
    biggest = max(plan.available.values())
    for name, tokens in plan.available.items():
        assert abs(plan.emitted[name] - plan.rate[name] * tokens) <= biggest


def test_repeat_cap_limits_a_small_source(run: Path) -> None:
    _, plan = pack_corpus(run / "corpus", run / "tokenizer.json", run / "shards", "web=0.9,licensed=0.1", 1.5)
    assert plan is not None and plan.rate["web"] == 1.5
    assert plan.achieved["web"] < 0.9  # short of the target, and reported as such


def test_without_mixture_every_document_once(run: Path, cli) -> None:
    stats, plan = pack_corpus(run / "corpus", run / "tokenizer.json", run / "shards")
    assert plan is None and "mixture" not in json.loads((run / "shards" / "index.json").read_text())
    ids = np.concatenate([np.asarray(a) for a in TokenShards(run / "shards", "train").arrays])
    train = [row for _, row in iter_documents(run / "corpus") if row["split"] == "train"]
    assert stats.documents["train"] == len(train) == int((ids == 0).sum())  # one <|endoftext|> per document
    result = cli("data", "mix", str(run), "--mixture", "web=1,licensed=1")
    assert result.returncode == 0, result.stderr
    assert "web" in result.stderr and "achieved" in result.stderr
    bad = cli("data", "mix", str(run), "--mixture", "books=1")
    assert bad.returncode == 2 and "books" in bad.stderr


def test_shards_pack_in_parallel_to_the_same_bytes(run: Path, tmp_path: Path) -> None:
    assert len(list_shards(run / "corpus")) > 1
    for workers in (1, 2):
        pack_corpus(run / "corpus", run / "tokenizer.json", tmp_path / str(workers), "web=1,licensed=1", 4.0,
                    workers=workers)
    names = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert COUNTS_DIR not in names  # the per-shard counts of the first pass are work files
    assert names == sorted(p.name for p in (tmp_path / "2").iterdir()) and len(names) > 3
    for name in names:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name
