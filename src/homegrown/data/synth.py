"""Teacher client: synthetic chat data from any OpenAI-compatible endpoint, cached, budgeted and resumable.

What to ask comes from data/recipes.py (Phi-style textbook sections, TinyStories-style stories,
document-grounded QA, multi-turn conversations, each from combinatorial seeds); this module asks.

Every reply that parses is stored in a SQLite cache keyed by sha256(model, messages, parameters) before it
is used, so a re-run — after a crash, a budget stop or with a larger `--records` — pays only for prompts it
has never had answered. Replies that fail (HTTP errors after retries, malformed bodies, unparseable text)
are never cached. The official `openai` SDK talks HTTP (its own retries off: ours also cover malformed
replies and share the budget); the endpoint can be OpenAI, Azure's v1 API, vLLM, Ollama or `homegrown serve`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import openai

from homegrown.config import SynthConfig
from homegrown.data import dedup
from homegrown.data.recipes import RECIPES, BadReply, Parsed, SeedInputs, build_prompts
from homegrown.errors import HomegrownError
from homegrown.io import atomic_open, write_json_atomic
from homegrown.progress import StepProgress, console

PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "o4-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
}
"""USD per million (input, output) tokens, OpenAI list prices as of 2025; a dated model name matches its prefix
(`gpt-4o-2024-08-06` → gpt-4o). Self-hosted teachers have no entry: their cost is shown as unknown."""

KEY_ENV = ("HOMEGROWN_TEACHER_KEY", "OPENAI_API_KEY")


def price_for(model: str) -> tuple[float, float] | None:
    """List price of `model`, by exact name or the longest known prefix."""
    matches = [name for name in PRICES if model == name or model.startswith(name + "-")]
    return PRICES[max(matches, key=len)] if matches else None


def api_key_from_env() -> str:
    """The teacher's key; local servers (vLLM, Ollama, homegrown serve) usually need none, hence the placeholder."""
    return next((os.environ[k] for k in KEY_ENV if os.environ.get(k)), "no-key")


# ---- cache, budget, teacher ----


def cache_key(model: str, messages: list[dict], params: dict) -> str:
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Reply:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool


class Cache:
    """Teacher replies in SQLite, one committed row per reply: a crash loses at most the requests in flight."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                         "request TEXT NOT NULL, content TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, "
                         "completion_tokens INTEGER NOT NULL, created REAL NOT NULL)")
        self._db.commit()

    def get(self, key: str) -> Reply | None:
        with self._lock:
            row = self._db.execute("SELECT content, prompt_tokens, completion_tokens FROM replies WHERE key = ?",
                                   (key,)).fetchone()
        return Reply(row[0], row[1], row[2], cached=True) if row else None

    def put(self, key: str, model: str, request: dict, reply: Reply) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (key, model, json.dumps(request, ensure_ascii=False), reply.content,
                              reply.prompt_tokens, reply.completion_tokens, time.time()))
            self._db.commit()

    def close(self) -> None:
        self._db.close()


class BudgetExhausted(Exception):
    """No room left in the token/cost budget for another request."""


class TeacherFailed(Exception):
    """A prompt still failed after every retry; it is skipped (and left uncached for a later run)."""


class Budget:
    """Tokens and estimated cost of new requests. A request reserves its worst case (prompt estimate +
    max_tokens) before it is sent, so concurrent requests can never overshoot the cap together."""

    def __init__(self, max_tokens: int, max_cost: float, price: tuple[float, float] | None) -> None:
        self.max_tokens, self.max_cost, self.price = max_tokens, max_cost, price
        self.tokens = 0
        self.cost = 0.0
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self.exhausted = False
        self._lock = threading.Lock()

    def _cost(self, prompt: int, completion: int) -> float:
        return 0.0 if self.price is None else (prompt * self.price[0] + completion * self.price[1]) / 1e6

    def reserve(self, prompt: int, completion: int) -> tuple[int, float]:
        tokens, cost = prompt + completion, self._cost(prompt, completion)
        with self._lock:
            over_tokens = self.max_tokens and self.tokens + self._reserved_tokens + tokens > self.max_tokens
            over_cost = self.max_cost and self.cost + self._reserved_cost + cost > self.max_cost
            if self.exhausted or over_tokens or over_cost:
                self.exhausted = True
                raise BudgetExhausted
            self._reserved_tokens += tokens
            self._reserved_cost += cost
        return tokens, cost

    def settle(self, reservation: tuple[int, float], prompt: int, completion: int) -> None:
        """Release a reservation and charge what was actually used (failed attempts are charged too)."""
        with self._lock:
            self._reserved_tokens -= reservation[0]
            self._reserved_cost -= reservation[1]
            self.tokens += prompt + completion
            self.cost += self._cost(prompt, completion)


@dataclass
class SynthStats:
    prompts: int = 0
    cache_hits: int = 0
    requests: int = 0
    retries: int = 0
    failed_prompts: int = 0
    bad_replies: int = 0
    skipped_for_budget: int = 0
    duplicates_dropped: int = 0
    records: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_cost_usd: float | None = 0.0
    stopped_by_budget: bool = False
    errors: list[str] = field(default_factory=list)


def _estimate_tokens(messages: list[dict]) -> int:
    """Upper-end guess (3 characters per token + per-message overhead) used only for budget reservations."""
    return sum(len(m["content"]) // 3 + 8 for m in messages)


class Teacher:
    """One OpenAI-compatible endpoint with retries, cache and budget around each chat completion."""

    def __init__(self, base_url: str, model: str, cfg: SynthConfig, cache: Cache, budget: Budget,
                 api_key: str | None = None) -> None:
        self.model, self.cfg, self.cache, self.budget = model, cfg, cache, budget
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or api_key_from_env(), max_retries=0,
                                    timeout=cfg.timeout_s)
        self.params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
        self.stats = SynthStats()
        self._lock = threading.Lock()

    def _count(self, **increments: int) -> None:
        with self._lock:
            for k, v in increments.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def _wait(self, attempt: int, error: Exception) -> None:
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
        response = getattr(error, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after and re.fullmatch(r"\d+(\.\d+)?", retry_after.strip()):
            delay = min(self.cfg.backoff_max_s, float(retry_after))
        time.sleep(delay)

    def _request(self, messages: list[dict]) -> Reply:
        """One HTTP request; transient failures and malformed bodies raise for `ask` to retry."""
        self._count(requests=1)
        completion = self.client.chat.completions.create(model=self.model, messages=messages, **self.params)
        choices = getattr(completion, "choices", None)
        content = choices[0].message.content if choices and getattr(choices[0], "message", None) else None
        if not isinstance(content, str) or not content.strip():
            raise BadReply("response has no choices[0].message.content")
        usage = getattr(completion, "usage", None)
        prompt = getattr(usage, "prompt_tokens", None)
        out = getattr(usage, "completion_tokens", None)
        if not isinstance(prompt, int) or not isinstance(out, int):
            prompt, out = _estimate_tokens(messages), len(content) // 3 + 1
        return Reply(content, prompt, out, cached=False)

    def ask(self, messages: list[dict], parse: Callable[[str], Parsed]) -> tuple[Reply, Parsed]:
        """The parsed reply for `messages`: from the cache, or from the teacher with retries within budget."""
        key = cache_key(self.model, messages, self.params)
        hit = self.cache.get(key)
        if hit is not None:
            self._count(cache_hits=1)
            return hit, parse(hit.content)
        last: Exception | None = None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self._count(retries=1)
                self._wait(attempt - 1, last)
            reservation = self.budget.reserve(_estimate_tokens(messages), self.cfg.max_tokens)
            used = (0, 0)
            try:
                reply = self._request(messages)
                used = (reply.prompt_tokens, reply.completion_tokens)
                parsed = parse(reply.content)
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as e:
                last = e
                continue
            except openai.APIStatusError as e:
                raise HomegrownError(_status_advice(e, self.model)) from None
            except (BadReply, ValueError, TypeError, AttributeError, IndexError) as e:
                self._count(bad_replies=1)
                last = e
                continue
            finally:
                self.budget.settle(reservation, *used)
                self._count(prompt_tokens=used[0], completion_tokens=used[1])
            self.cache.put(key, self.model, {"messages": messages, **self.params}, reply)
            return reply, parsed
        raise TeacherFailed(f"gave up after {self.cfg.max_retries + 1} attempts: {type(last).__name__}: {last}")


def _status_advice(e: openai.APIStatusError, model: str) -> str:
    if e.status_code in (401, 403):
        return (f"the teacher refused the request ({e.status_code}); set HOMEGROWN_TEACHER_KEY or OPENAI_API_KEY "
                "to a valid key for this endpoint")
    if e.status_code == 404:
        return f"the teacher has no model {model!r} or the URL is wrong (404); check --teacher-url and --teacher-model"
    return f"the teacher rejected the request ({e.status_code}): {e.message}"


# ---- the stage ----


def _dedup_text(conv: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in conv if m["role"] == "assistant")


def _make_dedup(cfg: SynthConfig) -> Callable[[str], bool]:
    """A `seen(text)` check: exact repeats first (cheap), then MinHash LSH near-duplicates (data/dedup.py)."""
    exact = dedup.ExactDedup()
    near = dedup.NearDedup(threshold=cfg.near_dup_threshold)
    keys = itertools.count()

    def seen(text: str) -> bool:
        return exact.seen(text) or near.seen_or_add(str(next(keys)), near.signature(text)) is not None

    return seen


def _existing_texts(path: Path) -> Iterable[str]:
    if not path.is_file():
        raise HomegrownError(f"--existing {path} does not exist")
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if isinstance(record.get("messages"), list):
                    yield _dedup_text(record["messages"])
                elif isinstance(record.get("text"), str):
                    yield record["text"]


def synthesize(base_url: str, model: str, recipe_name: str, out: Path, cfg: SynthConfig,
               inputs: SeedInputs | None = None, cache_path: Path | None = None, existing: Path | None = None,
               api_key: str | None = None, progress: bool = True) -> SynthStats:
    """Generate chat records into `out` (JSONL, written whole then renamed) and `out`.manifest.json.

    Stops cleanly when the budget runs out: what was generated is written, the rest is left for a re-run,
    which takes every reply it already paid for from the cache.
    """
    if recipe_name not in RECIPES:
        raise HomegrownError(f"unknown recipe {recipe_name!r}; choose one of: {', '.join(RECIPES)}")
    if cfg.concurrency < 1:
        raise HomegrownError("--concurrency must be at least 1")
    recipe = RECIPES[recipe_name]
    price = price_for(model)
    if cfg.max_cost_usd and price is None:
        raise HomegrownError(f"no list price known for {model!r}, so a cost cap cannot be enforced; use "
                             "--max-tokens-budget instead")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prompts = build_prompts(recipe, inputs or SeedInputs(), cfg.records, cfg.seed)
    cache = Cache(cache_path or out.with_name(out.name + ".cache.sqlite"))
    budget = Budget(cfg.max_tokens_budget, cfg.max_cost_usd, price)
    teacher = Teacher(base_url, model, cfg, cache, budget, api_key)
    stats = teacher.stats
    stats.prompts = len(prompts)

    fatal = threading.Event()

    def work(item: tuple[dict[str, str], list[dict]]) -> tuple[str, Reply | None, Parsed | str]:
        seed, messages = item
        if fatal.is_set():
            return "cancelled", None, ""
        try:
            reply, parsed = teacher.ask(messages, lambda text: recipe.parse(text, seed))
            return "ok", reply, parsed
        except HomegrownError:
            fatal.set()  # a bad key or URL fails every request alike: start no more
            raise
        except BudgetExhausted:
            return "budget", None, ""
        except TeacherFailed as e:
            return "failed", None, str(e)

    results: list[tuple[str, Reply | None, Parsed | str]] = []
    pool = ThreadPoolExecutor(cfg.concurrency)
    try:
        with StepProgress("synth", len(prompts), enabled=progress) as bar:
            for future in [pool.submit(work, item) for item in prompts]:
                results.append(future.result())
                bar.update(len(results), requests=teacher.stats.requests, cached=teacher.stats.cache_hits)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a fatal error (bad key …) sends no further requests
        cache.close()

    seen = _make_dedup(cfg)
    if existing is not None:
        for text in _existing_texts(existing):
            seen(text)
    with atomic_open(out) as f:
        for (seed, messages), (status, reply, parsed) in zip(prompts, results, strict=True):
            if status == "budget":
                stats.skipped_for_budget += 1
                continue
            if status == "failed":
                stats.failed_prompts += 1
                stats.errors.append(str(parsed))
                continue
            key = cache_key(model, messages, teacher.params)
            for conv in parsed:
                if seen(_dedup_text(conv)):
                    stats.duplicates_dropped += 1
                    continue
                stats.records += 1
                # `text` and a unique `source` let `homegrown data ingest` take the file as a synthetic source
                text = "\n\n".join(m["content"] for m in conv if m["role"] != "system")
                source = f"synth://{recipe.name}/{key[:16]}/{stats.records}"
                f.write(json.dumps({"messages": conv, "text": text, "source": source, "teacher_model": model,
                                    "recipe": recipe.name, "seed": seed, "grounded_in": seed.get("source"),
                                    "teacher_url": base_url, "cache_key": key, "cached": reply.cached},
                                   ensure_ascii=False) + "\n")
    stats.stopped_by_budget = stats.skipped_for_budget > 0
    stats.estimated_cost_usd = None if price is None else round(budget.cost, 6)
    stats.errors = stats.errors[:20]
    manifest = {"format": "homegrown-synth/1", "file": out.name, "teacher_model": model, "teacher_url": base_url,
                "recipe": recipe.name, "recipe_description": recipe.description, "config": asdict(cfg),
                "price_usd_per_million_tokens": price, **asdict(stats)}
    manifest_path = out.with_name(out.name + ".manifest.json")
    write_json_atomic(manifest_path, manifest)
    if stats.stopped_by_budget:
        console.print(f"budget reached: {stats.skipped_for_budget} prompts left for a re-run with a larger budget "
                      "(replies already received come from the cache for free)")
    return stats


def print_stats(stats: SynthStats, out: Path) -> None:
    """One line: records written, requests and retries, cache hits, tokens, estimated cost, what was dropped."""
    cost = "unknown (no list price)" if stats.estimated_cost_usd is None else f"${stats.estimated_cost_usd:.4f}"
    console.print(f"{stats.records} records → {out}; {stats.requests} requests ({stats.retries} retries), "
                  f"{stats.cache_hits} from cache, {stats.prompt_tokens + stats.completion_tokens:,} tokens, "
                  f"est. cost {cost}; {stats.duplicates_dropped} duplicates and {stats.failed_prompts} failed "
                  "prompts dropped")
