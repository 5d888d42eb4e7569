"""Structured output by constrained decoding: a grammar decides, token by token, which tokens a sequence may take.

Why llguidance (1.9.1) and not xgrammar (0.2.9): both compute a vocabulary bitmask per step from a grammar, and
both are made for exactly this. llguidance was chosen because

- it needs no per-grammar precompilation: a matcher is built in about a millisecond and computes each mask lazily
  (measured on SmolLM2's 49,152-token vocabulary: ~0.01-0.3 ms a token, `benchmarks/constrained_decode.py`);
  xgrammar precomputes an adaptive mask cache per grammar over the whole vocabulary, which pays off when one
  schema serves many requests but costs every new schema — and tool calling brings a new schema with every
  request's `tools`;
- it reads the tokenizer straight from `tokenizer.json` text (`tokenizers.Tokenizer.to_str()`), which is what
  every model bundle holds — our byte-level BPE and the tokenizers `homegrown import` builds from GGUF / HF —
  without going through transformers;
- its JSON Schema coverage is the broadest measured (JSONSchemaBench), it refuses what it does not implement
  instead of loosening the schema (so an unsupported schema is a 400, not an unenforced one), and its Lark
  grammars have lazy lexemes: "free text until a trigger string, then JSON" is one grammar, which tool calling
  (`tool_choice: auto`) needs.

The interface (for the engine and for tool calling):

- `ConstraintSpec` (in `constraint_spec`: torch-free, so request parsing and the gateway need not load torch) —
  what a sequence must produce, carried in `GenerationParams.constraint`; frozen and hashable, so it is the
  cache key (the same schema compiles once per server). Build one with
    * `ConstraintSpec.json_object()` — any JSON object (`response_format: {"type": "json_object"}`);
    * `ConstraintSpec.json_schema(schema)` — JSON valid against a JSON Schema (`json_schema`, or a tool's
      parameters; an `{"anyOf": [...]}` / array schema for `tool_choice: required`);
    * `ConstraintSpec.tagged(begin, schemas, end, trigger=…, required=…, parallel=…, separator=…)` — free
      text; where the model writes `trigger` (default: `begin`) the rest of `begin` is forced, then JSON
      matching one of `schemas`, then `end`; then free text again and more calls (with `parallel=False`,
      nothing more). With `required=True` there is no free text: one call, or (parallel) calls with
      `separator` between them. A special token of the model's tokenizer in `trigger`, `begin` or `end` (a
      `<tool_call>` that is one token) is matched as that token, the rest as text; `marker_ids(spec)` names
      those tokens, which the engine then writes into the text, so the parser sees them.
  `param` names the request parameter the spec came from (`response_format`, `tools`): errors name it.
- `GrammarCompiler(tokenizer, vocab_size, stop_ids)` — one per engine: compiles specs (cached), raising
  `ConstraintError` (a HomegrownError with `.param`) for an invalid or unsupported schema with llguidance's
  reason; `matcher(spec)` gives a fresh `Matcher` for one sequence.
- `Matcher` — `mask(logits)` (-inf on every token the grammar forbids at this point; the stop tokens are allowed
  only where the grammar may end), `advance(token)` after a token is accepted, `done` once the grammar admits
  nothing more (the engine then ends the sequence with finish_reason "stop").

JSON is generated compact-ish and without free whitespace (`, ` and `: ` separators, no other whitespace):
whitespace the grammar allows is whitespace a model may emit forever, and a bounded schema (enums, maxLength,
maxItems, additionalProperties false) must give bounded output.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import llguidance
import numpy as np
import torch
from tokenizers import Tokenizer

from homegrown.errors import HomegrownError
from homegrown.serve.constraint_spec import ConstraintError, ConstraintSpec
from homegrown.tokenizer import special_ids, special_token_id

JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""llguidance's JSON options for every schema (they override a schema's own `x-guidance`)."""


class GrammarDeadEnd(RuntimeError):
    """The grammar allows no token at all (an unsatisfiable branch llguidance could not see when compiling)."""


class Matcher:
    """One sequence's position in its grammar (an `llguidance.LLMatcher`), and the mask it allows next."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._m, self._vocab = matcher, vocab_size
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    def allowed(self) -> torch.Tensor:
        """(V,) bool: the tokens the grammar allows now (the stop tokens where it may end)."""
        return torch.from_numpy(self._allowed())

    def _allowed(self) -> np.ndarray:
        self._m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._vocab].view(np.bool_)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """(1, V) logits with -inf on every forbidden token; GrammarDeadEnd if nothing is allowed.

        On the CPU this is numpy, single-threaded: a 49K-element torch op is split over OpenMP threads, and on
        a busy machine waiting for a descheduled one cost tens of milliseconds a token (measured), against
        ~0.1 ms here."""
        allowed = self._allowed()
        if not allowed.any():
            raise GrammarDeadEnd(f"the grammar allows no token: {self._m.get_error() or 'dead end'}")
        if logits.device.type == "cpu":
            return torch.from_numpy(np.where(allowed, logits.numpy(), np.float32(-np.inf)))
        return logits.masked_fill(~torch.from_numpy(allowed).to(logits.device), float("-inf"))

    def advance(self, token: int) -> None:
        """Take an accepted token; it must be one the last mask allowed."""
        if not self._m.consume_token(token):
            raise RuntimeError(f"token {token} was rejected by the grammar: {self._m.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar admits no further token: the output is complete."""
        return self._m.is_stopped()

    @property
    def accepting(self) -> bool:
        """The output so far is complete (it may still go on, e.g. more digits of a number)."""
        return self._m.is_accepting()


