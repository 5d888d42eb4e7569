"""Configs and named presets: the only place defaults live.

Every stage takes one of these dataclasses; the CLI only fills them. A preset names a complete model +
training setup so that `--preset small` on a laptop and `--preset llama-8b` on a cluster go through the
same code, and `--set section.field=value` overrides any single field.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import json
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homegrown.errors import HomegrownError
from homegrown.io import write_json_atomic

MLP_KINDS = ("swiglu", "relu2")
"""`ModelConfig.mlp` choices (model.py builds one module class per kind)."""


@dataclass
class ModelConfig:
    """Shape of a Llama-style decoder. Field names follow the paper/HF meaning so export is a rename."""

    vocab_size: int = 8192
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    n_kv_heads: int = 4
    ffn_hidden: int = 0
    """0 means the Llama rule: 8/3·d rounded up to a multiple of `ffn_multiple_of` (4·d for `mlp=relu2`, the same
    parameter count without the gate)."""
    ffn_multiple_of: int = 64
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    qk_norm: bool = False
    """RMSNorm (a learned weight per head dimension) on every query and key head after the projection, before
    RoPE, as Qwen3 and OLMo-2 do: attention logits stay bounded, so higher learning rates stay stable. Exports as
    Qwen3 (transformers `Qwen3ForCausalLM`, GGUF `qwen3`)."""
    zero_init_proj: bool = False
    """Initialise the attention output and MLP down projections to zero (modded-nanogpt), so every block starts as
    the identity on the residual stream; initialisation only, the model and its exports are unchanged."""
    logit_softcap: float = 0.0
    """When > 0, logits become c·tanh(logits / c) with c this value (Gemma 2 uses 30, modded-nanogpt 15-30) in
    training and in every inference path; 0 = off. No Llama or Qwen3 model has it, so HF/GGUF export refuses it."""
    mlp: str = "swiglu"
    """`swiglu` (Llama's gated SiLU) or `relu2`: up → relu(x)² → down without a gate (modded-nanogpt's MLP), whose
    default width 4·d has SwiGLU's parameter count. Setting it with `--set` recomputes `ffn_hidden` unless that is
    set too. No Llama or Qwen3 model has relu2, so HF/GGUF export refuses it."""

    def __post_init__(self) -> None:
        if self.mlp not in MLP_KINDS:
            raise HomegrownError(f"unknown model.mlp {self.mlp!r}; choose one of: {', '.join(MLP_KINDS)}")
        if self.ffn_hidden == 0:
            # relu2's one 4·d matrix pair holds as many weights as SwiGLU's three 8/3·d ones
            hidden = 4 * self.d_model if self.mlp == "relu2" else int(8 * self.d_model / 3)
            self.ffn_hidden = self.ffn_multiple_of * ((hidden + self.ffn_multiple_of - 1) // self.ffn_multiple_of)
        if self.d_model % self.n_heads:
            raise HomegrownError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise HomegrownError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if self.logit_softcap < 0:
            raise HomegrownError(f"model.logit_softcap must be 0 (off) or a positive cap, not {self.logit_softcap:g}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise HomegrownError(f"model config has unknown fields {sorted(unknown)}; is it a homegrown checkpoint?")
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError as e:
            raise HomegrownError(f"no model config at {path}; point at a checkpoint directory") from e


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping for one training run (pretraining and fine-tuning share it)."""

    batch_size: int = 16
    seq_len: int = 256
    grad_accum: int = 1
    max_steps: int = 1000
    """Steps of the schedule (warmup + `schedule`); with `budget_minutes` set, chosen by the run instead."""
    budget_minutes: float = 0.0
    """Wall-clock budget for pretraining: time the first warm-up steps on this machine, then fix the step count so
    the schedule ends when the budget does (saved in RUN/budget.json and every checkpoint, so a resumed run keeps
    it). 0 = use `max_steps`; `--set train.max_steps=N` alone turns a preset's budget off. SFT and DPO keep their
    own step counts; distillation (a student pretrained on the shards) takes the budget too."""
    auto_shape: bool = False
    """With `budget_minutes`: choose the model's width and depth for the budget on this machine (train/shape.py:
    time a few steps of candidate shapes, keep the one whose tokens per parameter the budget fits best), saved in
    RUN/shape.json and kept on resume. `homegrown run --budget M` turns it on; the model's shape fields may not be
    set alongside it."""
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: str = "cosine"
    """Learning-rate shape after the linear warm-up, for every optimizer group (each scaled to its own peak):
    `cosine` (decay from the peak to `min_lr_ratio`·peak over all remaining steps) or `wsd` (warmup–stable–decay:
    hold the peak, then decay *linearly* to `min_lr_ratio`·peak over the last `decay_frac` of the steps, as
    nanochat and modded-nanogpt do). Either ends at `max_steps`, so with `budget_minutes` it ends with the budget."""
    decay_frac: float = 0.2
    """`schedule=wsd` only: share of `max_steps` spent in the final linear decay (0 = none, 1 = all after warm-up)."""
    embed_lr_mult: float = 1.0
    """Peak rate of the token embedding = `lr`·this, in an AdamW param group of its own (with `optimizer=muon`
    too) that `schedule` scales like every group; weight decay as for every matrix. With `model.tie_embeddings`
    the embedding is also the head, so this is the tied matrix's rate. Nanochat and modded-nanogpt give the
    embedding a far larger rate than the hidden matrices."""
    head_lr_mult: float = 1.0
    """Peak rate of the untied lm head = `lr`·this (its own AdamW group, as `embed_lr_mult`). With
    `model.tie_embeddings` there is no separate head — the embedding is the head (`embed_lr_mult`) — and a value
    other than 1 is refused rather than ignored."""
    weight_decay: float = 0.1
    z_loss: float = 0.0
    """PaLM's auxiliary z-loss: this coefficient × logsumexp(logits)², averaged over the loss's tokens, is added
    to the training loss (pretraining, SFT; not to validation) to keep the softmax normaliser near 1; logged as
    `z_loss` (the average, before the coefficient) beside `ce_loss`. 0 = off. Stages with a loss of their own
    (distillation) refuse it; DPO's config sets it to 0."""
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"
    """`adamw`, or `muon` (torch.optim.Muon on 2-D hidden weights, AdamW on embeddings, norms and head)."""
    muon_lr: float = 0.02
    muon_ns_dtype: str = "auto"
    """Precision of Muon's Newton–Schulz iteration: `auto` = bf16 on a GPU, fp32 on a CPU; or `fp32` / `bf16`.
    On an H200 fp32 Newton–Schulz made the 1B shape's step 3.1× slower than bf16 (13.1K vs 40.9K tokens/s,
    benchmarks/gpu_check.py); on CPUs without native bf16 (AVX2 only) bf16 is emulated and ~4× slower per step."""
    dtype: str = "auto"
    """Autocast dtype: `bf16`, `fp32`, or `auto` — bf16 on GPUs and on CPUs with AMX (measured to win there at the
    10-minute budget), fp32 on other CPUs; decided from the CPU's flags, not by a timing (train/precision.py).
    Weights and optimizer state stay fp32 either way."""
    compile: bool = False
    """torch.compile the training step (whole model in one process, per block under FSDP2). Off by default: the cold
    start (~25–30 s on 2 CPU cores, Inductor's C++ build) is only repaid by a run of several minutes; `small` turns it
    on (its 10-minute budget buys 16 % more steps with it)."""
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 1337
    threads: int = 0
    """0 = let torch choose (all cores)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward: ~1/3 more compute for far less activation memory."""
    save_full_weights: bool = True
    """Gather model.safetensors at every checkpoint; turn off for models larger than one host's memory and
    run `homegrown checkpoint consolidate` on the checkpoint you want to serve."""
    grad_dump_steps: int = 0
    """Write the full gradients of the first N steps to grads/step_N.safetensors (distributed equivalence)."""
    init_from: str = ""
    """Checkpoint or run directory to continue pretraining from (e.g. an imported model): its weights, shape and
    tokenizer replace the preset's model and the run's tokenizer; empty = random init (pretraining from scratch)."""

    def check(self) -> None:
        """Refuse recipe values the loop cannot honour, by name, before any stage starts."""
        if self.schedule not in SCHEDULES:
            raise HomegrownError(f"train.schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if not 0.0 <= self.decay_frac <= 1.0:
            raise HomegrownError(f"train.decay_frac must be between 0 and 1, not {self.decay_frac:g}")
        for name in ("embed_lr_mult", "head_lr_mult"):
            if not getattr(self, name) > 0:
                raise HomegrownError(f"train.{name} must be positive, not {getattr(self, name):g}")
        if self.z_loss < 0:
            raise HomegrownError(f"train.z_loss must be 0 (off) or positive, not {self.z_loss:g}")
        if self.auto_shape and self.budget_minutes <= 0:
            raise HomegrownError("train.auto_shape chooses the model's shape for a wall-clock budget; set "
                                 "train.budget_minutes too (or pass --budget MINUTES), or turn it off")
        if self.auto_shape and self.init_from:
            raise HomegrownError("train.auto_shape chooses the shape of a model trained from scratch; continued "
                                 "pretraining keeps the shape of train.init_from: set train.auto_shape=false")


SHAPE_FIELDS = tuple(f"model.{name}" for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden"))
"""The overrides `train.auto_shape` would contradict (it chooses these)."""

SCHEDULES = ("cosine", "wsd")
"""Learning-rate schedules `train.schedule` names; homegrown.train.loop.lr_at implements them."""


@dataclass
class DataConfig:
    """Where text comes from and how it is cut into tokens."""

    source: str = ""
    """Empty = the bundled corpus in data/sample; otherwise a directory or file of HTML/JSONL/text."""
    source_glob: str = "**/*.html"
    """Which files of a source directory to read (e.g. `**/*.jsonl.gz`, `**/*.txt`); files go by suffix."""
    source_licence: str = "unknown"
    tokenizer_sample_bytes: int = 200_000_000
    """Upper bound on text fed to BPE training; the bundled corpus is far below it."""
    extractor: str = "resiliparse"
    """HTML → text: "resiliparse" or "trafilatura". On the bundled HTML resiliparse is 5.4× faster with the
    same words and more code and headings kept (benchmarks/extract_compare.py, homegrown.data.extract)."""
    mixture: str = ""
    """Target token shares of named sources in the train shards, e.g. `web=0.6,licensed=0.3,synthetic=0.1`
    (homegrown.data.mixture); empty = every document once."""
    mixture_max_repeat: float = 4.0
    """A source short of its share is repeated at most this many times; the achieved shares are reported."""
    opt_out: str = ""
    """Opt-out list file (domains, URL prefixes, content hashes; homegrown.data.provenance) honoured at ingest."""


@dataclass
class FilterConfig:
    """Thresholds of the per-document quality rules in homegrown.data.filters (Gopher / C4 / FineWeb).

    A document fails a rule when its statistic is outside the bound; rule names are listed in
    `filters.RULES` and any of them can be switched off through `disabled`. Defaults are the published
    Gopher values except where the bundled technical docs (prose + code) showed they reject good pages;
    each such change says so.
    """

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    """("#" + "..." + "…") per word; Python comments in code count too."""
    max_bullet_line_fraction: float = 0.9
    max_ellipsis_line_fraction: float = 0.3
    min_alpha_word_fraction: float = 0.8
    min_stop_words: int = 2
    """How many of the Gopher stop words (the, be, to, of, and, that, have, with) must appear."""
    min_punct_line_fraction: float = 0.12
    """FineWeb's rule and threshold: share of lines ending in . ! ? " ' — and, unlike FineWeb, ":", because
    documentation introduces each code example with a colon (code lines themselves end in anything)."""
    max_dup_line_fraction: float = 0.3
    max_dup_line_char_fraction: float = 0.2
    max_top_2gram_fraction: float = 0.2
    max_top_3gram_fraction: float = 0.18
    max_top_4gram_fraction: float = 0.16
    max_dup_5gram_fraction: float = 0.50
    """Gopher uses 0.15 … 0.10 for n = 5 … 10; API references repeat phrases ("Return value: New reference."),
    so on the bundled docs those reject 36 % of pages (median 0.09, 90th percentile 0.32 for n = 5). The
    ladder here keeps Gopher's shape, one step per n, and still rejects a text that repeats itself (≈ 1.0)."""
    max_dup_6gram_fraction: float = 0.48
    max_dup_7gram_fraction: float = 0.46
    max_dup_8gram_fraction: float = 0.44
    max_dup_9gram_fraction: float = 0.42
    max_dup_10gram_fraction: float = 0.40
    max_boilerplate_line_fraction: float = 0.2
    """Share of lines holding a boilerplate phrase (C4's policy / javascript lines); "lorem ipsum" anywhere fails."""
    boilerplate_phrases: list[str] = field(
        default_factory=lambda: [
            "javascript", "cookie policy", "uses cookies", "use of cookies", "use cookies", "terms of use",
            "privacy policy", "terms and conditions", "all rights reserved", "accept cookies",
        ]
    )  # fmt: skip
    disabled: list[str] = field(default_factory=list)
    """Rule names to skip, e.g. ["line_punctuation"] for a corpus of source code."""


@dataclass
class IngestConfig:
    """How `homegrown data ingest` reads, cleans and deduplicates a crawl (homegrown.data.ingest)."""

    holdout_fraction: float = 0.05
    workers: int = 1
    """Engine tasks (Ray) run at once by ingest and packing; results do not depend on it."""
    shards: int = 8
    """Corpus shards written (at most one per input file); the corpus depends on it, not on `workers`."""
    ray_address: str = ""
    """Ray cluster the data stages run on (`HOST:6379`, `ray://HOST:10001`); empty = a local Ray of `workers` CPUs."""
    near_dedup_threshold: float = 0.8
    """Estimated Jaccard similarity of word 5-gram sets above which a page is a near-duplicate."""
    num_perm: int = 128
    ngram: int = 5
    max_doc_bytes: int = 2_000_000
    """Longer documents (raw HTML or text) are cut to this many bytes before extraction, and counted."""
    languages: list[str] = field(default_factory=list)
    """ISO 639-1 codes to keep (e.g. ["en"]); empty keeps every language."""
    pii_kinds: str = "EMAIL,PHONE,IP_ADDRESS,CREDIT_CARD,SECRET"
    """Comma-separated kinds homegrown.data.pii.scrub replaces; empty = no scrubbing."""
    pii_private_ips: bool = False
    """Also replace private, link-local and documentation IP addresses (10.0.0.5, 203.0.113.9): they reach
    no one's machine from the internet and technical text is full of them (as datatrove's default)."""
    keep_parts: bool = False
    """Keep OUT/parts/ after a whole-crawl ingest (to re-merge with another opt-out list or threshold)."""
    filters: FilterConfig = field(default_factory=FilterConfig)


@dataclass
class ServeConfig:
    """`homegrown serve`: the HTTP server and the continuous-batching engine (homegrown.serve)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    """Sequences decoded together; the KV cache is preallocated for this many × `max_model_len` tokens."""
    max_model_len: int = 0
    """Context served per sequence (prompt + reply), as vLLM's --max-model-len; 0 = the model's own (SmolLM2:
    8,192, whose fp32 KV cache is 377 MB per sequence)."""
    kv_cache_gib: float = 4.0
    """Most memory the preallocated KV cache may take: fewer than `max_batch` slots are made when they would
    not fit (said at start), and a model whose one sequence does not fit is refused with what to lower."""
    max_waiting: int = 256
    """Sequences queued for a free slot; beyond this a request gets 429 instead of waiting unboundedly."""
    max_n: int = 16
    """Largest `n` (choices per request) accepted."""
    device: str = "auto"
    """`auto` (CUDA when available), `cpu` or `cuda[:i]`."""
    dtype: str = "auto"
    """Weights and KV cache: `auto` = bf16 on CUDA, fp32 on CPU (bf16 matmuls are emulated and slow on CPUs
    without AVX-512-BF16/AMX); or `fp32` / `bf16`; or, on CPU, `int8` / `int4` weight-only quantization with bf16
    activations and KV cache (`homegrown.quant`; the fastest decode on any x86 CPU). Sampling and logprobs are
    computed in fp32 either way."""
    threads: int = 0
    """CPU threads for the model; 0 = all cores but one, which the HTTP event loop needs (on 2 cores, torch's
    default of 2 spinning threads starved it: 48 ms per token instead of 2.3 ms for the tiny model)."""
    drain_timeout_s: float = 60.0
    """On SIGTERM, in-flight requests get this long to finish before they are cut."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Larger request bodies get 413 before they are read whole (a 1M-character stored message fits as UTF-8)."""
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    """Sampling fields for requests that leave them out (`--generation-config`, like vLLM's
    --override-generation-config): e.g. {"ignore_eos": true, "max_tokens": 200}. JSON and tool-call replies end
    where their grammar does, so they take no stop, stop_token_ids, min_tokens or ignore_eos default."""


@dataclass
class SFTConfig:
    """Chat fine-tuning (homegrown.posttrain.sft) and the teacher-free chat data cut from the corpus (docqa).

    Optimisation fields left out here (seq_len, dtype, threads, optimizer …) come from the preset's TrainConfig.
    """

    max_steps: int = 150
    lr: float = 1e-3
    """Lower than pretraining: the model should learn the format without forgetting what it read."""
    optimizer: str = "adamw"
    """Fine-tuning's own optimizer, not the preset's pretraining one: `train.muon_lr` is sized for training from
    scratch and Muon has not been measured for fine-tuning here; `muon` takes it anyway."""
    warmup_steps: int = 10
    batch_size: int = 16
    eval_every: int = 50
    eval_batches: int = 4
    ckpt_every: int = 50
    system_prompt: str = "You are a helpful assistant."
    """Given to every other derived conversation, so the model answers with and without one."""
    max_answer_chars: int = 300
    """Derived answers are the opening sentences of the documented text, up to this many characters."""
    multi_turn_every: int = 4
    """Every N-th derived conversation holds two question/answer turns (0 = single-turn only)."""


@dataclass
class EvalConfig:
    """The report card `homegrown run` ends with (homegrown.eval): which tasks, and how many items of each."""

    tasks: str = ""
    """Comma-separated task names (data/tasks/NAME.jsonl) or JSONL paths; empty = the whole shipped suite."""
    max_items: int = 0
    """Score only the first N test items of each task; 0 = all of them (the tiny preset keeps CI quick)."""
    batch_size: int = 32
    """Sequences per forward pass when scoring multiple choice."""


@dataclass
class DistillConfig:
    """Logit distillation (homegrown.posttrain.distill): loss = α·T²·KL(teacher_T ‖ student_T) + (1−α)·CE."""

    alpha: float = 0.9
    """Weight of the soft term. benchmarks/distill.py (small student, 6× teacher): 0.9 beat plain training at 300
    and 720 steps, 0.5 only at 300 (see benchmarks/RESULTS.md)."""
    temperature: float = 2.0


@dataclass
class DPOConfig:
    """Preference tuning (homegrown.posttrain.dpo) on chosen/rejected answer pairs, TRL's DPOTrainer semantics.

    Optimisation fields left out here (dtype, threads, optimizer betas …) come from the preset's TrainConfig.
    """

    beta: float = 0.1
    """How far the policy may move from the reference (TRL's default); larger = stay closer."""
    loss: str = "sigmoid"
    """`sigmoid` (the DPO paper) or `ipo` (squared loss on per-token-averaged log-ratios, as TRL computes it)."""
    label_smoothing: float = 0.0
    """Conservative DPO: the share of pairs assumed mislabelled (sigmoid loss only, 0 ≤ ε < 0.5)."""
    rpo_alpha: float = 0.0
    """Weight of an SFT term (mean NLL of the chosen answer's tokens), TRL's `loss_type=["sigmoid","sft"]`."""
    max_steps: int = 100
    lr: float = 5e-6
    optimizer: str = "adamw"
    """DPO's own optimizer (as SFT's): AdamW whatever the preset pretrains with."""
    """Far below SFT's: preference tuning nudges an already useful model (SmolLM2's recipe used 1e-6)."""
    warmup_steps: int = 0
    batch_size: int = 8
    """Pairs per step (each pair is two sequences)."""
    eval_every: int = 50
    eval_batches: int = 4
    ckpt_every: int = 50


@dataclass
class LoRAConfig:
    """Low-rank adapters (homegrown.posttrain.lora) for SFT and DPO: W + (alpha/rank)·B·A, peft's scaling.

    Only the adapters train and are checkpointed; the final checkpoint also holds the merged weights.
    """

    rank: int = 0
    """0 = full fine-tuning; otherwise the adapters' rank r."""
    alpha: float = 16.0
    """Scale numerator: the update is (alpha / rank)·B·A, as peft's LoraConfig (without rsLoRA)."""
    dropout: float = 0.0
    """Dropout on the adapter's input, training only."""
    targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    """Comma-separated Llama (transformers) module names; the fused qkv / gate_up get one adapter per part."""


@dataclass
class SynthConfig:
    """Teacher client (homegrown.data.synth): any OpenAI-compatible endpoint, cached, budgeted, resumable."""

    concurrency: int = 4
    max_retries: int = 5
    """Retries per request on 429, 5xx, timeouts, connection errors and malformed replies."""
    backoff_s: float = 0.5
    """First retry waits this long, doubling each time (with jitter) up to `backoff_max_s`; Retry-After wins."""
    backoff_max_s: float = 20.0
    timeout_s: float = 60.0
    temperature: float = 0.8
    max_tokens: int = 512
    """Per request; also what the budget reserves for a request's reply before it is sent."""
    max_tokens_budget: int = 0
    """Prompt + completion tokens this run may spend on new requests (cache hits are free); 0 = no cap."""
    max_cost_usd: float = 0.0
    """Stop before the estimated cost (synth.PRICES) exceeds this; 0 = no cap."""
    records: int = 100
    """How many seeds (prompts) to generate from."""
    seed: int = 0
    """Shuffles the combinatorial seeds; the same seed gives the same prompts, hence the same cache keys."""
    near_dup_threshold: float = 0.8


@dataclass
class PlanConfig:
    """Cluster and run assumptions for `homegrown plan`; the model shape comes from a preset or explicit flags."""

    gpu: str = "H100"
    """A card from `plan.GPUS` (H100, H200, A100-80GB, A100-40GB, B200, MI300X)."""
    gpus: int = 0
    """0 = the fewest GPUs (whole nodes) that finish within `max_days` and fit in memory."""
    gpus_per_node: int = 8
    max_days: float = 90.0
    tokens: float = 0.0
    """Training tokens; 0 = Chinchilla-optimal (`tokens_per_param` × parameters)."""
    tokens_per_param: float = 20.0
    mfu: float = 0.4
    """Model FLOPs utilisation assumed (or measured with --measure) for the days and cost."""
    achieved_tflops: float = 0.0
    """Per-GPU hardware TFLOP/s as Megatron papers report it (recompute included); when set, replaces `mfu`."""
    price_per_gpu_hour: float = 2.5
    tp: int = 0
    """Tensor-parallel size; 0 = search (within a node)."""
    pp: int = 0
    """Pipeline-parallel size; 0 = search."""
    recompute: str = "auto"
    """Activation recomputation: none, selective, full, or auto (the cheapest that fits)."""
    sharding: str = "fsdp"
    """How the data-parallel group shares model state: fsdp (ZeRO-3), zero1 (optimizer only) or none (DDP)."""
    activations: str = "korthikanti"
    """Activation memory rule: korthikanti (the paper's GPT block) or model (what homegrown's model.py saves)."""
    micro_batch: int = 1
    global_batch_tokens: int = 16_777_216
    """Cap on data-parallel size × micro-batch × sequence (Llama 3 405B used 16M tokens); 0 = no cap."""
    headroom: float = 0.9
    """Fraction of the card's memory a layout may plan to use (CUDA context, NCCL buffers, fragmentation)."""
    measure_seconds: float = 5.0
    """How long `--measure` times its proxy model's training steps."""


@dataclass
class Preset:
    """Everything a run is configured by: a named starting point, its `--set` overrides applied.

    Written whole to RUN/preset.json by the commands that create a run (`run`, `pretrain`) and read back whole
    by every later command on it (`load_preset`), so an override given once stays in force for the run.
    Each dataclass field is a section `--set section.field=value` reaches (nested: `ingest.filters.min_words`).
    """

    name: str
    model: ModelConfig
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    description: str = ""
    trainable_on_cpu: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "preset") -> Preset:
        """The inverse of `to_dict`, refusing unknown sections and fields and values of the wrong type by name.
        A section or field the file lacks (written before it existed) takes its default."""
        return _from_dict(cls, data, where)


def _presets() -> dict[str, Preset]:
    return {
        "tiny": Preset(
            "tiny",
            ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64),
            TrainConfig(batch_size=8, seq_len=64, max_steps=40, lr=3e-3, warmup_steps=5, eval_every=20,
                        eval_batches=2, ckpt_every=20, log_every=5, dtype="fp32"),
            # 64-token rows: short answers, so whole replies (ending in the end-of-turn token) fit
            sft=SFTConfig(max_steps=20, batch_size=8, eval_every=10, eval_batches=2, ckpt_every=10, lr=3e-3,
                          max_answer_chars=100),
            eval=EvalConfig(max_items=20),
            description="CI smoke test: seconds on one core, learns almost nothing.",
        ),
        "small": Preset(
            "small",
            # Shape, vocab and lr won benchmarks/sweep_small.py (see benchmarks/RESULTS.md): at a ~10-minute
            # CPU budget a narrow 4-layer model that sees more tokens beats wider/deeper ones.
            # QK-norm (Qwen3's; exports as Qwen3ForCausalLM / GGUF qwen3): −0.077 bits/byte on top of Muon.
            ModelConfig(vocab_size=4096, d_model=192, n_layers=4, n_heads=3, n_kv_heads=3, max_seq_len=256,
                        qk_norm=True),
            # A 10-minute wall-clock budget: the step count is fixed at the start from this machine's step time
            # (720 steps took ~10 min on the slowest 2-core machine here); max_steps applies with budget_minutes=0.
            # Muon (fp32 Newton–Schulz) on the hidden matrices: 1.429 vs AdamW's 1.718 whole-val bits/byte at the
            # budget's 1,154 steps; embeddings stay on AdamW. Warmup-stable-decay: −0.040 on top of Muon
            # (benchmarks/ablate.py, RESULTS "Recipe ablations"). Compiled: its ~28 s cold start is repaid inside
            # the budget — 1,435 steps instead of 1,236 and 1.322 vs 1.341 bits/byte in the same quiet hour (RESULTS
            # "Compile as the default").
            TrainConfig(batch_size=16, seq_len=256, max_steps=720, budget_minutes=10.0, lr=5e-3, warmup_steps=30,
                        optimizer="muon", schedule="wsd", eval_every=120, eval_batches=8, ckpt_every=120,
                        log_every=10, compile=True),
            # ~1.7 min on 2 cores; on a GPU, 60 steps already made 40/40 held-out answers end their turn
            sft=SFTConfig(max_steps=120, lr=1e-3, eval_every=40, ckpt_every=40),
            description="Default demo: about 10 minutes of training on 2 CPU cores, then 2 of chat tuning.",
        ),
        "gpt2-124m": Preset(
            "gpt2-124m",
            ModelConfig(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, max_seq_len=1024,
                        ffn_hidden=3072),
            TrainConfig(batch_size=32, seq_len=1024, grad_accum=16, max_steps=20000, lr=6e-4, warmup_steps=700,
                        eval_every=500, ckpt_every=1000),
            description="GPT-2 small shape with Llama blocks; one GPU for a day.",
            trainable_on_cpu=False,
        ),
        "llama-1b": Preset(
            "llama-1b",
            ModelConfig(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_hidden=8192,
                        max_seq_len=8192, rope_theta=500000.0),
            TrainConfig(batch_size=8, seq_len=8192, grad_accum=8, max_steps=100000, lr=3e-4, warmup_steps=2000,
                        eval_every=1000, ckpt_every=1000),
            description="Llama 3.2 1B shape; a GPU node.",
            trainable_on_cpu=False,
        ),
        "llama-8b": Preset(
            "llama-8b",
            ModelConfig(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_hidden=14336,
                        max_seq_len=8192, rope_theta=500000.0, tie_embeddings=False),
            TrainConfig(batch_size=4, seq_len=8192, grad_accum=16, max_steps=500000, lr=3e-4, warmup_steps=2000,
                        eval_every=1000, ckpt_every=1000),
            description="Llama 3 8B shape; a multi-node GPU cluster with FSDP2.",
            trainable_on_cpu=False,
        ),
        "llama-70b": Preset(
            "llama-70b",
            ModelConfig(vocab_size=128256, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_hidden=28672,
                        max_seq_len=8192, rope_theta=500000.0, tie_embeddings=False),
            TrainConfig(batch_size=1, seq_len=8192, grad_accum=64, max_steps=1000000, lr=1.5e-4,
                        warmup_steps=2000, eval_every=1000, ckpt_every=500),
            description="Llama 3 70B shape; plan and cluster only.",
            trainable_on_cpu=False,
        ),
        "mai-1-500b": Preset(
            "mai-1-500b",
            ModelConfig(vocab_size=128256, d_model=20480, n_layers=120, n_heads=160, n_kv_heads=8, ffn_hidden=53248,
                        max_seq_len=8192, rope_theta=500000.0, tie_embeddings=False),
            TrainConfig(batch_size=1, seq_len=8192, grad_accum=2048, max_steps=600000, lr=8e-5, warmup_steps=8000,
                        eval_every=1000, ckpt_every=500),
            description="MAI-1 scale (~504B), plan only (`homegrown plan`). Microsoft has not published MAI-1's "
                        "architecture: this dense Llama-3-style shape (120 layers × 20480, GQA 160/8 heads, "
                        "128K vocab, 8K context) is our assumption.",
            trainable_on_cpu=False,
        ),
    }


