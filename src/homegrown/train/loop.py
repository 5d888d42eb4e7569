"""One training loop for pretraining and fine-tuning.

Determinism is a feature here: each step's batch comes from a generator seeded by (seed, step, micro-step),
and the LR is a pure function of the step, so resuming from a checkpoint replays exactly the steps an
uninterrupted run would have taken — the resume test compares losses step for step.

The same function runs under `torchrun`: train/distributed.py shards the model with FSDP2 and gives each
rank its slice of the global batch; checkpoints are DCP shards that any world size can resume from.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from homegrown import layout
from homegrown.config import SCHEDULES, LoRAConfig, ModelConfig, TrainConfig
from homegrown.data.pack import TokenShards, token_byte_lengths
from homegrown.errors import HomegrownError
from homegrown.eval.perplexity import evaluate
from homegrown.io import write_text_atomic
from homegrown.model import Transformer, count_params, cross_entropy
from homegrown.progress import StepProgress, console
from homegrown.tokenizer import load_tokenizer
from homegrown.train import budget as wallclock
from homegrown.train import checkpoint as ck
from homegrown.train import distributed
from homegrown.train.distributed import DistEnv
from homegrown.train.muon import Muon
from homegrown.train.plots import plot_loss_curve
from homegrown.train.precision import cpu_flags, reported_flags, run_dtype

Batch = tuple[torch.Tensor, ...]
BatchSource = Callable[[int, int, torch.Generator], Batch]
"""(batch_size, seq_len, generator) -> (inputs, targets[, loss_mask[, segments]]); SFT plugs its own in here."""
LossFn = Callable[[torch.nn.Module, Batch], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"]
"""(model, batch already on the device) -> scalar loss, or (loss, metrics): distillation plugs in its
teacher-matching loss, DPO its preference loss and TRL's reward metrics (averaged over micro-batches and ranks,
logged beside the loss)."""
EvalFn = Callable[[Transformer], "tuple[float, float] | tuple[float, float, dict[str, float]]"]
"""model -> (val loss, val bits per byte[, more metrics to log]), called under the run's autocast; SFT evaluates
on held-out conversations instead of val shards, DPO on held-out pairs."""


def lm_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy, restricted to `loss_mask` and to packed segments when the batch carries them."""
    mask = batch[2] if len(batch) > 2 else None
    segments = batch[3] if len(batch) > 3 else None
    return model(batch[0], batch[1], loss_mask=mask, segments=segments)


def lm_loss_with_z(coefficient: float) -> LossFn:
    """`lm_loss` plus PaLM's z-loss: `coefficient`·logsumexp(logits)², averaged over the same tokens.

    It pulls log Z towards 0 so the logits cannot drift upwards together (PaLM; OLMo 2 uses it too). Computed
    here from the model's logits and model.cross_entropy (the loss `lm_loss` gets inside the model), at the
    cost of one more pass over the logits; both parts are returned as metrics, logged beside the loss.
    """
    def loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch[2] if len(batch) > 2 else None
        logits = model(batch[0], segments=batch[3] if len(batch) > 3 else None)
        ce = cross_entropy(logits, batch[1], mask)
        lse2 = torch.logsumexp(logits.float(), dim=-1).square()
        if mask is None:
            z = lse2.mean()
        else:
            weights = mask.float()
            z = (lse2 * weights).sum() / weights.sum().clamp(min=1)
        return ce + coefficient * z, {"ce_loss": ce.detach(), "z_loss": z.detach()}

    return loss


@dataclass
class TrainResult:
    final_checkpoint: Path
    steps: int
    final_val_loss: float
    final_val_bpb: float
    tokens_per_second: float


def decay_start(cfg: TrainConfig) -> int:
    """First step of `wsd`'s linear decay: the last `decay_frac` of `max_steps`, never inside the warm-up."""
    return max(cfg.warmup_steps, cfg.max_steps - round(cfg.decay_frac * cfg.max_steps))


