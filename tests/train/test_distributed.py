"""FSDP2 under real `torchrun` processes (gloo on CPU) against the single-process loop.

Gradients are compared, not only losses: Adam normalises a wrongly scaled gradient away, so a loss curve
can look right while ranks sum instead of average (pytorch/pytorch#162338). A constant LR
(min_lr_ratio=1) makes "stop at step 2, resume to 4" the same trajectory as "run to 4", so runs that change
world size mid-way can be compared step for step with the reference.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import HOMEGROWN_EXE

TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS = 4
COMMON = ["train.threads=1", "train.dtype=fp32", "train.batch_size=4", "train.seq_len=64", "train.warmup_steps=1",
          "train.min_lr_ratio=1.0", "train.eval_every=2", "train.eval_batches=1", "train.log_every=1",
          "train.ckpt_every=2", "train.keep_checkpoints=0", f"train.grad_dump_steps={STEPS}"]


def _run_dir(tiny_run: Path, path: Path) -> Path:
    path.mkdir(parents=True)
    shutil.copyfile(tiny_run / "tokenizer.json", path / "tokenizer.json")
    shutil.copytree(tiny_run / "shards", path / "shards")
    return path


def _pretrain(run: Path, ranks: int, steps: int, *extra: str, wait: bool = True) -> subprocess.Popen | None:
    args = ["pretrain", str(run), "--preset", "tiny", *(f"--set={o}" for o in [*COMMON, f"train.max_steps={steps}",
                                                                              *extra])]
    cmd = ([str(HOMEGROWN_EXE), *args] if ranks == 0 else
           [str(TORCHRUN), f"--nproc_per_node={ranks}", "--standalone", "--no-python", str(HOMEGROWN_EXE), *args])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return None


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _assert_same_grads(a: Path, b: Path, steps: range) -> None:
    for step in steps:
        ga, gb = (load_file(str(run / "grads" / f"step_{step}.safetensors")) for run in (a, b))
        assert ga.keys() == gb.keys()
        for name in ga:
            # Summation order differs (two half-batch sums all-reduced vs one sum), so an element that nearly
            # cancels can differ by fp32 rounding of the terms' scale, not its own: atol follows the tensor's scale.
            # A real bug (a wrong slice of the batch, no averaging over ranks) is off by tens of percent.
            scale = float(ga[name].abs().max())
            torch.testing.assert_close(gb[name], ga[name], rtol=1e-4, atol=1e-4 * scale,
                                       msg=lambda m, s=step, n=name: f"step {s} {n}: {m}")


@pytest.fixture(scope="module")
def reference(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plain single process (no torchrun): the gradients and losses every distributed run must reproduce."""
    run = _run_dir(tiny_run, tmp_path_factory.mktemp("dist") / "single")
    _pretrain(run, 0, STEPS)
    return run


def test_two_ranks_match_one_process_gradients_and_losses(reference: Path, tiny_run: Path, tmp_path: Path):
    run = _run_dir(tiny_run, tmp_path / "fsdp2")
    _pretrain(run, 2, STEPS)
    _assert_same_grads(reference, run, range(1, STEPS + 1))
    ref, got = _losses(reference), _losses(run)
    assert got.keys() == ref.keys()
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5)
    ckpt = run / "ckpt" / f"step_{STEPS}"
    assert len(list((ckpt / "dcp").glob("*.distcp"))) == 2  # one shard file per rank
    assert (ckpt / "model.safetensors").exists()  # gathered for serving / export


def test_resume_with_a_different_world_size(reference: Path, tiny_run: Path, tmp_path: Path):
    ref = _losses(reference)
    two_then_one = _run_dir(tiny_run, tmp_path / "two_then_one")
    _pretrain(two_then_one, 2, 2)
    _pretrain(two_then_one, 0, STEPS)
    one_then_two = _run_dir(tiny_run, tmp_path / "one_then_two")
    _pretrain(one_then_two, 0, 2)
    _pretrain(one_then_two, 2, STEPS)
    for run in (two_then_one, one_then_two):
        got = _losses(run)
        assert sorted(got) == list(range(1, STEPS + 1))
        for step in ref:
            assert got[step] == pytest.approx(ref[step], rel=1e-5), (run.name, step)
        _assert_same_grads(reference, run, range(3, STEPS + 1))


