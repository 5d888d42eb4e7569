"""Scale planner: what a training run of a given shape costs on a given cluster, before anyone books one.

Everything here is arithmetic on the model's shape, so a 500B plan prints in a blink on a laptop:

* Parameters: the same tensors `model.Transformer` allocates (tests check it against `count_params`).
* FLOPs: "6ND" (Kaplan et al. 2020 / Chinchilla) and "with attention" — 6 FLOPs per matmul weight per token
  plus 12·L·d·s for the attention scores and mixing (PaLM, Chowdhery et al. 2022, appendix B), the same rule as
  `Transformer.flops_per_token`. Activation recomputation adds hardware FLOPs, never model FLOPs: MFU counts
  the latter, while Megatron-style "TFLOP/s per GPU" counts the former.
* Memory per GPU: model states under mixed-precision AdamW (ZeRO's 16 bytes/param: bf16 weights and
  gradients, fp32 master + two moments) split by tensor (t) and pipeline (p) parallelism, then sharded over
  the data-parallel group by FSDP/ZeRO-3; activations after Korthikanti et al. 2022 ("Reducing Activation
  Recomputation in Large Transformer Models"), with sequence parallelism whenever t > 1.
* Layout: the (tensor, pipeline, data) split and recomputation that fits, preferring one whose data-parallel
  traffic over the cluster's links can hide behind compute, then the least model parallelism.
* Time and money: model FLOPs ÷ (GPUs × MFU × peak), GPU-hours × price.

`--measure` replaces the assumed MFU with one measured by training a small proxy model on this machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

from homegrown.config import ModelConfig, PlanConfig
from homegrown.errors import HomegrownError

BYTES_BF16 = 2
ADAM_STATE_BYTES = 12
"""fp32 master weight + first and second moment (Rajbhandari et al. 2020, ZeRO: K = 12)."""
RECOMPUTE_MODES = ("none", "selective", "full")
SHARDING_MODES = ("fsdp", "zero1", "none")
ACTIVATION_RULES = ("korthikanti", "model")


@dataclass(frozen=True)
class GPU:
    """A card as the planner sees it: dense bf16 tensor-core peak (no sparsity) and memory (decimal GB)."""

    name: str
    peak_tflops: float
    memory_gb: float
    interconnect: str
    nvlink_gbs: float
    """Per-GPU bandwidth inside a node, GB/s each way."""
    network_gbs: float
    """Per-GPU bandwidth between nodes (one NIC per GPU), GB/s each way."""


GPUS: dict[str, GPU] = {g.name: g for g in (
    GPU("H100", 989.0, 80.0, "NVLink 4 (900 GB/s) in a node, InfiniBand NDR 400 Gb/s per GPU", 450.0, 50.0),
    GPU("H200", 989.0, 141.0, "NVLink 4 (900 GB/s) in a node, InfiniBand NDR 400 Gb/s per GPU", 450.0, 50.0),
    GPU("A100-80GB", 312.0, 80.0, "NVLink 3 (600 GB/s) in a node, InfiniBand HDR 200 Gb/s per GPU", 300.0, 25.0),
    GPU("A100-40GB", 312.0, 40.0, "NVLink 3 (600 GB/s) in a node, InfiniBand HDR 200 Gb/s per GPU", 300.0, 25.0),
    GPU("B200", 2250.0, 192.0, "NVLink 5 (1.8 TB/s) in a node, InfiniBand NDR 400 Gb/s per GPU", 900.0, 50.0),
    GPU("MI300X", 1307.0, 192.0, "Infinity Fabric (896 GB/s) in a node, 400 Gb/s RoCE/IB per GPU", 448.0, 50.0),
)}
GPU_ALIASES = {"H100-SXM": "H100", "A100": "A100-80GB", "H100-80GB": "H100"}


def gpu_spec(name: str) -> GPU:
    """Look a card up by name, case-insensitively; the error lists the known ones."""
    wanted = name.strip().upper()
    for key in (*GPUS, *GPU_ALIASES):
        if key.upper() == wanted:
            return GPUS[GPU_ALIASES.get(key, key)]
    raise HomegrownError(f"unknown GPU {name!r}; choose one of: {', '.join(GPUS)}")


@dataclass(frozen=True)
class ParamCounts:
    """Exact parameter counts of `model.Transformer` for a shape, without building it."""

    total: int
    embedding: int
    per_layer: int
    head: int
    """The output projection's weights (the embedding's own tensor when tied)."""
    tied: bool

    @property
    def matmul(self) -> int:
        """Weights multiplied per token: all but the embedding lookup, plus the head even when it is tied."""
        return self.total - self.embedding + (self.head if self.tied else 0)


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Count the tensors model.py allocates: fused QKV, output projection (and the q/k norms with `qk_norm`), fused
    gate/up (up alone for `relu2`), down, two RMSNorms."""
    d, hd = cfg.d_model, cfg.head_dim
    attention = d * (cfg.n_heads + 2 * cfg.n_kv_heads) * hd + cfg.n_heads * hd * d + (2 * hd if cfg.qk_norm else 0)
    mlp = (2 if cfg.mlp == "relu2" else 3) * d * cfg.ffn_hidden
    per_layer = attention + mlp + 2 * d
    embedding = cfg.vocab_size * d
    head = cfg.vocab_size * d
    total = cfg.n_layers * per_layer + embedding + d + (0 if cfg.tie_embeddings else head)
    return ParamCounts(total=total, embedding=embedding, per_layer=per_layer, head=head, tied=cfg.tie_embeddings)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> tuple[float, float]:
    """Training FLOPs per token: (6·N, 6·N_matmul + 12·L·d·s). The second is what MFU is measured against."""
    counts = param_counts(cfg)
    return 6.0 * counts.total, 6.0 * counts.matmul + 12.0 * cfg.n_layers * cfg.d_model * seq_len