def lr_at(step: int, cfg: TrainConfig, peak: float) -> float:
    """Learning rate of `step` for a group peaking at `peak`: linear warmup, then `cfg.schedule` — cosine decay,
    or `wsd`'s constant peak then linear decay from `decay_start` — to `min_lr_ratio·peak` at `max_steps`.

    The warm-up does not depend on `max_steps` under either schedule: train/budget.py times warm-up steps
    before it chooses the step count.
    """
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    if cfg.schedule == "wsd":
        start = decay_start(cfg)
        if step < start:
            return peak
        left = max(0, cfg.max_steps - step) / max(1, cfg.max_steps - start)
        return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * left)
    raise HomegrownError(f"train.schedule must be one of {', '.join(SCHEDULES)}, not {cfg.schedule!r}")


def autocast_dtype(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype to use, or None for plain fp32: the deterministic rule of train/precision.py."""
    return run_dtype(requested, device).autocast


def muon_row_splits(name: str, cfg: ModelConfig) -> list[int]:
    """Rows of each logical matrix inside one of our fused weights (q|k|v, gate|up); [] for a plain matrix."""
    if name.endswith("self_attn.qkv.weight"):
        return [cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim]
    if name.endswith("mlp.gate_up.weight"):
        return [cfg.ffn_hidden, cfg.ffn_hidden]
    return []


EMBEDDING = "embed_tokens.weight"
HEAD = "lm_head.weight"
"""The parameters `train.embed_lr_mult` and `train.head_lr_mult` scale, by their names in our Transformer."""


def is_named(name: str, leaf: str) -> bool:
    """`name` is the parameter `leaf`, also behind a wrapper's prefix (`_orig_mod.`, `module.`). FSDP2's
    fully_shard keeps the names as they are; this guards the matching against wrappers that do not."""
    return name == leaf or name.endswith("." + leaf)


def _own_rate_groups(model: Transformer, cfg: TrainConfig) -> dict[str, float]:
    """{parameter name: lr multiplier} for the parameters whose AdamW group has a rate other than `lr`.

    Only multipliers other than 1 get a group of their own, so the default optimizer is exactly the one before
    these switches existed (same groups, same updates, and older checkpoints' optimizer state still loads).
    """
    own = {name: mult for name, mult in ((EMBEDDING, cfg.embed_lr_mult), (HEAD, cfg.head_lr_mult)) if mult != 1.0}
    if HEAD in own and model.cfg.tie_embeddings:
        raise HomegrownError(f"train.head_lr_mult={cfg.head_lr_mult:g} has no head to act on: with "
                             f"model.tie_embeddings=true the embedding is the head (its rate is train.embed_lr_mult);"
                             f" set model.tie_embeddings=false for a separate head, or train.head_lr_mult=1")
    return own


def build_optimizer(model: Transformer, cfg: TrainConfig, fused: bool) -> list[torch.optim.Optimizer]:
    """AdamW everywhere, or Muon on the 2-D hidden matrices with AdamW on embeddings, head and norms.

    Every group carries its `peak_lr`, which the schedule scales (`set_lrs`): `lr`, `lr`·`embed_lr_mult` and
    `lr`·`head_lr_mult` for the AdamW groups (the last two only when not 1), `muon_lr` for Muon's. Weight decay
    goes to matrices only. A multiplier that finds no trainable parameter to act on is refused, not ignored.
    """
    own = _own_rate_groups(model, cfg)
    decay, no_decay = [], []
    separate: dict[str, list[torch.nn.Parameter]] = {leaf: [] for leaf in own}
    hidden: dict[tuple[int, ...], list[torch.nn.Parameter]] = {}
    frozen: set[str] = set()
    for name, p in model.named_parameters():
        leaf = next((leaf for leaf in own if is_named(name, leaf)), None)
        if not p.requires_grad:  # frozen base weights of an adapter (LoRA) run
            frozen.update([leaf] if leaf else [])
            continue
        if leaf is not None:
            separate[leaf].append(p)
        elif p.dim() < 2:
            no_decay.append(p)
        elif cfg.optimizer == "muon" and name.startswith("layers."):
            hidden.setdefault(tuple(muon_row_splits(name, model.cfg)), []).append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "peak_lr": cfg.lr},
              {"params": no_decay, "weight_decay": 0.0, "peak_lr": cfg.lr}]
    for leaf, params in separate.items():
        field = "embed_lr_mult" if leaf == EMBEDDING else "head_lr_mult"
        if not params:
            why = "is frozen in this run (an adapter run trains its adapters only)" if leaf in frozen else "is absent"
            raise HomegrownError(f"train.{field}={own[leaf]:g} has nothing to act on: {leaf} {why}; "
                                 f"set train.{field}=1")
        groups.append({"params": params, "weight_decay": cfg.weight_decay if params[0].dim() >= 2 else 0.0,
                       "peak_lr": cfg.lr * own[leaf]})
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)
    if cfg.optimizer == "adamw":
        return [adamw]
    if cfg.optimizer != "muon":
        raise HomegrownError(f"train.optimizer must be adamw or muon, not {cfg.optimizer!r}")
    if cfg.muon_ns_dtype not in ("auto", "fp32", "bf16"):
        raise HomegrownError(f"train.muon_ns_dtype must be auto, fp32 or bf16, not {cfg.muon_ns_dtype!r}")
    on_gpu = any(p.device.type == "cuda" for ps in hidden.values() for p in ps)
    ns_bf16 = cfg.muon_ns_dtype == "bf16" or (cfg.muon_ns_dtype == "auto" and on_gpu)
    # Keller Jordan's scaling (lr ~0.02, sqrt(fan_out/fan_in) per logical matrix); weight decay rescaled so the
    # per-step shrink lr·wd equals AdamW's, otherwise Muon's ~10× larger lr would decay them ~10× harder.
    muon = Muon([{"params": ps, "row_splits": list(splits), "peak_lr": cfg.muon_lr} for splits, ps in hidden.items()],
                lr=cfg.muon_lr, weight_decay=cfg.weight_decay * cfg.lr / cfg.muon_lr,
                ns_dtype=torch.bfloat16 if ns_bf16 else torch.float32)
    return [adamw, muon]


def set_lrs(optimizers: list[torch.optim.Optimizer], step: int, cfg: TrainConfig) -> None:
    """The schedule's rate for `step` in every group of every optimizer, each scaled to its own `peak_lr`."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg, group["peak_lr"])


def _plan_budget(cfg: TrainConfig, step_times: list[float], t_start: float, evaluate_once: Callable[[], object],
                 amp: torch.dtype | None, device: torch.device, env: DistEnv, key: str) -> wallclock.BudgetPlan:
    """Time one evaluation, then choose the step count that fills `cfg.budget_minutes` (train/budget.py).

    Every figure is averaged over ranks first, so all ranks of a torchrun job choose the same count.
    """
    t_eval = time.perf_counter()
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        evaluate_once()
    eval_s = distributed.mean_over_ranks(time.perf_counter() - t_eval, env)
    times = [distributed.mean_over_ranks(t, env) for t in step_times]
    elapsed = distributed.mean_over_ranks(time.perf_counter() - t_start, env)
    return wallclock.plan_steps(cfg.budget_minutes, times, eval_s, elapsed, cfg.eval_every, len(times) + 1, key)


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The sampler for one micro-batch, derived from (seed, step, micro) alone: this is what makes resume exact."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 1_009 + micro * 17) % (2**63))
    return g


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    """Global gradient norm (over all ranks' shards), then clip — the order torchtitan uses for DTensors."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = distributed.full_tensor(torch.nn.utils.get_total_norm(grads))
    torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, total)
    return float(total)


def _dump_gradients(model: torch.nn.Module, path: Path, env: DistEnv) -> None:
    """Full (unsharded) gradients as safetensors: how the distributed test compares 1 and N ranks."""
    from safetensors.torch import save_file

    grads = {name: distributed.full_tensor(p.grad).detach().cpu().contiguous()
             for name, p in model.named_parameters() if p.grad is not None}
    if env.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(grads, str(path))


def _truncate_metrics(path: Path, after_step: int) -> None:
    """Drop lines a killed run logged after its last checkpoint; the resumed run logs those steps again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= after_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def train(model_cfg: ModelConfig, cfg: TrainConfig, shard_dir: Path | None, run_dir: Path, tokenizer_path: Path,
          init_from: Path | None = None, batch_source: BatchSource | None = None, stage: str = layout.BASE,
          progress: bool = True, loss_fn: LossFn = lm_loss, eval_fn: EvalFn | None = None,
          lora: LoRAConfig | None = None, budget_spent_s: float = 0.0) -> TrainResult:
    """Train (or resume) `stage` of `run_dir` (its checkpoints, metrics and loss curve as homegrown.layout
    places them), starting from `init_from` weights when given.

    Resumes automatically when that checkpoint directory already holds a checkpoint. Returns the final one.
    `shard_dir` may be None when both `batch_source` and `eval_fn` are given.
    Under torchrun every rank calls this; rank 0 alone logs, plots and prints.
    With `lora` (rank > 0) the `init_from` weights are frozen and only adapters train (posttrain.lora); the
    checkpoints hold the adapters, the last one the merged weights too.
    `budget_spent_s`: wall-clock the run already spent on this budget before the loop (choosing a shape).
    """
    t_start = time.perf_counter()
    cfg.check()
    if cfg.z_loss > 0:
        if loss_fn is not lm_loss:
            raise HomegrownError(f"train.z_loss={cfg.z_loss:g} is added to the language-model loss, and {stage} "
                                 f"trains with a loss of its own; set train.z_loss=0")
        loss_fn = lm_loss_with_z(cfg.z_loss)
    env = distributed.init_distributed()
    run_dir = Path(run_dir)
    run = layout.RunLayout(run_dir)
    ckpt_root, metrics_path = run.ckpt_root(stage), run.metrics(stage)
    label = "pretrain" if stage == layout.BASE else stage
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = env.device
    dtype = run_dtype(cfg.dtype, device)
    amp = dtype.autocast
    torch.manual_seed(cfg.seed)

    model = Transformer(model_cfg)
    if init_from is not None:
        ck.load_weights(model, ck.resolve_checkpoint(init_from) / ck.WEIGHTS)
    adapters = None
    if lora is not None and lora.rank > 0:
        if init_from is None:
            raise HomegrownError("LoRA adapts an existing model; it needs a checkpoint to start from")
        from homegrown.posttrain import lora as lora_mod

        adapted = lora_mod.attach(model, lora)
        adapters = ck.AdapterInfo(lora, ck.resolve_checkpoint(init_from))
        if env.is_main:
            trainable, total = lora_mod.count_trainable(model)
            console.print(f"{label}: LoRA rank {lora.rank}, alpha {lora.alpha:g} on {lora.targets} of "
                          f"{len(adapted)} linear layers: {trainable:,} of {total:,} parameters train")
    model.activation_checkpointing = cfg.activation_checkpointing
    model.to(device)
    if cfg.compile:
        distributed.require_compiler(device)
    if env.distributed:
        # On CUDA, FSDP2's policy casts to bf16 itself (fp32 gradient reduction), so autocast is not needed.
        fsdp_bf16 = device.type == "cuda" and amp is not None
        if cfg.compile:
            distributed.compile_blocks(model)
        distributed.shard_model(model, device, mixed_precision=fsdp_bf16)
        amp = None if fsdp_bf16 else amp
    optimizers = build_optimizer(model, cfg, fused=device.type == "cuda")
    # Whole-model compile single-process (fastest there); under FSDP2 the blocks were compiled above.
    train_fn = torch.compile(model) if cfg.compile and not env.distributed else model

    if eval_fn is None:
        val = TokenShards(shard_dir, "val")
        byte_lengths = torch.from_numpy(token_byte_lengths(load_tokenizer(tokenizer_path)))

        def eval_fn(m: Transformer) -> tuple[float, float]:
            return evaluate(m, val, byte_lengths, cfg.batch_size, cfg.seq_len, cfg.eval_batches, device, amp)

    if batch_source is None:
        train_shards = TokenShards(shard_dir, "train")
        batch_source = train_shards.sample

    start_step = 0
    resume_from = ck.latest_checkpoint(ckpt_root)
    budget_key = wallclock.fingerprint(model_cfg, cfg, env.world_size)
    plan: wallclock.BudgetPlan | None = None
    if resume_from is not None:
        ck.check_same_config(resume_from, model_cfg)
        state = ck.load_training_checkpoint(resume_from, model, optimizers, env, adapters)
        _set_rng_state(state["rng"])
        start_step = int(state["step"])
        if cfg.budget_minutes > 0:
            plan = wallclock.plan_of_checkpoint(state, cfg.budget_minutes, resume_from)
            if plan is None:  # started with a fixed step count (budget off, or a run from before budgets)
                fixed = int(json.loads((resume_from / ck.TRAIN_INFO).read_text())["train"]["max_steps"])
                if env.is_main:
                    console.print(f"{label}: {resume_from} was started with train.max_steps={fixed}, not a "
                                  f"wall-clock budget; it keeps that step count")
                cfg = replace(cfg, budget_minutes=0.0, max_steps=fixed)
        if env.is_main:
            _truncate_metrics(metrics_path, start_step)
            console.print(f"resuming {label} from {resume_from} (step {start_step}, saved by "
                          f"{state.get('world_size', 1)} rank(s), now {env.world_size})")
    else:
        if cfg.budget_minutes > 0:  # a run killed before its first checkpoint keeps the count it chose
            plan = wallclock.load_plan(run.budget(stage), cfg.budget_minutes, budget_key)
        if metrics_path.exists() and env.is_main:
            metrics_path.unlink()
    distributed.barrier(env)

    probe_end = 0  # > 0 while the step count is still to be chosen from the time the first steps take
    if plan is not None:
        cfg = replace(cfg, max_steps=plan.max_steps)
    elif cfg.budget_minutes > 0:
        probe_end = wallclock.probe_steps(cfg.warmup_steps)
        cfg = replace(cfg, max_steps=max(cfg.max_steps, probe_end + 1))
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum
    flops_per_step = model.flops_per_token(cfg.seq_len) * tokens_per_step
    n_params = count_params(model_cfg)
    info = {"model": asdict(model_cfg), "train": asdict(cfg), "params": n_params, "device": str(device),
            "autocast": str(amp), "dtype_reason": dtype.reason, "tokens_per_step": tokens_per_step,
            "world_size": env.world_size, "budget": asdict(plan) if plan else None}
    if device.type == "cpu":
        info["cpu_flags"] = reported_flags(cpu_flags())
    if start_step == 0 and env.is_main:
        ranks = f" × {env.world_size} ranks (FSDP2)" if env.distributed else ""
        steps = (f"steps for a {cfg.budget_minutes:g}-minute budget, chosen after timing the first {probe_end}"
                 if probe_end else f"{cfg.max_steps} steps")
        console.print(f"{label}: {n_params:,} parameters on {device}{ranks}, autocast {amp or 'off (fp32)'} "
                      f"({dtype.reason}), {tokens_per_step:,} tokens/step × {steps}")

    def save(step: int) -> Path:
        state = {"step": step, "rng": _rng_state(), **({"budget": asdict(plan)} if plan else {})}
        # An adapter run's intermediate checkpoints are the adapters alone; its last one is servable as well.
        full = cfg.save_full_weights and (adapters is None or step == cfg.max_steps)
        return ck.save_training_checkpoint(ckpt_root, step, model, optimizers, tokenizer_path, state, env,
                                           extra=info, keep=cfg.keep_checkpoints, full_weights=full,
                                           adapters=adapters)

    def log(record: dict) -> None:
        if env.is_main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    model.train()
    val_loss = val_bpb = float("nan")
    t_window, tok_window, tok_rate = time.perf_counter(), 0, 0.0
    final = resume_from if resume_from is not None and start_step >= cfg.max_steps else None
    step_times: list[float] = []
    with StepProgress(label, cfg.max_steps, start_step, enabled=progress and env.is_main) as bar:
        step = start_step
        while step < cfg.max_steps:
            t_step = time.perf_counter()
            set_lrs(optimizers, step, cfg)
            loss_sum = 0.0
            extra: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                distributed.set_gradient_sync(model, micro == cfg.grad_accum - 1)
                batch = distributed.rank_slice(batch_source(cfg.batch_size, cfg.seq_len,
                                                            step_generator(cfg.seed, step, micro)), env)
                batch = tuple(t.to(device) for t in batch)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    out = loss_fn(train_fn, batch)
                loss, metrics = out if isinstance(out, tuple) else (out, {})
                loss = loss / cfg.grad_accum
                loss.backward()
                loss_sum += float(loss.detach())
                for k, v in metrics.items():
                    extra[k] = extra.get(k, 0.0) + float(v) / cfg.grad_accum
            loss_sum = distributed.mean_over_ranks(loss_sum, env)
            extra = {k: distributed.mean_over_ranks(v, env) for k, v in extra.items()}
            if not math.isfinite(loss_sum):
                raise HomegrownError(
                    f"loss became {loss_sum} at step {step}; lower train.lr and rerun with a new --out")
            if step < cfg.grad_dump_steps:
                _dump_gradients(model, run.grads(step + 1), env)
            grad_norm = _clip_gradients(model, cfg.grad_clip)
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            done = step + 1
            if probe_end:
                step_times.append(time.perf_counter() - t_step)
            if done == probe_end:
                t_plan = time.perf_counter()
                plan = _plan_budget(cfg, step_times, t_start - budget_spent_s, lambda: eval_fn(model), amp, device,
                                    env, budget_key)
                t_window += time.perf_counter() - t_plan  # the timed evaluation is not training throughput
                cfg = replace(cfg, max_steps=plan.max_steps)
                info.update(train=asdict(cfg), budget=asdict(plan))
                probe_end = 0
                bar.set_total(cfg.max_steps)
                if env.is_main:
                    wallclock.save_plan(plan, run.budget(stage))
                    console.print(f"{label}: {plan.step_seconds:.3f} s/step, {plan.eval_seconds:.1f} s/eval here: "
                                  f"{plan.max_steps} steps fill the {plan.budget_minutes:g}-minute budget "
                                  f"(saved in {run.budget(stage)})")
            tok_window += tokens_per_step
            elapsed = time.perf_counter() - t_window
            record = {"step": done, "loss": loss_sum, **extra, "lr": lr_at(step, cfg, cfg.lr), "grad_norm": grad_norm,
                      "elapsed_s": round(time.perf_counter() - t_start, 3)}
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                tok_rate = tok_window / max(elapsed, 1e-9)
                record["tokens_per_s"] = tok_rate
                record["flops_per_s"] = tok_rate / tokens_per_step * flops_per_step
                if device.type == "cuda":
                    record["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                t_window, tok_window = time.perf_counter(), 0
            if done % cfg.eval_every == 0 or done == cfg.max_steps:
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    val_loss, val_bpb, *more = eval_fn(model)
                record.update(val_loss=val_loss, val_bpb=val_bpb, **(more[0] if more else {}))
            log(record)
            bar.update(done, loss=loss_sum, **({"tok/s": f"{tok_rate:,.0f}"} if tok_rate else {}),
                       **({"val_bpb": val_bpb} if math.isfinite(val_bpb) else {}))
            # No checkpoint before the step count is chosen: a resume must know it (train/budget.py).
            if (done % cfg.ckpt_every == 0 or done == cfg.max_steps) and not probe_end:
                final = save(done)
                if env.is_main:
                    plot_loss_curve(metrics_path, run.loss_png(stage), title=f"{label} — {run_dir.name}")
            step = done
    if final is None:
        raise HomegrownError(f"{label} ran no steps (max_steps={cfg.max_steps})")
    if not env.is_main:
        return TrainResult(final, cfg.max_steps, val_loss, val_bpb, 0.0)
    history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    evals = [h for h in history if "val_loss" in h]
    rates = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    return TrainResult(final, cfg.max_steps, evals[-1]["val_loss"] if evals else float("nan"),
                       evals[-1]["val_bpb"] if evals else float("nan"),
                       float(np.median(rates)) if rates else 0.0)
