import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from homegrown.config import LoRAConfig, TrainConfig, apply_overrides, get_preset
from homegrown.errors import HomegrownError
from homegrown.model import Transformer
from homegrown.posttrain import lora as lora_mod
from homegrown.posttrain.dpo import dpo_train_config
from homegrown.train.checkpoint import list_checkpoints, load_model, save_checkpoint
from homegrown.train.loop import build_optimizer, decay_start, lm_loss, lm_loss_with_z, lr_at, set_lrs, train

TINY = ["train.threads=1", "train.dtype=fp32"]


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lr_warmup_then_cosine_to_floor():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg, 1.0) == pytest.approx(0.1)
    assert lr_at(9, cfg, 1.0) == pytest.approx(1.0)
    assert lr_at(55, cfg, 1.0) == pytest.approx(0.55)
    assert lr_at(100, cfg, 1.0) == pytest.approx(0.1)
    assert all(lr_at(s, cfg, 1.0) >= lr_at(s + 1, cfg, 1.0) for s in range(10, 100))


def test_lr_wsd_holds_the_peak_then_decays_linearly_over_the_last_fifth():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="wsd", decay_frac=0.2)
    assert decay_start(cfg) == 80
    assert lr_at(0, cfg, 2.0) == pytest.approx(0.2)  # warm-up exactly as cosine's
    assert lr_at(9, cfg, 2.0) == 2.0  # warm-up end
    assert lr_at(10, cfg, 2.0) == lr_at(79, cfg, 2.0) == lr_at(80, cfg, 2.0) == 2.0  # stable, through decay start
    assert lr_at(90, cfg, 2.0) == pytest.approx(2.0 * (0.1 + 0.9 * 10 / 20))
    assert lr_at(99, cfg, 2.0) == pytest.approx(2.0 * (0.1 + 0.9 * 1 / 20))  # the last step
    assert lr_at(100, cfg, 2.0) == pytest.approx(0.2)  # the floor, where the schedule ends
    everything = replace(cfg, decay_frac=1.0)  # the decay never starts inside the warm-up
    assert decay_start(everything) == 10 and lr_at(55, everything, 1.0) == pytest.approx(0.1 + 0.9 * 45 / 90)
    assert lr_at(99, replace(cfg, decay_frac=0.0), 1.0) == 1.0  # no decay at all


def test_unknown_schedule_and_bad_decay_share_are_refused_by_name():
    with pytest.raises(HomegrownError, match=r"train\.schedule must be one of cosine, wsd, not 'linear'"):
        apply_overrides(get_preset("tiny"), ["train.schedule=linear"])
    with pytest.raises(HomegrownError, match=r"train\.decay_frac must be between 0 and 1, not 1\.5"):
        apply_overrides(get_preset("tiny"), ["train.schedule=wsd", "train.decay_frac=1.5"])
    with pytest.raises(HomegrownError, match=r"train\.schedule must be one of"):
        lr_at(60, TrainConfig(schedule="linear"), 1.0)


def test_wsd_run_killed_mid_schedule_resumes_with_identical_losses(tiny_run, tmp_path, capsys):
    """Killed (its later checkpoints gone) in the stable phase; the resumed run crosses into the decay."""
    preset = apply_overrides(get_preset("tiny"), [*TINY, "train.schedule=wsd", "train.decay_frac=0.5",
                                                  "train.max_steps=20", "train.ckpt_every=7",
                                                  "train.eval_every=100", "train.keep_checkpoints=0"])
    args = (preset.model, preset.train, tiny_run / "shards", tmp_path, tiny_run / "tokenizer.json")
    train(*args, progress=False)
    reference = _losses(tmp_path)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lrs[5:11] == [preset.train.lr] * 6 and lrs[-1] < lrs[11] < lrs[10]  # stable, then decaying from 10
    for ckpt in list_checkpoints(tmp_path / "ckpt")[1:]:
        shutil.rmtree(ckpt)
    capsys.readouterr()
    assert train(*args, progress=False).steps == 20
    assert "(step 7," in capsys.readouterr().err  # resumed from its first checkpoint, not started afresh
    assert _losses(tmp_path) == reference  # exact float equality, step for step