def recompute_overhead(cfg: ModelConfig, seq_len: int, recompute: str) -> float:
    """Hardware FLOPs ÷ model FLOPs for a recomputation mode.

    Full recomputation runs every forward twice (forward = a third of 6N): 4/3, which is why Megatron counts
    96·B·s·l·h² per iteration instead of 72. Selective recomputes only the attention core (QKᵀ and AV: 4·L·d·s
    forward FLOPs per token).
    """
    _, model = flops_per_token(cfg, seq_len)
    if recompute == "full":
        return 4.0 / 3.0
    if recompute == "selective":
        return (model + 4.0 * cfg.n_layers * cfg.d_model * seq_len) / model
    return 1.0


@dataclass
class Memory:
    """Bytes per GPU on the busiest pipeline stage."""

    weights: float
    gradients: float
    optimizer: float
    fsdp_buffers: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.fsdp_buffers + self.activations


def activation_bytes_per_layer(cfg: ModelConfig, seq_len: int, micro_batch: int, tp: int, recompute: str,
                               rule: str = "korthikanti") -> float:
    """Bytes one transformer layer keeps for backward for one micro-batch, sequence parallel when t > 1.

    `korthikanti` (Korthikanti et al. 2022, a GPT block with a 4h MLP and dropout, all bf16): none stores
    s·b·h·(34 + 5·a·s/h)/t; selective recomputes the attention core (what FlashAttention/SDPA kernels do
    anyway): s·b·h·34/t; full keeps only the layer input: 2·s·b·h/t.

    `model`: what homegrown's own `model.Block` saves with bf16 parameters (FSDP2's mixed precision), counted
    tensor by tensor with autograd's saved-tensor hooks (tests/test_plan.py re-counts it): per token
    26h + 6·h_kv + 8·ffn bytes, where h_kv = KV heads × head size (4·ffn for the ungated `relu2` MLP; with
    `qk_norm`, 10h + 8·h_kv + 4·(heads + KV heads) more: the q/k norms' fp32 upcast, normalised values and
    per-head rstd). 16h of that is RMSNorm's fp32 upcast (input and normalised values, per norm); SDPA never
    stores the s×s scores, so none equals selective.
    model.py has no tensor parallelism of its own: for t > 1 this assumes a Megatron-style sequence-parallel
    split of the same tensors.
    """
    if rule not in ACTIVATION_RULES:
        raise HomegrownError(f"activation rule must be one of {', '.join(ACTIVATION_RULES)}, not {rule!r}")
    sbh = seq_len * micro_batch * cfg.d_model
    if recompute == "full":
        return 2.0 * sbh / tp
    if rule == "model":
        h_kv = cfg.n_kv_heads * cfg.head_dim
        per_token = 26 * cfg.d_model + 6 * h_kv + (4 if cfg.mlp == "relu2" else 8) * cfg.ffn_hidden
        if cfg.qk_norm:
            per_token += 10 * cfg.n_heads * cfg.head_dim + 8 * h_kv + 4 * (cfg.n_heads + cfg.n_kv_heads)
        return seq_len * micro_batch * per_token / tp
    if recompute == "selective":
        return 34.0 * sbh / tp
    return sbh * (34.0 + 5.0 * cfg.n_heads * seq_len / cfg.d_model) / tp