PRESET_NAMES = tuple(_presets())


def get_preset(name: str) -> Preset:
    """A fresh copy of the named preset, so callers may mutate it freely."""
    presets = _presets()
    if name not in presets:
        raise HomegrownError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    return presets[name]


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass (the convention here), by field name.

    Python keeps no attribute docstrings at run time, so they are read from the class's source: the CLI's
    `--help` then says exactly what config.py says, from one place (as litgpt's CLI does through jsonargparse).
    """
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_help(cls: type, name: str, extra: str = "") -> str:
    """`--help` text for an option that sets `cls.name`: the field's docstring (or `extra` alone)."""
    if name not in {f.name for f in dataclasses.fields(cls)}:
        raise KeyError(f"{cls.__name__} has no field {name!r}")
    return " ".join(part for part in (field_docs(cls).get(name, ""), extra) if part)


SECTIONS = tuple(name for name, hint in typing.get_type_hints(Preset).items() if dataclasses.is_dataclass(hint))
"""The preset's sections, in order: what `--set SECTION.FIELD=VALUE` can reach."""


_JSON_TYPES: dict[Any, tuple[str, Any]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    str: ("string", lambda v: isinstance(v, str)),
}


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """`value` read from JSON, checked against the field's annotation (a whole number is a fine float).

    `X | None` accepts null; annotations other than bool/int/float/str and lists of them pass unchecked."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        return _check_value(value, options[0], where) if len(options) == 1 else value
    if typing.get_origin(hint) is list and typing.get_args(hint) and typing.get_args(hint)[0] in _JSON_TYPES:
        label, ok = _JSON_TYPES[typing.get_args(hint)[0]]
        if isinstance(value, list) and all(ok(v) for v in value):
            return list(value)
        raise HomegrownError(f"{where} must be a list of {label}s, not {value!r}")
    if hint not in _JSON_TYPES:
        return value
    label, ok = _JSON_TYPES[hint]
    if not ok(value):
        raise HomegrownError(f"{where} must be a {label}, not {value!r}")
    return float(value) if hint is float else value


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise HomegrownError(f"{where} must be a JSON object, not {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise HomegrownError(f"{where} has unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"known: {', '.join(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        kwargs[name] = (_from_dict(hint, value, f"{where}.{name}") if dataclasses.is_dataclass(hint)
                        else _check_value(value, hint, f"{where}.{name}"))
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field (the preset's name, model or train) is missing
        raise HomegrownError(f"{where} is incomplete: {e}") from e


def save_preset(preset: Preset, path: Path) -> Path:
    """Write the full resolved preset (atomically): what `load_preset` reads back unchanged."""
    return write_json_atomic(path, preset.to_dict())


def load_preset(path: Path) -> Preset:
    """A preset saved by `save_preset`, read back whole; a clear error names whatever in it is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise HomegrownError(f"{path} is not valid JSON ({e}); fix it or remove it to use a named preset") from e
    return Preset.from_dict(data, where=str(path))


def resolve_preset(name: str | None, saved: Path | None, overrides: list[str] | None, default: str) -> Preset:
    """The preset a command works with: the one `name`d on its command line; else the run's own, read back
    whole from `saved` (RUN/preset.json) when it exists; else the preset called `default`. Then `overrides`."""
    if name is not None:
        preset = get_preset(name)
    elif saved is not None and Path(saved).is_file():
        preset = load_preset(saved)
    else:
        preset = get_preset(default)
    return apply_overrides(preset, overrides or [])


def _coerce(value: str, current: Any) -> Any:
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, list):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def apply_overrides(preset: Preset, overrides: list[str]) -> Preset:
    """Apply `section.field=value` strings (e.g. `train.lr=1e-3`, `model.n_layers=4`,
    `ingest.filters.min_words=20`, `ingest.languages=en,fr`) to a preset in place."""
    mlp = preset.model.mlp
    for item in overrides:
        key, sep, value = item.partition("=")
        path = key.strip().split(".")
        if not sep or len(path) < 2 or not all(path):
            raise HomegrownError(f"override {item!r} must look like SECTION.FIELD=VALUE (e.g. train.lr=1e-3); "
                                 f"sections: {', '.join(SECTIONS)}")
        if path[0] not in SECTIONS:
            raise HomegrownError(f"override {item!r}: unknown section {path[0]!r}; sections: {', '.join(SECTIONS)}")
        section: Any = getattr(preset, path[0])
        for depth, part in enumerate(path[1:-1], start=1):
            inner = getattr(section, part, None)
            if not dataclasses.is_dataclass(inner):
                raise HomegrownError(f"override {item!r}: {'.'.join(path[:depth])} has no section {part!r}")
            section = inner
        owner, field_name = ".".join(path[:-1]), path[-1]
        names = [f.name for f in dataclasses.fields(section)]
        if field_name not in names:
            raise HomegrownError(f"{owner} has no field {field_name!r}; fields: {', '.join(names)}")
        current = getattr(section, field_name)
        if dataclasses.is_dataclass(current):
            fields = ", ".join(f.name for f in dataclasses.fields(current))
            raise HomegrownError(f"override {item!r}: {owner}.{field_name} is a section; set one of its fields "
                                 f"({owner}.{field_name}.FIELD): {fields}")
        try:
            setattr(section, field_name, _coerce(value.strip(), current))
        except ValueError as e:
            raise HomegrownError(f"bad value in override {item!r}: {e}") from e
    if any(o.startswith("train.max_steps") for o in overrides) and not any(
            o.startswith("train.budget_minutes") for o in overrides):
        preset.train.budget_minutes = 0.0  # an explicit step count wins over the preset's wall-clock budget
    if preset.train.budget_minutes < 0:
        raise HomegrownError(f"train.budget_minutes must be 0 (off: use train.max_steps) or a number of minutes, "
                             f"not {preset.train.budget_minutes:g}")
    shape_fields = [o.split("=")[0].strip() for o in overrides if o.split("=")[0].strip() in SHAPE_FIELDS]
    if preset.train.auto_shape and shape_fields:
        raise HomegrownError(f"train.auto_shape (--budget) chooses the model's shape, and {', '.join(shape_fields)} "
                             f"would set it too; drop those, or keep your shape with train.auto_shape=false "
                             f"(a budget alone is --set train.budget_minutes=M)")
    preset.train.check()
    if preset.model.max_seq_len < preset.train.seq_len:
        preset.model.max_seq_len = preset.train.seq_len
    resized = any(o.startswith("model.d_model") for o in overrides) or preset.model.mlp != mlp
    if "model.ffn_hidden" not in " ".join(overrides) and resized:
        preset.model.ffn_hidden = 0
    preset.model.__post_init__()
    return preset