def test_compiled_run_killed_resumes_with_identical_losses(tiny_run, tmp_path, capsys):
    """`small` trains compiled by default: a killed compiled run resumes to the very losses of an unbroken one,
    its checkpoints keep plain parameter names (no `_orig_mod.`), and the weights load back uncompiled."""
    preset = apply_overrides(get_preset("tiny"), [*TINY, "train.compile=true", "train.optimizer=muon",
                                                  "train.max_steps=12", "train.ckpt_every=5", "train.eval_every=6",
                                                  "train.keep_checkpoints=0"])
    args = (preset.model, preset.train, tiny_run / "shards", tmp_path, tiny_run / "tokenizer.json")
    train(*args, progress=False)
    reference = _losses(tmp_path)
    for ckpt in list_checkpoints(tmp_path / "ckpt")[1:]:
        shutil.rmtree(ckpt)
    capsys.readouterr()
    assert train(*args, progress=False).steps == 12
    assert "(step 5," in capsys.readouterr().err
    assert _losses(tmp_path) == reference
    model = load_model(list_checkpoints(tmp_path / "ckpt")[-1])
    assert not any("_orig_mod" in name for name in model.state_dict())


def _group_of(optimizer, param):
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


def test_embedding_and_head_take_their_lr_multiples_through_the_schedule():
    preset = apply_overrides(get_preset("tiny"), ["model.tie_embeddings=false", "train.optimizer=muon",
                                                  "train.embed_lr_mult=3", "train.head_lr_mult=0.5"])
    cfg = preset.train
    model = Transformer(preset.model)
    adamw, muon = build_optimizer(model, cfg, fused=False)
    set_lrs([adamw, muon], 30, cfg)  # inside the cosine decay: every rate is its peak times the same factor
    factor = lr_at(30, cfg, 1.0)
    assert 0.1 < factor < 1
    embedding, head = _group_of(adamw, model.embed_tokens.weight), _group_of(adamw, model.lm_head.weight)
    assert embedding["params"] == [model.embed_tokens.weight] and head["params"] == [model.lm_head.weight]
    assert embedding["lr"] == pytest.approx(3 * cfg.lr * factor) and head["lr"] == pytest.approx(0.5 * cfg.lr * factor)
    assert embedding["weight_decay"] == head["weight_decay"] == cfg.weight_decay  # matrices: decayed as before
    norms = _group_of(adamw, model.norm.weight)
    assert norms["lr"] == pytest.approx(cfg.lr * factor) and norms["weight_decay"] == 0.0
    assert [g["lr"] for g in muon.param_groups] == pytest.approx([cfg.muon_lr * factor] * len(muon.param_groups))

    default = apply_overrides(get_preset("tiny"), ["model.tie_embeddings=false"])
    plain = Transformer(default.model)
    (adamw,) = build_optimizer(plain, default.train, fused=False)
    assert len(adamw.param_groups) == 2  # multipliers of 1: the groups (and updates) of before the switches
    assert _group_of(adamw, plain.embed_tokens.weight) is _group_of(adamw, plain.lm_head.weight)


def test_lr_multipliers_with_nothing_to_act_on_are_refused():
    tied = apply_overrides(get_preset("tiny"), ["train.head_lr_mult=2"])
    with pytest.raises(HomegrownError, match="the embedding is the head"):
        build_optimizer(Transformer(tied.model), tied.train, fused=False)
    frozen = apply_overrides(get_preset("tiny"), ["train.embed_lr_mult=2"])
    model = Transformer(frozen.model)
    lora_mod.attach(model, LoRAConfig(rank=2))
    with pytest.raises(HomegrownError, match=r"embed_tokens\.weight is frozen"):
        build_optimizer(model, frozen.train, fused=False)
    with pytest.raises(HomegrownError, match=r"train\.embed_lr_mult must be positive"):
        apply_overrides(get_preset("tiny"), ["train.embed_lr_mult=0"])