def memory_per_gpu(cfg: ModelConfig, seq_len: int, tp: int, pp: int, dp: int, micro_batch: int = 1,
                   recompute: str = "selective", sharding: str = "fsdp", rule: str = "korthikanti") -> Memory:
    """Peak memory of one GPU for a (t, p, d) layout.

    The busiest stage holds ⌈L/p⌉ layers plus the embedding (first) or head (last). With the 1F1B schedule the
    first stage keeps p micro-batches in flight, so its activations are those of ⌈L/p⌉·p ≈ L layers whatever
    p is (Korthikanti §4.2); the last stage keeps one micro-batch plus the fp32 logits (4·s·b·V/t bytes).
    Full recomputation also needs one layer's activations while it recomputes it. FSDP gathers a block's
    bf16 weights (the current and the prefetched one) and holds its unsharded fp32 gradient before the
    reduce-scatter.
    """
    if recompute not in RECOMPUTE_MODES:
        raise HomegrownError(f"recompute must be one of {', '.join(RECOMPUTE_MODES)} or auto, not {recompute!r}")
    if sharding not in SHARDING_MODES:
        raise HomegrownError(f"sharding must be one of {', '.join(SHARDING_MODES)}, not {sharding!r}")
    counts = param_counts(cfg)
    layers = math.ceil(cfg.n_layers / pp)
    if pp == 1:
        stage_params = counts.total
    else:
        stage_params = layers * counts.per_layer + max(counts.embedding, counts.head + cfg.d_model)
    local = stage_params / tp
    weights, grads, opt = BYTES_BF16 * local, BYTES_BF16 * local, ADAM_STATE_BYTES * local
    if sharding in ("fsdp", "zero1"):
        opt /= dp
    buffers = 0.0
    if sharding == "fsdp":
        weights, grads = weights / dp, grads / dp
        if dp > 1:
            buffers = counts.per_layer / tp * (2 * BYTES_BF16 + 4)
    per_layer = activation_bytes_per_layer(cfg, seq_len, micro_batch, tp, recompute, rule)
    working = activation_bytes_per_layer(cfg, seq_len, micro_batch, tp, "selective", rule) if recompute == "full" else 0
    logits = 4.0 * seq_len * micro_batch * cfg.vocab_size / tp
    first_stage = layers * pp * per_layer + working
    last_stage = layers * per_layer + working + logits
    return Memory(weights, grads, opt, buffers, max(first_stage, last_stage))


@dataclass
class Layout:
    """One way to split the cluster: tensor × pipeline × data parallel sizes, a recompute mode, its memory."""

    tp: int
    pp: int
    dp: int
    recompute: str
    memory: Memory
    fits: bool
    micro_batches: int
    """Micro-batches per optimizer step that make up the global batch."""
    step_compute_s: float
    dp_comm_s: float
    """Seconds of data-parallel traffic per GPU per step: overlappable with compute only while shorter than it."""


def _divisors(n: int, limit: int) -> list[int]:
    return [k for k in range(1, min(n, limit) + 1) if n % k == 0]


