"""Continuous-batching generation engine: one background thread steps every running sequence together.

Requests join and leave between decode steps, so a short reply never waits for a long one and the batch stays
full under load; that is what makes a small model cheap to serve. The KV cache is preallocated once for
`max_batch` slots × `max_model_len` tokens (fewer slots when they would not fit in `kv_cache_gib`); running
sequences occupy slots 0..B-1 (a finished sequence's slot is refilled by swapping the last one down), so a step
reads the cache as a plain slice. A freed slot keeps the keys/values of the sequence that left it, and a later
prompt that starts the same way (a system prompt, the next turn of a conversation) copies them instead of
computing them again. One forward per step serves the running sequences' decode and the joiners' prefill
together. Each sequence samples with its own `torch.Generator`, so a seed gives the same text whatever else
shares the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from homegrown.bundle import ModelBundle
from homegrown.config import ModelConfig, ServeConfig
from homegrown.errors import HomegrownError
from homegrown.generate import SamplingParams, sample_next
from homegrown.model import KVCache
from homegrown.serve.batched import forward_groups, forward_rows, head_logits, hidden_last, move_slot, swap_slots
from homegrown.serve.constrain import GrammarCompiler, GrammarDeadEnd, Matcher
from homegrown.serve.constraint_spec import ConstraintSpec
from homegrown.serve.metrics import ServeMetrics
from homegrown.tokenizer import IncrementalDecoder

log = logging.getLogger(__name__)

MIN_SHARED_PREFIX = 16
"""Joiners sharing at least this many prompt tokens with an earlier joiner wait one forward to copy them."""


class ContextLengthError(HomegrownError):
    """Prompt + requested tokens do not fit the model's context."""


class EngineBusyError(HomegrownError):
    """The waiting queue is full; the client should retry later."""