def test_run_with_own_embedding_and_head_rates_resumes_with_identical_losses(tiny_run, tmp_path, capsys):
    """The extra AdamW groups' state round-trips through the checkpoint."""
    preset = apply_overrides(get_preset("tiny"), [*TINY, "model.tie_embeddings=false", "train.embed_lr_mult=4",
                                                  "train.head_lr_mult=0.5", "train.max_steps=12",
                                                  "train.ckpt_every=6", "train.eval_every=100",
                                                  "train.keep_checkpoints=0"])
    args = (preset.model, preset.train, tiny_run / "shards", tmp_path, tiny_run / "tokenizer.json")
    train(*args, progress=False)
    reference = _losses(tmp_path)
    shutil.rmtree(tmp_path / "ckpt" / "step_12")
    capsys.readouterr()
    train(*args, progress=False)
    assert "(step 6," in capsys.readouterr().err
    assert _losses(tmp_path) == reference


def test_z_loss_is_palms_term_beside_the_same_cross_entropy():
    """Against torch's cross-entropy and logsumexp on the same logits, with and without a loss mask, gradients too."""
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny").model)
    x, y = torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16))
    mask = (torch.arange(16) % 3 != 0).long().expand(2, 16)
    for batch in ((x, y), (x, y, mask)):
        keep = batch[2].bool() if len(batch) > 2 else torch.ones_like(y, dtype=torch.bool)
        model.zero_grad()
        logits = model(x)[keep]
        ce = torch.nn.functional.cross_entropy(logits, y[keep])
        z = torch.logsumexp(logits, dim=-1).square().mean()
        (ce + 0.01 * z).backward()
        expected = model.lm_head.weight.grad.clone()
        ce, z = float(ce.detach()), float(z.detach())
        model.zero_grad()
        total, metrics = lm_loss_with_z(0.01)(model, batch)
        total.backward()
        assert float(metrics["ce_loss"]) == pytest.approx(ce, rel=1e-6)
        assert float(metrics["z_loss"]) == pytest.approx(z, rel=1e-6) and z > 30  # ≈ log(512)² at init
        assert float(total.detach()) == pytest.approx(ce + 0.01 * z, rel=1e-6)
        with torch.no_grad():
            assert float(metrics["ce_loss"]) == float(lm_loss(model, batch))  # the loss without it, exactly
        assert torch.allclose(model.lm_head.weight.grad, expected, rtol=1e-4, atol=1e-7)


def test_z_loss_trains_logged_apart_and_only_on_the_language_model_loss(tiny_run, tmp_path):
    preset = apply_overrides(get_preset("tiny"), [*TINY, "train.z_loss=1e-3", "train.max_steps=3",
                                                  "train.eval_every=100"])
    args = (preset.model, preset.train, tiny_run / "shards", tmp_path, tiny_run / "tokenizer.json")
    train(*args, progress=False)
    for record in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()):
        assert record["loss"] == pytest.approx(record["ce_loss"] + 1e-3 * record["z_loss"], rel=1e-6)
    with pytest.raises(HomegrownError, match=r"train\.z_loss=0\.001 is added to the language-model loss"):
        train(*args, progress=False, stage="distill", loss_fn=lambda model, batch: model(batch[0]).sum())
    assert dpo_train_config(preset.train, preset.dpo, preset.model).z_loss == 0.0  # DPO's loss is its own
    with pytest.raises(HomegrownError, match=r"train\.z_loss must be"):
        apply_overrides(get_preset("tiny"), ["train.z_loss=-1"])


def test_tiny_training_learns_and_writes_artifacts(tiny_run, tmp_path):
    preset = apply_overrides(get_preset("tiny"), [*TINY, "train.max_steps=60", "train.eval_every=30"])
    run = tmp_path / "run"
    result = train(preset.model, preset.train, tiny_run / "shards", run, tiny_run / "tokenizer.json",
                   progress=False)
    losses = _losses(run)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5  # from ~ln(512)=6.2 down by a clear margin
    assert result.final_checkpoint.name == "step_60" and result.final_val_bpb < 4.5
    assert (run / "loss_pretrain.png").stat().st_size > 10_000
    assert [p.name for p in list_checkpoints(run / "ckpt")] == ["step_40", "step_60"]  # keep_checkpoints=2
    model = load_model(run)
    assert model.cfg == preset.model