class GrammarCompiler:
    """Compiles `ConstraintSpec`s against one model's tokenizer, once per spec (an LRU-less cache: a server sees
    a bounded set of schemas in practice, and an entry is a few kilobytes to a megabyte)."""

    MAX_CACHED = 256
    """Past this many distinct specs the cache is cleared rather than grown without bound."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids: list[int]) -> None:
        if tokenizer.get_vocab_size() > vocab_size:
            raise HomegrownError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens, over the model's "
                                 f"{vocab_size} logits")
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._ll = llguidance.LLTokenizer(tokenizer.to_str(), n_vocab=vocab_size, eos_token=list(stop_ids))
        self._specials = special_ids(tokenizer)
        self._cache: dict[ConstraintSpec, llguidance.LLMatcher] = {}
        self._lock = threading.Lock()

    def matcher(self, spec: ConstraintSpec) -> Matcher:
        """A fresh matcher for one sequence; raises ConstraintError if the spec cannot be enforced."""
        with self._lock:
            compiled = self._cache.get(spec)
        if compiled is None:
            compiled = self._compile(spec)
            with self._lock:
                if len(self._cache) >= self.MAX_CACHED:
                    self._cache.clear()
                self._cache[spec] = compiled
        return Matcher(compiled.deep_copy(), self.vocab_size)

    def check(self, spec: ConstraintSpec) -> None:
        """Compile (or find) the spec, so a bad one is refused before anything is queued."""
        self.matcher(spec)

    @property
    def cached(self) -> int:
        return len(self._cache)

    def _compile(self, spec: ConstraintSpec) -> llguidance.LLMatcher:
        grammar = self.grammar(spec)
        matcher = llguidance.LLMatcher(self._ll, grammar, log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"{spec.param}: the schema cannot be enforced: {matcher.get_error()}", spec.param)
        return matcher

    def grammar(self, spec: ConstraintSpec) -> str:
        """The llguidance grammar text of a spec."""
        if spec.kind in ("json_object", "json_schema"):
            return llguidance.LLMatcher.grammar_from_json_schema(spec.schemas[0], overrides=JSON_OPTIONS)
        return llguidance.LLMatcher.grammar_from_lark(self._tagged_lark(spec))

    def _tagged_lark(self, spec: ConstraintSpec) -> str:
        """Free text, then `begin` JSON `end` calls. A text trigger is a lazy lexeme: the text ends as soon as the
        trigger appears in it. A special-token trigger needs none: text never contains a special token."""
        schemas = [{**json.loads(s), "x-guidance": JSON_OPTIONS} for s in spec.schemas]
        body = schemas[0] if len(schemas) == 1 else {"anyOf": schemas, "x-guidance": JSON_OPTIONS}
        tail = " ".join(x for x in (self._literal(spec.begin[len(spec.trigger):]), f"%json {json.dumps(body)}",
                                    self._literal(spec.end)) if x)
        special = self._special(spec.trigger)
        lines = ["%llguidance {}", "TEXT: /(.|\\n)*/"]
        if special is not None:
            lines += [f"call: {special} {tail}", "text_call: TEXT call"]
        else:
            lines += [f"call: {json.dumps(spec.trigger)} {tail}",
                      f"call_trigger[lazy]: TEXT {json.dumps(spec.trigger)}", f"text_call: call_trigger {tail}"]
        if spec.required:
            between = self._literal(spec.separator)
            start = f"call ({between} call)*" if spec.parallel else "call"
        else:
            start = "text_call* TEXT" if spec.parallel else "TEXT | text_call"
        return "\n".join([lines[0], f"start: {start}", *lines[1:]]) + "\n"

    def _special(self, text: str) -> str | None:
        """`<[id]>` when `text` is exactly one special token of the tokenizer, else None."""
        token = special_token_id(self.tokenizer, text)
        return None if token is None else f"<[{token}]>"

    def _literal(self, text: str) -> str:
        """`text` as Lark: its special tokens as themselves (`<[id]>`), the text between them as strings — so
        the end `\n</tool_call>` of a model whose `</tool_call>` is one token is generated as that token."""
        return " ".join(f"<[{piece}]>" if isinstance(piece, int) else json.dumps(piece)
                        for piece in self._pieces(text))

    def marker_ids(self, spec: ConstraintSpec) -> frozenset[int]:
        """The special tokens a tagged spec's grammar writes (in its trigger, begin or end): the engine decodes
        them into the text, which would otherwise skip them, so the tool-call parser sees its markers."""
        return frozenset(piece for text in (spec.begin, spec.end) for piece in self._pieces(text)
                         if isinstance(piece, int))

    def _pieces(self, text: str) -> list[str | int]:
        """`text` cut at the special tokens it holds, as the tokenizer finds them: text and token ids, in order."""
        if not text:
            return []
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        pieces: list[str | int] = []
        at = 0
        for token, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
            if token in self._specials:
                pieces += [text[at:start], token] if start > at else [token]
                at = end
        return [*pieces, text[at:]] if at < len(text) else pieces