def test_killed_distributed_run_resumes(reference: Path, tiny_run: Path, tmp_path: Path):
    """SIGKILL the whole torchrun group after a checkpoint, rerun: same losses as never having stopped.

    The run is longer than the reference so the kill lands mid-run; with a constant LR its first steps are
    still the reference's.
    """
    run, steps = _run_dir(tiny_run, tmp_path / "killed"), 3 * STEPS
    proc = _pretrain(run, 2, steps, "train.ckpt_every=1", wait=False)
    deadline = time.monotonic() + 240
    while not (run / "ckpt" / "step_2").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "ckpt" / f"step_{steps}").exists(), "the run finished before it could be killed"
    done = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", "--standalone", "--no-python", str(HOMEGROWN_EXE),
                           "pretrain", str(run), "--preset", "tiny",
                           *(f"--set={o}" for o in [*COMMON, f"train.max_steps={steps}", "train.ckpt_every=1"])],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming pretrain" in done.stdout + done.stderr
    got, ref = _losses(run), _losses(reference)
    assert sorted(got) == list(range(1, steps + 1))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5)


def test_sharded_checkpoint_consolidates_to_the_same_weights(reference: Path, tmp_path: Path, cli):
    ckpt = tmp_path / "step"
    shutil.copytree(reference / "ckpt" / f"step_{STEPS}", ckpt)
    gathered = load_file(str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    done = cli("checkpoint", "consolidate", str(ckpt))
    assert done.returncode == 0, done.stderr
    rebuilt = load_file(str(ckpt / "model.safetensors"))
    assert rebuilt.keys() == gathered.keys()
    for name in gathered:
        assert torch.equal(rebuilt[name], gathered[name])


def test_compile_under_two_ranks_matches_one_process_gradients(reference: Path, tiny_run: Path, tmp_path: Path):
    """train.compile=true under FSDP2 compiles each block (`compile_blocks`), not the sharded root."""
    run = _run_dir(tiny_run, tmp_path / "compiled")
    _pretrain(run, 2, STEPS, "train.compile=true")
    # Same weights at step 1, so only the compiled kernels' rounding differs; Adam then amplifies it in tiny
    # gradients, so later steps are held to the losses.
    _assert_same_grads(reference, run, range(1, 2))
    ref, got = _losses(reference), _losses(run)
    assert got.keys() == ref.keys()
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5)
    assert (run / "ckpt" / f"step_{STEPS}" / "model.safetensors").exists()


def test_muon_under_two_ranks_matches_one_process(tiny_run: Path, tmp_path: Path):
    """Muon needs whole matrices: each rank gathers its shards' matrix, orthogonalises it and keeps its own rows.

    With issue 16's recipe switches on as well: the embedding's and the head's AdamW groups are found by name
    in the sharded model too, and wsd and the z-loss act alike on one and two ranks."""
    single, fsdp = _run_dir(tiny_run, tmp_path / "single"), _run_dir(tiny_run, tmp_path / "fsdp2")
    recipe = ["train.optimizer=muon", "model.tie_embeddings=false", "train.embed_lr_mult=3", "train.head_lr_mult=0.5",
              "train.schedule=wsd", "train.decay_frac=0.5", "train.min_lr_ratio=0.1", "train.z_loss=1e-4"]
    _pretrain(single, 0, STEPS, *recipe)
    _pretrain(fsdp, 2, STEPS, *recipe)
    _assert_same_grads(single, fsdp, range(1, STEPS + 1))  # steps 2.. see the weights Muon moved
    ref, got = _losses(single), _losses(fsdp)
    assert got.keys() == ref.keys()
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5)


def test_architecture_switches_under_two_ranks_match_one_process(tiny_run: Path, tmp_path: Path):
    """Issue 16's switches all on (q/k norms inside the FSDP2 blocks, zero-initialised projections, soft-capped
    logits, the relu² MLP): two ranks compute one process's gradients and losses."""
    switches = ["model.qk_norm=true", "model.zero_init_proj=true", "model.logit_softcap=15", "model.mlp=relu2"]
    single, fsdp = _run_dir(tiny_run, tmp_path / "single"), _run_dir(tiny_run, tmp_path / "fsdp2")
    _pretrain(single, 0, 2, *switches)
    _pretrain(fsdp, 2, 2, *switches)
    grads = load_file(str(fsdp / "grads" / "step_1.safetensors"))
    assert {"layers.0.self_attn.q_norm.weight", "layers.1.mlp.up_proj.weight"} <= grads.keys()
    _assert_same_grads(single, fsdp, range(1, 3))
    ref, got = _losses(single), _losses(fsdp)
    assert got.keys() == ref.keys()
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5)