@dataclass
class GenerationParams(SamplingParams):
    """Per-sequence sampling: `SamplingParams` (temperature, top-k, top-p, seed, stop ids) plus what the
    OpenAI API adds. Penalties follow OpenAI's definition: logit -= frequency·count + presence·[count > 0];
    `logit_bias` is added to the logits first. `min_tokens` and `ignore_eos` are vLLM's, with its meaning."""

    temperature: float = 1.0
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    min_tokens: int = 0
    """Until this many tokens were generated, stop tokens cannot be sampled and stop strings are not looked for
    (text generated before then is never cut)."""
    ignore_eos: bool = False
    """Do not stop at the model's end tokens (STOP_TOKENS); explicit `stop_token_ids` still stop, as in vLLM."""
    logprobs: bool = False
    top_logprobs: int = 0
    stop_token_logprob: bool = False
    """With `logprobs`, the stop token that ends the sequence gets an entry too, as in vLLM's /v1/completions
    (lm-eval's local-completions drops the last entry as the one generated token)."""
    prompt_logprobs: int | None = None
    """Also score the prompt (/v1/completions echo): every prompt token's log-prob given the tokens before it,
    with this many alternatives each. Such a prompt is computed whole, never copied from a cached prefix."""
    constraint: ConstraintSpec | None = None
    """Structured output (serve/constrain.py): every token is one the grammar allows — the mask comes after
    logit_bias and penalties, so it always wins — and the sequence ends ("stop") when the grammar is complete, or
    at a stop token where the grammar may end. Log-probs are those of the masked distribution. It cannot be
    combined with what would end or cut the output elsewhere than the grammar says: stop strings, extra
    stop_token_ids, min_tokens, ignore_eos (`validate` refuses them). max_tokens still applies ("length": the
    output is then incomplete, as OpenAI's)."""

    def validate(self) -> None:
        # max_tokens=0 is a prefill only (echo the prompt, with its log-probs): nothing is sampled.
        SamplingParams.validate(replace(self, max_tokens=max(self.max_tokens, 1)))
        if self.max_tokens < 0:
            raise HomegrownError(f"max_tokens must not be negative, got {self.max_tokens}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise HomegrownError(f"{name} must be between -2 and 2, got {getattr(self, name)}")
        for name in ("top_logprobs", "prompt_logprobs"):
            if not 0 <= (getattr(self, name) or 0) <= 20:
                raise HomegrownError(f"{name} must be between 0 and 20, got {getattr(self, name)}")
        if any(not s for s in self.stop):
            raise HomegrownError("stop strings must not be empty")
        if not 0 <= self.min_tokens <= max(self.max_tokens, 0):
            raise HomegrownError(f"min_tokens must be between 0 and max_tokens ({self.max_tokens}), "
                                 f"got {self.min_tokens}")
        if any(not -100 <= b <= 100 for b in self.logit_bias.values()):
            raise HomegrownError("logit_bias values must be between -100 and 100")
        if self.constraint is not None:
            conflicts = [name for name, on in (("stop", self.stop), ("min_tokens", self.min_tokens),
                                               ("ignore_eos", self.ignore_eos)) if on]
            if conflicts:
                raise HomegrownError(f"{conflicts[0]} cannot be combined with {self.constraint.param}: the grammar "
                                     "decides where the output ends")


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Delta:
    """What one step produced for one sequence: new visible text, and on the last one the finish reason."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None
    """`stop` (stop token or string), `length` (max_tokens), `abort` (cancelled) or `error`."""
    completion_tokens: int = 0
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """Sent once, alone, right after the prefill of a sequence that asked: one entry per prompt token, the first
    None (nothing precedes it)."""


Emit = Callable[[int, Delta], None]


class Sequence:
    """One choice being generated. Mutated only by the engine thread, except `cancelled`."""

    def __init__(self, index: int, prompt_ids: list[int], params: GenerationParams, emit: Emit,
                 device: torch.device, vocab_size: int, detok: IncrementalDecoder) -> None:
        self.index, self.prompt_ids, self.params, self.emit = index, prompt_ids, params, emit
        self.generator = torch.Generator(device=device)
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()
        penalised = params.presence_penalty != 0 or params.frequency_penalty != 0
        self.counts = torch.zeros(1, vocab_size, device=device) if penalised else None
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if params.logit_bias:
            self.bias = (torch.tensor(list(params.logit_bias), dtype=torch.long, device=device),
                         torch.tensor(list(params.logit_bias.values()), dtype=torch.float32, device=device))
        self.stop_ids = set(params.stop_token_ids)
        self.held_off: torch.Tensor | None = None  # the stop ids, masked while min_tokens is not reached
        if params.min_tokens and self.stop_ids:
            self.held_off = torch.tensor(sorted(self.stop_ids), dtype=torch.long, device=device)
        self.stop_from = 0  # characters of text before which stop strings are not looked for (min_tokens)
        self.searched = 0  # characters of text already searched for stop strings
        self.detok = detok  # the reply's text, decoded as it grows
        self.matcher: Matcher | None = None  # the grammar's state, for a constrained sequence
        self.out_ids: list[int] = []
        self.unsent_ids: list[int] = []
        self.unsent_logprobs: list[TokenLogprob] = []
        self.sent_chars = 0
        self.length = 0
        self.next_token = -1
        self.cancelled = False
        self.arrival = time.perf_counter()
        self.last_token_at: float | None = None


def kv_cache_shape(model: ModelConfig, cfg: ServeConfig, dtype: torch.dtype) -> tuple[int, int]:
    """(tokens per slot, slots) of the preallocated KV cache: `max_model_len` (else the model's context) tokens,
    and `max_batch` slots or as many as fit in `kv_cache_gib`."""
    if cfg.max_model_len < 0 or cfg.kv_cache_gib <= 0:
        raise HomegrownError(f"max_model_len must be ≥ 0 and kv_cache_gib > 0, got {cfg.max_model_len} and "
                             f"{cfg.kv_cache_gib}")
    if cfg.max_model_len > model.max_seq_len:
        raise HomegrownError(f"max_model_len {cfg.max_model_len} is over the model's context of {model.max_seq_len} "
                             "tokens; 0 serves all of it")
    max_len = cfg.max_model_len or model.max_seq_len
    element = torch.empty((), dtype=dtype).element_size()
    per_slot = 2 * model.n_layers * model.n_kv_heads * model.head_dim * max_len * element
    slots = min(cfg.max_batch, int(cfg.kv_cache_gib * 2**30 // per_slot))
    if slots < 1:
        raise HomegrownError(f"one sequence of {max_len} tokens needs {per_slot / 2**30:.2f} GiB of KV cache, over "
                             f"kv_cache_gib={cfg.kv_cache_gib:g}; lower --max-model-len or raise --kv-cache-gib")
    return max_len, slots


class Engine:
    """Owns the model, the slot cache and the stepping thread; `submit` is safe to call from any thread."""

    def __init__(self, bundle: ModelBundle, cfg: ServeConfig | None = None,
                 metrics: ServeMetrics | None = None) -> None:
        self.cfg = cfg or ServeConfig()
        if self.cfg.max_batch < 1:
            raise HomegrownError(f"max_batch must be at least 1, got {self.cfg.max_batch}")
        self.bundle, self.model, self.tokenizer, self.metrics = bundle, bundle.model, bundle.tokenizer, metrics
        model = bundle.model
        weight = next(model.parameters())
        self.device = weight.device
        self.max_len, slots = kv_cache_shape(model.cfg, self.cfg, weight.dtype)
        if slots < self.cfg.max_batch:
            log.warning("KV cache: %d slots of %d tokens instead of max_batch=%d, to stay within kv_cache_gib=%g",
                        slots, self.max_len, self.cfg.max_batch, self.cfg.kv_cache_gib)
            self.cfg = replace(self.cfg, max_batch=slots)
        self.cache = KVCache.allocate(model.cfg, slots, self.max_len, dtype=weight.dtype, device=self.device)
        self.stop_token_ids = bundle.stop_ids
        """The model's EOS and end-of-turn: generation stops at either unless the request says otherwise."""
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.reused_prompt_tokens = 0
        self._kept: dict[int, list[int]] = {}
        """Free slots → the tokens whose keys/values they still hold (a finished sequence's prompt and reply), for
        a later prompt that starts the same way: the same system prompt, or the next turn of a conversation."""
        self._grammars: GrammarCompiler | None = None
        self._grammars_lock = threading.Lock()
        self.threads = torch.get_num_threads()
        """Intra-op threads for prefills and batched decode steps: the creating thread's (`serve --threads`)."""

    # -- public API ---------------------------------------------------------------------------------------

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="homegrown-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the thread; with `drain`, after every submitted sequence has finished, else cancelling them."""
        with self._cond:
            self._stopping = True
            if not drain:
                for seq in [*self._waiting, *self._running]:
                    seq.cancelled = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def grammars(self) -> GrammarCompiler:
        """The constraint compiler, built on first use (0.3 s for a 49K vocabulary, so free-only servers skip it).
        It allows the model's stop tokens where a grammar may end."""
        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = GrammarCompiler(self.tokenizer, self.model.cfg.vocab_size, self.stop_token_ids)
            return self._grammars

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def resolve_max_tokens(self, prompt_len: int, max_tokens: int | None) -> int:
        """The completion budget: as asked, or the rest of the context; never silently cut (vLLM's rule)."""
        if prompt_len == 0:
            raise HomegrownError("the prompt is empty; send at least one token of text")
        if max_tokens is None:
            max_tokens = self.max_len - prompt_len
            if max_tokens < 1:
                raise ContextLengthError(
                    f"This model's maximum context length is {self.max_len} tokens. However, your prompt has "
                    f"{prompt_len} tokens, which leaves no room for a completion. Please shorten the prompt.")
        if max_tokens < 0:
            raise HomegrownError(f"max_tokens must not be negative, got {max_tokens}")
        if prompt_len + max_tokens > self.max_len:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_len} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the completion). "
                "Please reduce the length of the prompt or max_tokens.")
        return max_tokens

    def submit(self, prompt_ids: list[int], params: list[GenerationParams], emit: Emit) -> list[Sequence]:
        """Queue one sequence per params (the `n` choices of a request); deltas arrive through `emit(index, d)`
        on the engine thread. Raises before queueing anything if a request cannot be served."""
        for p in params:
            p.max_tokens = self.resolve_max_tokens(len(prompt_ids), p.max_tokens)
            if not p.ignore_eos:
                p.stop_token_ids = list(dict.fromkeys([*p.stop_token_ids, *self.stop_token_ids]))
            p.validate()
            vocab = self.model.cfg.vocab_size
            if any(not 0 <= t < vocab for t in (*prompt_ids, *p.stop_token_ids, *p.logit_bias)):
                raise HomegrownError(f"token ids must be in [0, {vocab})")
            if p.constraint is not None and set(p.stop_token_ids) - set(self.stop_token_ids):
                raise HomegrownError(f"stop_token_ids cannot be combined with {p.constraint.param}: the grammar "
                                     "decides where the output ends")
        seqs = [Sequence(i, list(prompt_ids), p, emit, self.device, self.model.cfg.vocab_size,
                         IncrementalDecoder(self.tokenizer, self._markers(p))) for i, p in enumerate(params)]
        for seq in seqs:  # compiled (or found in the cache) before queueing, so a bad schema queues nothing
            if seq.params.constraint is not None:
                seq.matcher = self.grammars.matcher(seq.params.constraint)
        with self._cond:
            if self._stopping:
                raise EngineBusyError("the server is shutting down; retry against another instance")
            if len(self._waiting) + len(seqs) > self.cfg.max_waiting:
                raise EngineBusyError(f"the server is busy ({len(self._waiting)} sequences waiting); retry shortly")
            self._waiting.extend(seqs)
            self._cond.notify_all()
        if self.metrics:
            self.metrics.prompt_tokens.inc(len(prompt_ids) * len(seqs))
        return seqs

    def _markers(self, params: GenerationParams) -> frozenset[int]:
        """Special tokens the sequence's text keeps: those its grammar writes as markers (a tool call's
        `<tool_call>` when it is one token), which the reply's parser must see; none without a constraint."""
        return frozenset() if params.constraint is None else self.grammars.marker_ids(params.constraint)

    def abort(self, seqs: list[Sequence]) -> None:
        """Free the slots of sequences nobody is reading any more (a client that went away)."""
        with self._cond:
            for seq in seqs:
                seq.cancelled = True
                if seq in self._waiting:
                    self._waiting.remove(seq)
            self._cond.notify_all()

    def generate(self, prompt_ids: list[int], params: list[GenerationParams],
                 timeout: float = 300.0) -> list[tuple[str, list[int], list[TokenLogprob], str]]:
        """Blocking helper: (text, token ids, logprobs, finish_reason) per choice."""
        done = threading.Event()
        results: dict[int, list] = {i: ["", [], [], None] for i in range(len(params))}
        lock = threading.Lock()

        def emit(index: int, delta: Delta) -> None:
            with lock:
                r = results[index]
                r[0] += delta.text
                r[1].extend(delta.token_ids)
                r[2].extend(delta.logprobs)
                if delta.finish_reason:
                    r[3] = delta.finish_reason
                    if all(v[3] for v in results.values()):
                        done.set()

        self.submit(prompt_ids, params, emit)
        if not done.wait(timeout):
            raise TimeoutError(f"generation did not finish within {timeout} s")
        return [tuple(results[i]) for i in range(len(params))]

    # -- the stepping thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._waiting or self._running or self._stopping):
                        self._cond.wait()
                    if self._stopping and not self._waiting and not self._running:
                        return
                    free = self.cfg.max_batch - len(self._running)
                    joiners = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
                try:
                    self._step(joiners)
                except Exception:  # a bug or OOM must not leave every client hanging
                    log.exception("engine step failed; failing the sequences in the batch")
                    for seq in dict.fromkeys([*self._running, *joiners]):  # joiners may be running already
                        self._finish(seq, "error")
                    self._running = []
                    self._kept.clear()
                self._update_gauges()

    def _step(self, joiners: list[Sequence]) -> None:
        gone = [s for s in (*self._running, *joiners) if s.cancelled]
        for seq in gone:
            self._finish(seq, "abort")
        self._remove(gone)
        joiners = [s for s in joiners if not s.cancelled]
        self._prefill(list(self._running), joiners)

    def _prefill(self, decoding: list[Sequence], seqs: list[Sequence]) -> None:
        """The running sequences' next tokens and the joiners' prompts, into the slots after the running ones, in
        as few forwards as can be: one for the decode and the joiners together (forward_groups) when nothing
        stands in the way.

        A prompt that starts like one already in the cache (the same system prompt, or the `n` choices of one
        request) copies those keys/values and computes only the rest. Joiners that share a long prefix with an
        earlier joiner wait for a later forward so they can copy from it, and a prompt to be scored
        (prompt_logprobs) has one of its own. Sampling comes after every forward, so no slot moves while
        prefixes are being copied.
        """
        fresh: list[Sequence] = []
        scored: list[Sequence] = []
        followers: list[Sequence] = []
        for seq in seqs:
            if seq.params.prompt_logprobs is not None:
                scored.append(seq)
            elif any(_common_prefix(seq.prompt_ids, f.prompt_ids) >= MIN_SHARED_PREFIX for f in fresh + scored):
                followers.append(seq)
            else:
                fresh.append(seq)
        batches = [(decoding + fresh, self._forward(decoding, fresh))] if decoding or fresh else []
        batches += [(group, self._forward([], group)) for group in (scored, followers) if group]
        for group, logits in batches:
            self._sample(group, logits)

    def _forward(self, decoding: list[Sequence], seqs: list[Sequence]) -> torch.Tensor:
        """Logits of the next token of each sequence of `decoding` (running, one token each) and of each joiner
        of `seqs` (its prompt, placed in the slots after the running ones), in that order."""
        groups = []
        if decoding:
            groups.append((torch.tensor([[s.next_token] for s in decoding], device=self.device),
                           torch.tensor([s.length for s in decoding], device=self.device),
                           torch.zeros(len(decoding), dtype=torch.long, device=self.device), 0))
            for seq in decoding:
                seq.length += 1
        if not seqs:
            with self._one_thread_if(len(decoding) == 1):
                hidden = hidden_last(self.model, self.cache, groups)
            # The head is one large matmul (SmolLM2: 49,152 × 576), worth every thread even at batch 1.
            return head_logits(self.model, hidden)
        first = len(self._running)
        # A reused prefix has no logits, so a prompt to be scored is computed whole.
        scored = [row for row, seq in enumerate(seqs) if seq.params.prompt_logprobs is not None]
        reused = []
        for row, seq in enumerate(seqs):
            if row in scored:
                self._kept.pop(first + row, None)  # overwritten whole
                reused.append(0)
            else:
                reused.append(self._reuse_prefix(seq.prompt_ids, first + row))
        suffixes = [seq.prompt_ids[p:] for seq, p in zip(seqs, reused, strict=True)]
        idx = torch.zeros(len(seqs), max(map(len, suffixes)), dtype=torch.long)
        for row, (seq, suffix) in enumerate(zip(seqs, suffixes, strict=True)):
            idx[row, : len(suffix)] = torch.tensor(suffix)
            seq.length = len(seq.prompt_ids)
        starts = torch.tensor(reused, device=self.device)
        last = torch.tensor([len(s) for s in suffixes], device=self.device) - 1
        self._running.extend(seqs)
        self.reused_prompt_tokens += sum(reused)
        if self.metrics:
            self.metrics.prompt_tokens_reused.inc(sum(reused))
        if not scored:
            return forward_groups(self.model, self.cache, [*groups, (idx.to(self.device), starts, last, first)])
        # Scored prompts come alone (`_prefill`): their logits at every position are needed too.
        logits, every = forward_rows(self.model, self.cache, idx.to(self.device), starts, last, first_slot=first,
                                     every_position=torch.tensor(scored, device=self.device))
        for row, row_logits in zip(scored, every, strict=True):
            seq = seqs[row]
            self._send(seq, Delta("", [], [], prompt_logprobs=self._score_prompt(seq, row_logits)))
        return logits

    def _score_prompt(self, seq: Sequence, logits: torch.Tensor) -> list[TokenLogprob | None]:
        """Log-prob (fp32) of each prompt token given the ones before it, from the prefill's (T, V) logits."""
        ids, k = seq.prompt_ids, seq.params.prompt_logprobs or 0
        logp = torch.log_softmax(logits[: len(ids) - 1].float(), dim=-1)
        chosen = logp.gather(1, torch.tensor(ids[1:], dtype=torch.long, device=logp.device)[:, None])[:, 0].tolist()
        tops: list[list[tuple[int, float]]] = [[] for _ in chosen]
        if k:
            top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
            tops = [list(zip(i, v, strict=True)) for i, v in zip(top.indices.tolist(), top.values.tolist(),
                                                                    strict=True)]
        return [None, *(TokenLogprob(t, lp, top) for t, lp, top in zip(ids[1:], chosen, tops, strict=True))]

    def _reuse_prefix(self, ids: list[int], slot: int) -> int:
        """Bring the longest cached prefix of `ids` into `slot`, the joiner's; its length. Donors are the running
        sequences' prompts (copied) and what free slots kept (the joiner's own slot: used in place; another:
        swapped with the joiner's, so that neither is lost). At least the last prompt token is always computed,
        since its logits start the reply."""
        best, donor = 0, -1
        candidates = [(i, other.prompt_ids) for i, other in enumerate(self._running)] + list(self._kept.items())
        for i, held in candidates:
            p = _common_prefix(ids, held, len(ids) - 1)
            if p > best:
                best, donor = p, i
        own = self._kept.pop(slot, None)
        if donor < len(self._running):
            if best:
                move_slot(self.cache, donor, slot, best)
        elif donor != slot:
            held = self._kept.pop(donor)
            swap_slots(self.cache, donor, slot, max(len(held), len(own or ())))
            if own:
                self._kept[donor] = own
        return best

    @contextmanager
    def _one_thread_if(self, single: bool) -> Iterator[None]:
        """Run the block on one intra-op thread when `single` (a decode step of one sequence), then go back.

        The engine thread is a second OpenMP master beside the thread that loaded the model, whose team lives
        on; once libgomp manages more threads than there are cores it lets its workers spin ~100 times instead
        of ~300,000 before they sleep, so every parallel region of a step (~150 for SmolLM2-135M) pays a futex
        wake-up. At batch 1 that doubled the step: 28 ms per int4 token on 2 threads in this thread, ~20 ms on 1
        (14 ms on 2 in the main thread). Wider steps have enough work per region to pay for the wake-up and keep
        `threads`. The count is put back at once, since torch also hands it to threads started later.
        """
        if not single or self.device.type != "cpu" or self.threads == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(self.threads)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """One token per sequence (each with its own generator and penalties), then text out and finish checks."""
        logits = logits.float()
        # Plain greedy rows need no per-row work: one argmax for the batch, one transfer to Python.
        argmax = logits.argmax(dim=-1).tolist()
        finished = []
        sampled = 0
        now = time.perf_counter()
        for row, seq in enumerate(seqs):
            if seq.cancelled:
                self._finish(seq, "abort")
                finished.append(seq)
                continue
            p = seq.params
            if p.max_tokens == 0:  # prefill only: the prompt (and its log-probs) was all that was asked
                self._finish(seq, "length")
                finished.append(seq)
                continue
            sampled += 1
            try:
                row_logits, adjusted = self._adjust(seq, logits[row: row + 1])
            except GrammarDeadEnd:  # this sequence cannot go on; the others in the batch can
                log.warning("constrained sequence ended: its grammar allows no token", exc_info=True)
                self._finish(seq, "error")
                finished.append(seq)
                continue
            if p.temperature == 0 and not adjusted:
                token = argmax[row]
            else:
                token = int(sample_next(row_logits, p, seq.generator))
            self._observe_token(seq, now)
            if token in seq.stop_ids:
                if p.logprobs and p.stop_token_logprob:
                    seq.unsent_logprobs.append(_token_logprob(row_logits[0], token, p.top_logprobs))
                finished.append(seq)
                self._finish(seq, "stop")
                continue
            if seq.counts is not None:
                seq.counts[0, token] += 1
            if p.logprobs:
                seq.unsent_logprobs.append(_token_logprob(row_logits[0], token, p.top_logprobs))
            seq.out_ids.append(token)
            seq.unsent_ids.append(token)
            seq.next_token = token
            if seq.matcher is not None:
                seq.matcher.advance(token)
                if seq.matcher.done:  # the grammar admits nothing more: the output is complete
                    self._finish(seq, "stop")
                    finished.append(seq)
                    continue
            if self._emit_text(seq, final=len(seq.out_ids) >= p.max_tokens):
                finished.append(seq)
        if self.metrics:
            self.metrics.tokens_generated(sampled)
        self._remove(finished)

    def _adjust(self, seq: Sequence, row_logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """One sequence's logits as its request shapes them: bias, penalties, stop tokens held off until
        min_tokens, then the grammar's mask. Returns them and whether anything changed (else the batch's argmax
        stands)."""
        p, adjusted = seq.params, False
        if seq.bias is not None:
            row_logits = row_logits.index_add(1, seq.bias[0], seq.bias[1][None])
            adjusted = True
        if seq.counts is not None:
            row_logits = row_logits - p.frequency_penalty * seq.counts - p.presence_penalty * (seq.counts > 0)
            adjusted = True
        if seq.held_off is not None and len(seq.out_ids) < p.min_tokens:
            row_logits = row_logits.index_fill(1, seq.held_off, float("-inf"))
            adjusted = True
        if seq.matcher is not None:
            row_logits = seq.matcher.mask(row_logits)
            adjusted = True
        return row_logits, adjusted

    def _emit_text(self, seq: Sequence, final: bool) -> bool:
        """Send the text that is certain, holding back an incomplete UTF-8 character and any tail that could
        still become a stop string. Returns True when the sequence is finished (stop string or max_tokens).
        Only the new tokens are decoded and only the new text searched: per step the cost does not grow with
        the reply (a full decode is made once, at the end)."""
        for token in seq.out_ids[len(seq.detok.ids):]:
            seq.detok.add(token)
        text = seq.detok.text  # up to the last complete character
        safe = len(text)
        protected = len(seq.out_ids) <= seq.params.min_tokens
        if protected:
            seq.stop_from = safe
        # Text searched before held no stop string, so a new one ends in the new text.
        hits = [] if protected else [i for i in (text.find(s, max(seq.stop_from, seq.searched - len(s) + 1))
                                                 for s in seq.params.stop) if i >= 0]
        seq.searched = safe
        if hits:
            self._finish(seq, "stop", text[: min(hits)])
            return True
        if final:
            self._finish(seq, "length")
            return True
        hold = 0
        for stop in [] if protected else seq.params.stop:
            for k in range(min(len(stop) - 1, safe - seq.stop_from), hold, -1):
                if text[safe - k: safe] == stop[:k]:
                    hold = k
                    break
        safe -= hold
        if safe > seq.sent_chars:
            self._send(seq, Delta(text[seq.sent_chars: safe], seq.unsent_ids, seq.unsent_logprobs))
            seq.sent_chars = safe
            seq.unsent_ids, seq.unsent_logprobs = [], []
        return False

    def _finish(self, seq: Sequence, reason: str, text: str | None = None) -> None:
        if text is None:
            text = seq.detok.decode(seq.out_ids) if reason in ("stop", "length") else ""
        rest = text[seq.sent_chars:] if len(text) > seq.sent_chars else ""
        self._send(seq, Delta(rest, seq.unsent_ids, seq.unsent_logprobs, reason, len(seq.out_ids)))
        seq.sent_chars = len(text)
        seq.unsent_ids, seq.unsent_logprobs = [], []
        seq.cancelled = seq.cancelled or reason in ("abort", "error")
        if self.metrics:
            self.metrics.request_finished(reason, time.perf_counter() - seq.arrival)

    def _send(self, seq: Sequence, delta: Delta) -> None:
        try:
            seq.emit(seq.index, delta)
        except Exception:  # the reader is gone (its event loop closed); stop generating for it
            log.debug("dropping sequence whose reader is gone", exc_info=True)
            seq.cancelled = True

    def _observe_token(self, seq: Sequence, now: float) -> None:
        if self.metrics:
            if seq.last_token_at is None:
                self.metrics.ttft.observe(now - seq.arrival)
            else:
                self.metrics.tpot.observe(now - seq.last_token_at)
        seq.last_token_at = now

    def _remove(self, seqs: list[Sequence]) -> None:
        """Free slots, keeping the running ones contiguous: the last sequence moves into each hole, and the one
        that left goes to the last's slot, where its keys/values stay for a later prompt (`_kept`)."""
        for seq in seqs:
            if seq not in self._running:
                continue
            i = self._running.index(seq)
            last = self._running.pop()
            free = len(self._running)
            if last is not seq:
                swap_slots(self.cache, free, i, max(last.length, seq.length))
                self._running[i] = last
            held = [*seq.prompt_ids, *seq.out_ids][: seq.length]  # the last sampled token was never fed
            if held:
                self._kept[free] = held

    def _update_gauges(self) -> None:
        if self.metrics:
            self.metrics.running.set(len(self._running))
            self.metrics.waiting.set(len(self._waiting))


def _token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The token's log-prob and the `top` most likely alternatives; tokens masked to -inf (a grammar, held-off
    stop tokens) are never alternatives, so no -Infinity reaches JSON."""
    logp = torch.log_softmax(logits, dim=-1)
    best = torch.topk(logp, top) if top else None
    pairs = [(i, v) for i, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)
             if v != float("-inf")] if best is not None else []
    return TokenLogprob(token, float(logp[token]), pairs)


def _common_prefix(a: list[int], b: list[int], limit: int | None = None) -> int:
    n = min(len(a), len(b), len(a) if limit is None else limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

