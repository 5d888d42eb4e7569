"""The run layout: paths, done checks, and mapping a path given on the command line back onto a run."""

from __future__ import annotations

from pathlib import Path

from homegrown.layout import BASE, RunLayout, latest_checkpoint, list_checkpoints, locate, run_dir_of


def _ckpt(root: Path, step: int) -> Path:
    path = root / f"step_{step}"
    path.mkdir(parents=True)
    return path


def test_stage_paths_follow_one_rule(tmp_path: Path) -> None:
    run = RunLayout(tmp_path / "r")
    assert run.ckpt_root() == tmp_path / "r" / "ckpt" and run.ckpt_root("sft") == tmp_path / "r" / "sft" / "ckpt"
    assert run.metrics() == tmp_path / "r" / "metrics.jsonl"
    assert run.metrics("distill") == tmp_path / "r" / "metrics_distill.jsonl"
    assert run.loss_png() == tmp_path / "r" / "loss_pretrain.png" and run.loss_png("sft").name == "loss_sft.png"
    assert not (tmp_path / "r").exists()  # asking creates nothing


def test_done_checks_and_checkpoint_listing(tmp_path: Path) -> None:
    run = RunLayout(tmp_path)
    assert not (run.corpus_done() or run.tokenizer_done() or run.shards_done() or run.sft_data_done())
    assert run.latest() is None and run.final_checkpoint() is None and run.trained_stages() == []
    run.corpus.mkdir()
    (run.corpus / "MANIFEST.json").write_text("{}")
    run.tokenizer.write_text("{}")
    assert run.corpus_done() and run.tokenizer_done()
    for step in (10, 2):
        _ckpt(run.ckpt_root(), step)
    (run.ckpt_root() / ".step_20.tmp").mkdir()  # unfinished: never listed
    assert [p.name for p in list_checkpoints(run.ckpt_root())] == ["step_2", "step_10"]
    assert run.final_checkpoint() == run.ckpt_root() / "step_10"
    sft = _ckpt(run.ckpt_root("sft"), 4)
    _ckpt(run.ckpt_root("distill"), 1)
    assert run.final_checkpoint() == sft  # the chat model is the run's final model
    assert run.trained_stages() == [BASE, "distill", "sft"]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_locate_maps_paths_back_onto_the_run(tmp_path: Path) -> None:
    run = RunLayout(tmp_path / "runs" / "small")
    base = _ckpt(run.ckpt_root(), 5)
    sft = _ckpt(run.ckpt_root("sft"), 3)
    assert locate(base) == (run, BASE) and locate(run.ckpt_root()) == (run, BASE)
    assert locate(sft) == (run, "sft") and locate(run.ckpt_root("sft")) == (run, "sft")
    assert locate(run.root) is None and locate(tmp_path / "exported") is None
    assert run_dir_of(sft) == run_dir_of(base) == run_dir_of(run.root) == run.root
    assert run_dir_of(tmp_path / "exported") == tmp_path / "exported"