def test_muon_option_trains(tiny_run, tmp_path):
    preset = apply_overrides(get_preset("tiny"), [*TINY, "train.max_steps=30", "train.optimizer=muon"])
    train(preset.model, preset.train, tiny_run / "shards", tmp_path, tiny_run / "tokenizer.json", progress=False)
    losses = _losses(tmp_path)
    assert losses[-1] < losses[0] - 0.5


def test_resume_refuses_a_different_model(tiny_run, tmp_path):
    preset = apply_overrides(get_preset("tiny"), [*TINY, "train.max_steps=20"])
    train(preset.model, preset.train, tiny_run / "shards", tmp_path, tiny_run / "tokenizer.json", progress=False)
    other = apply_overrides(get_preset("tiny"), [*TINY, "train.max_steps=40", "model.n_layers=3"])
    with pytest.raises(HomegrownError, match="another model config"):
        train(other.model, other.train, tiny_run / "shards", tmp_path, tiny_run / "tokenizer.json", progress=False)


def test_half_written_checkpoint_is_ignored(tiny_run, tmp_path):
    preset = apply_overrides(get_preset("tiny"), [*TINY, "train.max_steps=20"])
    result = train(preset.model, preset.train, tiny_run / "shards", tmp_path, tiny_run / "tokenizer.json",
                   progress=False)
    (tmp_path / "ckpt" / ".step_30.tmp").mkdir()  # what a crash mid-save leaves behind
    assert list_checkpoints(tmp_path / "ckpt")[-1] == result.final_checkpoint
    save_checkpoint(tmp_path / "ckpt", 30, load_model(result.final_checkpoint), tiny_run / "tokenizer.json")
    assert not (tmp_path / "ckpt" / ".step_30.tmp").exists()


def test_sigkilled_run_resumes_with_identical_losses(tiny_run, tmp_path, cli):
    """A real child process is SIGKILLed after a checkpoint; the restart must replay the same loss values."""
    settings = [*TINY, "train.max_steps=80", "train.ckpt_every=10", "train.eval_every=40", "train.keep_checkpoints=0"]
    args = ["pretrain", "--preset", "tiny"] + [arg for s in settings for arg in ("--set", s)]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for run in (reference, killed):
        run.mkdir()
        for name in ("tokenizer.json", "shards"):
            (run / name).symlink_to(tiny_run / name)
    done = cli(*args[:1], str(reference), *args[1:])
    assert done.returncode == 0, done.stderr

    exe = Path(sys.executable).with_name("homegrown")
    proc = subprocess.Popen([str(exe), args[0], str(killed), *args[1:]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "ckpt" / "step_30").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "ckpt" / "step_30").exists(), "child never reached its third checkpoint"
    interrupted_at = len(_losses(killed))
    assert interrupted_at < 80, "the run finished before it could be killed; the test proves nothing"

    resumed = cli(*args[:1], str(killed), *args[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming pretrain" in resumed.stderr
    assert _losses(killed) == _losses(reference)  # exact float equality, step for step


def test_gradient_accumulation_averages_like_one_big_batch(tiny_run, tmp_path):
    """Same 8 windows as one batch of 8 or two micro-batches of 4: same loss and same (pre-clip) gradient norm.

    The gradient norm is compared, not just the loss, because Adam would hide a wrongly scaled gradient.
    """
    from homegrown.data.pack import TokenShards

    windows = TokenShards(tiny_run / "shards", "train").sample(8, 64, torch.Generator().manual_seed(3))
    calls = []

    def fixed_batches(batch_size, seq_len, generator):
        start = len(calls) * batch_size % 8
        calls.append(start)
        return windows[0][start:start + batch_size], windows[1][start:start + batch_size]

    records = {}
    for accum, batch in ((1, 8), (2, 4)):
        calls.clear()
        preset = apply_overrides(get_preset("tiny"), [*TINY, "train.max_steps=1", f"train.batch_size={batch}",
                                                      f"train.grad_accum={accum}"])
        run = tmp_path / f"accum{accum}"
        train(preset.model, preset.train, tiny_run / "shards", run, tiny_run / "tokenizer.json",
              batch_source=fixed_batches, progress=False)
        records[accum] = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert records[1]["loss"] == pytest.approx(records[2]["loss"], rel=1e-5)
    assert records[1]["grad_norm"] == pytest.approx(records[2]["grad_norm"], rel=1e-4)