def candidate_layouts(cfg: ModelConfig, plan: PlanConfig, gpus: int, seq_len: int) -> list[Layout]:
    """Every (t, p, recompute) the cluster allows, in order of preference.

    Preference: data-parallel traffic that can hide behind compute, then least model parallelism t·p (it costs
    communication and pipeline bubbles), then the cheapest recomputation, then tensor before pipeline
    parallelism (t lives on NVLink and shrinks activations too).
    t stays within a node and divides the KV heads (or is a multiple of them: KV heads replicated); d·b·s may
    not exceed the global batch cap unless both t and p were given.
    """
    gpu = gpu_spec(plan.gpu)
    budget = plan.headroom * gpu.memory_gb * 1e9
    modes = RECOMPUTE_MODES if plan.recompute == "auto" else (plan.recompute,)
    tps = [plan.tp] if plan.tp else [t for t in (1, 2, 4, 8, 16) if t <= plan.gpus_per_node]
    layouts = []
    for tp in tps:
        if gpus % tp or cfg.n_heads % tp or (cfg.n_kv_heads % tp and tp % cfg.n_kv_heads):
            continue
        pps = [plan.pp] if plan.pp else _divisors(gpus // tp, cfg.n_layers)
        for pp in pps:
            if gpus % (tp * pp):
                continue
            dp = gpus // (tp * pp)
            if plan.global_batch_tokens and dp * plan.micro_batch * seq_len > plan.global_batch_tokens and not (
                    plan.tp and plan.pp):
                continue
            for mode in modes:
                mem = memory_per_gpu(cfg, seq_len, tp, pp, dp, plan.micro_batch, mode, plan.sharding,
                                     plan.activations)
                micro, compute_s, comm_s = step_times(cfg, plan, gpu, seq_len, tp, pp, dp, mode)
                layouts.append(Layout(tp, pp, dp, mode, mem, mem.total <= budget, micro, compute_s, comm_s))
    layouts.sort(key=lambda lay: (lay.dp_comm_s > lay.step_compute_s, lay.tp * lay.pp,
                                  RECOMPUTE_MODES.index(lay.recompute), -lay.tp))
    return layouts


def step_times(cfg: ModelConfig, plan: PlanConfig, gpu: GPU, seq_len: int, tp: int, pp: int, dp: int,
               recompute: str) -> tuple[int, float, float]:
    """(micro-batches per step, compute seconds per step, data-parallel communication seconds per step).

    A step is the global batch (`global_batch_tokens`, or one micro-batch per rank when uncapped). Traffic per
    GPU for its t·p-th of the weights, ring collectives moving (d−1)/d of the data: FSDP all-gathers bf16
    weights in forward and again in backward for every micro-batch and reduce-scatters fp32 gradients once
    per step; zero1 reduce-scatters fp32 gradients and all-gathers bf16 weights once; DDP all-reduces fp32
    gradients (2× the data). The data-parallel ring leaves the node whenever the job does. Tensor- and
    pipeline-parallel traffic (NVLink, small point-to-point activations) is not counted.
    """
    tokens_per_micro = dp * plan.micro_batch * seq_len
    micro = max(1, plan.global_batch_tokens // tokens_per_micro) if plan.global_batch_tokens else 1
    _, model_flops = flops_per_token(cfg, seq_len)
    rate, _ = _model_rate(cfg, plan, gpu, seq_len, recompute)
    compute_s = micro * tokens_per_micro * model_flops / (tp * pp * dp * rate)
    local = param_counts(cfg).total / (tp * pp) * (dp - 1) / dp
    per_param = {"fsdp": 2 * BYTES_BF16 * micro + 4, "zero1": 4 + BYTES_BF16, "none": 2 * 4}[plan.sharding]
    bandwidth = gpu.nvlink_gbs if tp * pp * dp <= plan.gpus_per_node else gpu.network_gbs
    return micro, compute_s, local * per_param / (bandwidth * 1e9)


def best_layout(cfg: ModelConfig, plan: PlanConfig, gpus: int, seq_len: int) -> Layout | None:
    """The first fitting layout in preference order, or None when nothing fits on this many GPUs."""
    return next((lay for lay in candidate_layouts(cfg, plan, gpus, seq_len) if lay.fits), None)


@dataclass
class Measurement:
    """Throughput of a proxy model trained for a few steps on this machine."""

    device: str
    proxy: str
    params: int
    tokens_per_s: float
    achieved_tflops: float
    peak_tflops: float
    dtype: str

    @property
    def mfu(self) -> float:
        return self.achieved_tflops / self.peak_tflops


@dataclass
class Plan:
    """Everything `homegrown plan` prints; `to_dict` is the --json form."""

    name: str
    model: dict
    seq_len: int
    params: int
    embedding_params: int
    tokens: float
    tokens_source: str
    chinchilla_tokens: float
    flops_per_token_6n: float
    flops_per_token: float
    training_flops_6nd: float
    training_flops: float
    gpu: GPU
    gpus: int
    gpus_source: str
    sharding: str
    activations: str
    micro_batch: int
    headroom: float
    layout: Layout | None
    alternatives: list[Layout]
    mfu: float
    hfu: float
    mfu_source: str
    days: float
    gpu_hours: float
    cost: float
    price_per_gpu_hour: float
    tokens_per_s: float
    measurement: Measurement | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (`homegrown plan --json`)."""
        data = asdict(self)
        if self.layout is not None:
            data["layout"]["memory"]["total"] = self.layout.memory.total
        for alt, lay in zip(data["alternatives"], self.alternatives, strict=True):
            alt["memory"]["total"] = lay.memory.total
        if self.measurement is not None:
            data["measurement"]["mfu"] = self.measurement.mfu
        return data


def _best_of_mode(layouts: list[Layout], mode: str) -> Layout:
    """The preferred fitting layout with this recomputation, or its least memory-hungry one when none fits."""
    same = [lay for lay in layouts if lay.recompute == mode]
    return next((lay for lay in same if lay.fits), min(same, key=lambda lay: lay.memory.total))


def _model_rate(cfg: ModelConfig, plan: PlanConfig, gpu: GPU, seq_len: int, recompute: str) -> tuple[float, float]:
    """(model FLOP/s per GPU, hardware FLOP/s per GPU) from the assumed MFU or the achieved TFLOP/s."""
    overhead = recompute_overhead(cfg, seq_len, recompute)
    if plan.achieved_tflops > 0:
        hardware = plan.achieved_tflops * 1e12
        return hardware / overhead, hardware
    model = plan.mfu * gpu.peak_tflops * 1e12
    return model, model * overhead


def cluster_sizes(gpus_per_node: int):
    """1, 2, 4 … up to a node, then whole nodes of the form m·2^k (m = 4…7): sizes that split evenly into
    power-of-two tensor and pipeline groups, as real reservations do."""
    size = 1
    while size < gpus_per_node:
        yield size
        size *= 2
    k = 0
    while True:
        for m in (4, 5, 6, 7):
            if m << k >= gpus_per_node and (m << k) % gpus_per_node == 0:
                yield m << k
        k += 1


def _auto_gpus(cfg: ModelConfig, plan: PlanConfig, seq_len: int, total_flops: float) -> int:
    """Fewest GPUs (from `cluster_sizes`) that finish within `max_days` and on which some layout fits."""
    gpu = gpu_spec(plan.gpu)
    rate, _ = _model_rate(cfg, plan, gpu, seq_len, "none")
    need = total_flops / (rate * plan.max_days * 86400)
    for gpus in cluster_sizes(plan.gpus_per_node):
        if gpus >= need and best_layout(cfg, plan, gpus, seq_len) is not None:
            return gpus
        if gpus > 1 << 22:
            raise HomegrownError("no layout fits on up to 4M GPUs; use a bigger card (--gpu) or a smaller model")
    raise AssertionError("unreachable: cluster_sizes is endless")


def make_plan(cfg: ModelConfig, plan: PlanConfig, name: str = "custom", seq_len: int | None = None,
              measurement: Measurement | None = None) -> Plan:
    """The whole plan for one model shape on one cluster; pure arithmetic, no device needed."""
    if plan.mfu <= 0 or plan.mfu > 1:
        raise HomegrownError(f"--mfu must be in (0, 1], not {plan.mfu}")
    if not 0 < plan.headroom <= 1:
        raise HomegrownError(f"headroom must be in (0, 1], not {plan.headroom}")
    if plan.gpus < 0 or plan.tp < 0 or plan.pp < 0 or plan.micro_batch < 1:
        raise HomegrownError("--gpus, --tp and --pp must be ≥ 0 (0 = choose) and the micro-batch ≥ 1")
    if plan.recompute not in (*RECOMPUTE_MODES, "auto"):
        raise HomegrownError(f"--recompute must be auto, {', '.join(RECOMPUTE_MODES)}; not {plan.recompute!r}")
    if plan.sharding not in SHARDING_MODES:
        raise HomegrownError(f"--sharding must be one of {', '.join(SHARDING_MODES)}, not {plan.sharding!r}")
    if plan.activations not in ACTIVATION_RULES:
        raise HomegrownError(f"--activations must be one of {', '.join(ACTIVATION_RULES)}, not {plan.activations!r}")
    gpu = gpu_spec(plan.gpu)
    seq = seq_len or cfg.max_seq_len
    counts = param_counts(cfg)
    f6n, f_attn = flops_per_token(cfg, seq)
    chinchilla = plan.tokens_per_param * counts.total
    tokens = plan.tokens or chinchilla
    total = f_attn * tokens
    notes = []
    if plan.gpus:
        gpus, gpus_source = plan.gpus, "given"
    else:
        gpus, gpus_source = _auto_gpus(cfg, plan, seq, total), f"fewest to finish in {plan.max_days:g} days and fit"
    if plan.tp and (cfg.n_heads % plan.tp or (cfg.n_kv_heads % plan.tp and plan.tp % cfg.n_kv_heads)):
        raise HomegrownError(f"tp={plan.tp} must divide the {cfg.n_heads} heads and divide (or be a multiple of) "
                             f"the {cfg.n_kv_heads} KV heads")
    if plan.tp and plan.pp and gpus % (plan.tp * plan.pp):
        raise HomegrownError(f"{gpus} GPUs do not split into tp={plan.tp} × pp={plan.pp}; pick sizes that divide it")
    layouts = candidate_layouts(cfg, plan, gpus, seq)
    layout = next((lay for lay in layouts if lay.fits), None)
    alternatives = [_best_of_mode(layouts, mode) for mode in RECOMPUTE_MODES if any(
        lay.recompute == mode for lay in layouts)]
    if plan.activations == "korthikanti":
        ratio = (activation_bytes_per_layer(cfg, seq, 1, 1, "selective", "model")
                 / activation_bytes_per_layer(cfg, seq, 1, 1, "selective"))
        notes.append(f"activations follow Korthikanti et al.; homegrown's model.py keeps {ratio:.2f}× that per layer "
                     "without full recompute (--activations model plans for it)")
    if layout is None:
        notes.append(f"nothing fits in {plan.headroom:.0%} of a {gpu.name}'s {gpu.memory_gb:g} GB on {gpus} GPUs: "
                     "add GPUs, allow recomputation, shard with fsdp, or use a card with more memory")
    recompute = layout.recompute if layout else (plan.recompute if plan.recompute != "auto" else "none")
    model_rate, hw_rate = _model_rate(cfg, plan, gpu, seq, recompute)
    peak = gpu.peak_tflops * 1e12
    if plan.achieved_tflops > 0:
        mfu_source = f"from {plan.achieved_tflops:g} TFLOP/s per GPU achieved (hardware, recompute counted)"
    elif measurement is not None:
        mfu_source = (f"measured: {measurement.proxy} proxy on {measurement.device} "
                      f"({measurement.achieved_tflops * 1e3:.3g} GFLOP/s of a {measurement.peak_tflops * 1e3:.3g} "
                      "GFLOP/s matmul peak)")
        notes.append("measured MFU comes from one small proxy on this machine; a cluster adds communication and "
                     "pipeline bubbles it cannot see")
    else:
        mfu_source = "assumed"
    seconds = total / (gpus * model_rate)
    gpu_hours = gpus * seconds / 3600
    if layout and plan.global_batch_tokens and layout.dp * plan.micro_batch * seq > plan.global_batch_tokens:
        notes.append(f"data parallel {layout.dp} × micro-batch {plan.micro_batch} × {seq} tokens exceeds the "
                     f"{plan.global_batch_tokens:,}-token global batch cap")
    if layout and layout.dp_comm_s > layout.step_compute_s:
        notes.append(f"data-parallel traffic ({layout.dp_comm_s:.3g} s/step) exceeds compute "
                     f"({layout.step_compute_s:.3g} s/step): expect less than the assumed MFU, or raise t·p")
    if tokens > 0 and gpus * plan.micro_batch * seq > tokens:
        notes.append("the cluster's first step alone would see more tokens than the whole run")
    return Plan(
        name=name, model=asdict(cfg), seq_len=seq, params=counts.total, embedding_params=counts.embedding,
        tokens=tokens, tokens_source="given" if plan.tokens else f"Chinchilla, {plan.tokens_per_param:g}/param",
        chinchilla_tokens=chinchilla, flops_per_token_6n=f6n, flops_per_token=f_attn,
        training_flops_6nd=f6n * tokens, training_flops=total, gpu=gpu, gpus=gpus, gpus_source=gpus_source,
        sharding=plan.sharding, activations=plan.activations, micro_batch=plan.micro_batch, headroom=plan.headroom,
        layout=layout, alternatives=alternatives, mfu=model_rate / peak, hfu=hw_rate / peak, mfu_source=mfu_source,
        days=seconds / 86400, gpu_hours=gpu_hours, cost=gpu_hours * plan.price_per_gpu_hour,
        price_per_gpu_hour=plan.price_per_gpu_hour, tokens_per_s=gpus * model_rate / f_attn,
        measurement=measurement, notes=notes,
    )


def measure_matmul_tflops(device, dtype, n: int = 0, seconds: float = 1.0) -> float:
    """Best-of matmul TFLOP/s on `device`: the practical peak the measured MFU is relative to."""
    import torch

    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    for _ in range(50):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2.0 * n**3 / (time.perf_counter() - t0))
        if time.perf_counter() > deadline:
            break
    return best / 1e12


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(proxy: str, seconds: float, batch_size: int = 0) -> Measurement:
    """Train a proxy preset on random tokens here for about `seconds` and measure its model FLOP/s and MFU.

    The proxy defaults to `small` on a CPU and `gpt2-124m` on CUDA; its batch is capped at 4 sequences on a
    CPU so that one step stays short. CUDA trains under bf16 autocast, a CPU in fp32 (what the training loop's
    `auto` picks on CPUs without fast bf16); the matmul peak is measured in the same dtype. One step is a
    warm-up; then steps are timed until `seconds` have passed (at least two).
    """
    import torch

    from homegrown.config import get_preset
    from homegrown.model import Transformer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    proxy = proxy or ("gpt2-124m" if device.type == "cuda" else "small")
    preset = get_preset(proxy)
    cfg = preset.model
    batch = batch_size or (preset.train.batch_size if device.type == "cuda" else min(4, preset.train.batch_size))
    seq = preset.train.seq_len
    amp = torch.bfloat16 if device.type == "cuda" else None
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    y = torch.roll(x, -1, dims=1)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    _sync(device)
    steps, t0 = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - t0 < seconds:
        step()
        _sync(device)
        steps += 1
    elapsed = time.perf_counter() - t0
    tokens_per_s = steps * batch * seq / elapsed
    achieved = tokens_per_s * model.flops_per_token(seq) / 1e12
    peak = measure_matmul_tflops(device, amp or torch.float32)
    return Measurement(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       proxy=proxy, params=model.num_params(), tokens_per_s=tokens_per_s,
                       achieved_tflops=achieved, peak_tflops=peak, dtype=str(amp or torch.float32))

def model_for_plan(preset: str | None, shape: dict[str, int | bool | None]) -> tuple[str, ModelConfig, int]:
    """(name, model config, sequence length) from a preset, explicit shape flags, or a preset the flags edit.

    `shape` keys are ModelConfig field names; None means "not given". Without a preset, layers, d_model and
    heads are required and the rest take ModelConfig's defaults.
    """
    from homegrown.config import get_preset

    given = {k: v for k, v in shape.items() if v is not None}
    bad = [k for k, v in given.items() if not isinstance(v, bool) and v < 1]
    if bad:
        raise HomegrownError(f"shape sizes must be ≥ 1: {', '.join(bad)}")
    if preset is None:
        missing = [flag for key, flag in (("n_layers", "--layers"), ("d_model", "--d-model"), ("n_heads", "--heads"))
                   if key not in given]
        if missing:
            raise HomegrownError(f"give --preset NAME or a shape; missing {', '.join(missing)}")
        given.setdefault("n_kv_heads", given["n_heads"])
        return "custom", ModelConfig(**given), given.get("max_seq_len", ModelConfig.max_seq_len)
    base = get_preset(preset)
    if "d_model" in given and "ffn_hidden" not in given:
        given["ffn_hidden"] = 0
    if "n_heads" in given and "n_kv_heads" not in given:
        given["n_kv_heads"] = min(base.model.n_kv_heads, given["n_heads"])
    cfg = replace(base.model, **given)
    seq = given.get("max_seq_len", base.train.seq_len)
    return (base.name if not given else f"{base.name} (edited)"), cfg, seq


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{prefix}{unit}"
    return f"{x:.3g}{unit}"


def _bytes(x: float) -> str:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if x >= scale:
            return f"{x / scale:,.1f} {unit}"
    return f"{x:.0f} B"


def render(plan: Plan, console) -> None:
    """The plan as rich tables: model and compute, memory per GPU for each recomputation mode, time and cost."""
    from rich.table import Table

    m = plan.model
    facts = Table(title=f"plan: {plan.name}", show_header=False, title_justify="left")
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("shape", f"{m['n_layers']} layers × d {m['d_model']}, heads {m['n_heads']}/{m['n_kv_heads']} (kv), "
                  f"ffn {m['ffn_hidden']}, vocab {m['vocab_size']:,}, seq {plan.seq_len:,}"
                  f"{', tied embeddings' if m['tie_embeddings'] else ''}")
    facts.add_row("parameters", f"{plan.params:,} ({_si(plan.params)}; embedding {_si(plan.embedding_params)})")
    facts.add_row("tokens", f"{_si(plan.tokens)}, {plan.tokens_source}; "
                  f"Chinchilla-optimal: {_si(plan.chinchilla_tokens)}")
    facts.add_row("FLOPs/token", f"6N = {plan.flops_per_token_6n:.3g}; with attention 6·N_matmul + 12·L·d·s = "
                  f"{plan.flops_per_token:.3g}")
    facts.add_row("training FLOPs", f"6ND = {plan.training_flops_6nd:.3g}; with attention = {plan.training_flops:.3g}")
    facts.add_row("cluster", f"{plan.gpus:,} × {plan.gpu.name} ({plan.gpus_source}): {plan.gpu.peak_tflops:g} "
                  f"TFLOP/s bf16 dense, {plan.gpu.memory_gb:g} GB each")
    facts.add_row("interconnect", plan.gpu.interconnect)
    console.print(facts)

    console.print(f"[italic]memory per GPU[/italic]: {plan.sharding} sharding, {plan.activations} activations, "
                  f"micro-batch {plan.micro_batch}, budget {plan.headroom:.0%} of {plan.gpu.memory_gb:g} GB")
    mem = Table()
    mem.add_column("recompute")
    for lay in plan.alternatives:
        chosen = plan.layout is not None and lay.recompute == plan.layout.recompute
        mem.add_column(f"{lay.recompute}{' ✓ chosen' if chosen else ''}", justify="right")
    mem.add_row("layout t×p×d", *(f"{lay.tp}×{lay.pp}×{lay.dp}" for lay in plan.alternatives))
    for label, attr in (("weights (bf16)", "weights"), ("gradients (bf16)", "gradients"),
                        ("AdamW fp32 master+m+v", "optimizer"), ("FSDP gather buffers", "fsdp_buffers"),
                        ("activations", "activations"), ("total", "total")):
        mem.add_row(label, *(_bytes(getattr(lay.memory, attr)) for lay in plan.alternatives))
    mem.add_row("fits", *("yes" if lay.fits else "no" for lay in plan.alternatives))
    mem.add_row("micro-batches/step", *(str(lay.micro_batches) for lay in plan.alternatives))
    mem.add_row("compute s/step", *(f"{lay.step_compute_s:.3g}" for lay in plan.alternatives))
    mem.add_row("data-parallel comm s/step", *(f"{lay.dp_comm_s:.3g}" for lay in plan.alternatives))
    console.print(mem)

    cost = Table(title="time and cost", show_header=False, title_justify="left")
    cost.add_column(style="bold")
    cost.add_column()
    lay = plan.layout
    cost.add_row("layout", f"tensor {lay.tp} × pipeline {lay.pp} × data {lay.dp}, recompute {lay.recompute}"
                 if lay else "none fits")
    cost.add_row("MFU", f"{plan.mfu:.1%} ({plan.mfu_source}); hardware FLOPs utilisation {plan.hfu:.1%}")
    cost.add_row("throughput", f"{_si(plan.tokens_per_s)} tokens/s on the cluster")
    cost.add_row("training time", f"{plan.days:,.1f} days")
    cost.add_row("GPU-hours", f"{plan.gpu_hours:,.0f} ({_si(plan.gpu_hours)})")
    cost.add_row("cost", f"${plan.cost:,.0f} at ${plan.price_per_gpu_hour:g}/GPU-hour")
    if plan.measurement is not None:
        me = plan.measurement
        cost.add_row("measured", f"{me.proxy} ({me.params:,} params) on {me.device}, {me.dtype}: "
                     f"{me.tokens_per_s:,.0f} tokens/s, MFU {me.mfu:.1%}")
    for note in plan.notes:
        cost.add_row("note", note)
    console.print(cost)


def build_plan(preset: str | None, shape: dict[str, int | bool | None], settings: dict[str, object],
               measure_here: bool = False, proxy: str = "") -> Plan:
    """The `homegrown plan` stage: settings left None keep PlanConfig's defaults; --measure sets the MFU."""
    name, cfg, seq = model_for_plan(preset, shape)
    plan_cfg = replace(PlanConfig(), **{k: v for k, v in settings.items() if v is not None})
    measurement = None
    if measure_here:
        if plan_cfg.achieved_tflops:
            raise HomegrownError("--measure and --tflops both set the throughput; give one of them")
        measurement = measure(proxy, plan_cfg.measure_seconds)
        plan_cfg.mfu = min(1.0, measurement.mfu)
    return make_plan(cfg, plan_cfg, name, seq, measurement)


def print_presets() -> None:
    """`homegrown presets`: every preset's shape with its exact parameter count, then what each is for."""
    from rich.table import Table

    from homegrown.config import PRESET_NAMES, get_preset
    from homegrown.model import count_params
    from homegrown.progress import console

    table = Table()
    for name in ("preset", "params", "layers", "d_model", "heads/kv", "vocab", "seq"):
        table.add_column(name, no_wrap=True, justify="left" if name == "preset" else "right")
    for preset_name in PRESET_NAMES:
        p = get_preset(preset_name)
        m = p.model
        table.add_row(preset_name, f"{count_params(m):,}", str(m.n_layers), str(m.d_model),
                      f"{m.n_heads}/{m.n_kv_heads}", f"{m.vocab_size:,}", str(p.train.seq_len))
    console.print(table)
    for preset_name in PRESET_NAMES:
        console.print(f"[bold]{preset_name}[/bold]: {get_preset(preset_name).description}")


def print_plan(preset: str | None, shape: dict[str, int | bool | None], settings: dict[str, object],
               measure_here: bool = False, proxy: str = "", as_json: bool = False) -> Plan:
    """`homegrown plan`: build the plan, then print it as JSON on stdout or as tables at least 120 columns wide."""
    import json

    from rich.console import Console

    from homegrown.progress import console

    if measure_here:
        console.print(f"measuring training throughput of {proxy or 'a proxy model'} on this machine …")
    plan = build_plan(preset, shape, settings, measure_here, proxy)
    if as_json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        render(plan, Console(width=max(120, Console().width)))
    return plan
