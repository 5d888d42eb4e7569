"""Evaluation tasks as local JSONL files, scored the way lm-eval-harness and nanochat's CORE score them.

A task file holds one JSON object per line. The first line may be a header `{"task": {...}}` naming the
task type (`multiple_choice` or `generation`), its primary metric, the number of few-shot examples and, for
generation, the token budget and stop strings. Every other line is an item:

    multiple choice: {"id", "split": "dev"|"test", "context", "choices": [...], "answer": <index>}
    generation:      {"id", "split": "dev"|"test", "context", "answer": "..."[, "pattern": "<regex>"]}

`dev` items are only ever few-shot examples; `test` items are scored. Multiple choice picks the choice with
the highest log-likelihood after the context, raw (`acc`) and divided by the choice's length in characters
(`acc_norm`, lm-eval's definition: without it long choices lose just for having more tokens) and in UTF-8
bytes (`acc_bytes`). Generation decodes greedily, ends a reply at a stop string only once the reply has some
non-whitespace text (`stop_index`), and scores exact match, SQuAD token F1 and an optional regex.
A model only has to offer `loglikelihoods` and `generate` (the `ScoringModel` protocol), which is how our
checkpoints, lm-eval and any OpenAI-compatible endpoint are scored by one piece of code.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

import torch

from homegrown.bundle import ModelBundle
from homegrown.chat_template import EOT
from homegrown.data.sources import numbered_json_lines
from homegrown.errors import HomegrownError
from homegrown.generate import SamplingParams, stream_tokens

TASKS_DIR = Path(__file__).resolve().parents[3] / "data" / "tasks"
KINDS = ("multiple_choice", "generation")
METRICS = {"multiple_choice": ("acc_norm", "acc", "acc_bytes"), "generation": ("f1", "exact_match", "regex")}
FEWSHOT_SEP = "\n\n"


@dataclass
class Task:
    """One task file, parsed and checked; `items` are scored, `dev` supplies few-shot examples."""

    name: str
    kind: str
    metric: str
    items: list[dict]
    dev: list[dict]
    path: Path
    num_fewshot: int = 0
    description: str = ""
    max_tokens: int = 32
    stop: list[str] = field(default_factory=lambda: ["\n"])

    @cached_property
    def chance(self) -> float:
        """What knowing nothing scores: 1/choices for multiple choice; for generation, the best score one fixed
        answer (one of the references, given to every item) reaches: the majority answer for exact match, the
        most generic sentence for F1, so common words count as chance, not skill."""
        if self.kind == "multiple_choice":
            return sum(1 / len(it["choices"]) for it in self.items) / len(self.items)
        candidates = {it["answer"] for it in self.items}
        return max(sum(score_generation(c, it)[self.metric] for it in self.items) / len(self.items)
                   for c in candidates)


def _fail(path: Path, lineno: int, msg: str) -> HomegrownError:
    return HomegrownError(f"{path}:{lineno}: {msg}; fix or delete that line of the task file")


def _check_item(item: object, kind: str, path: Path, lineno: int) -> dict:
    if not isinstance(item, dict):
        raise _fail(path, lineno, "expected a JSON object")
    if not isinstance(item.get("context"), str):
        raise _fail(path, lineno, "missing string field 'context'")
    if item.setdefault("split", "test") not in ("dev", "test"):
        raise _fail(path, lineno, f"'split' must be 'dev' or 'test', got {item['split']!r}")
    item.setdefault("id", f"{path.stem}-{lineno}")
    if kind == "multiple_choice":
        choices = item.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise _fail(path, lineno, "'choices' must be a list of at least two non-empty strings")
        answer = item.get("answer")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise _fail(path, lineno, f"'answer' must be the index of the right choice (0..{len(choices) - 1})")
    else:
        if not isinstance(item.get("answer"), str):
            raise _fail(path, lineno, "generation items need a string 'answer'")
        if "pattern" in item:
            try:
                re.compile(item["pattern"])
            except (re.error, TypeError) as e:
                raise _fail(path, lineno, f"'pattern' is not a valid regular expression ({e})") from e
    return item


def load_task(path: Path) -> Task:
    """Parse and check a task file; any broken line is reported as `file:line: what is wrong`."""
    path = Path(path)
    if not path.is_file():
        raise HomegrownError(f"task file {path} not found; list the shipped ones with `ls {TASKS_DIR}`")
    header: dict = {}
    raw: list[tuple[int, object]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, record, err in numbered_json_lines(f):
            if err is not None:
                raise _fail(path, lineno, f"not valid JSON ({err.msg} at column {err.colno})") from err
            if isinstance(record, dict) and "task" in record and not raw and not header:
                if not isinstance(record["task"], dict):
                    raise _fail(path, lineno, "the header's 'task' must be an object")
                header = record["task"]
                continue
            raw.append((lineno, record))
    first = raw[0][1] if raw else {}
    kind = header.get("type") or ("multiple_choice" if isinstance(first, dict) and "choices" in first
                                  else "generation")
    if kind not in KINDS:
        raise HomegrownError(f"{path}: task type {kind!r} is not one of {', '.join(KINDS)}")
    metric = header.get("metric", METRICS[kind][0])
    if metric not in METRICS[kind]:
        raise HomegrownError(f"{path}: metric {metric!r} does not apply to {kind}; use one of {METRICS[kind]}")
    items = [_check_item(record, kind, path, lineno) for lineno, record in raw]
    test = [it for it in items if it["split"] == "test"]
    if not test:
        raise HomegrownError(f"{path} has no test items (lines with \"split\": \"test\" or no split)")
    if metric == "regex" and any("pattern" not in it for it in test):
        raise HomegrownError(f"{path}: metric 'regex' needs a 'pattern' on every test item")
    task = Task(name=header.get("name", path.stem), kind=kind, metric=metric, items=test,
                dev=[it for it in items if it["split"] == "dev"], path=path,
                num_fewshot=int(header.get("num_fewshot", 0)), description=header.get("description", ""),
                max_tokens=int(header.get("max_tokens", 32)), stop=list(header.get("stop", ["\n"])))
    if task.num_fewshot > len(task.dev):
        raise HomegrownError(f"{path}: num_fewshot={task.num_fewshot} but only {len(task.dev)} dev items")
    return task


def load_tasks(names: Sequence[str] = (), max_items: int = 0) -> list[Task]:
    """Tasks by file path or by shipped name (`doc_entry` → data/tasks/doc_entry.jsonl); all shipped by default.
    `max_items` > 0 keeps only that many test items of each (the first ones, so runs stay comparable)."""
    if names:
        paths = [Path(n) if Path(n).suffix else TASKS_DIR / f"{n}.jsonl" for n in names]
    else:
        paths = sorted(TASKS_DIR.glob("*.jsonl"))
        if not paths:
            raise HomegrownError(f"no task files in {TASKS_DIR}; rebuild them with `python scripts/build_tasks.py`")
    tasks = [load_task(p) for p in paths]
    if max_items > 0:
        for task in tasks:
            task.items = task.items[:max_items]
    return tasks


def fewshot_examples(task: Task, item: dict, seed: int = 1234) -> list[dict]:
    """`num_fewshot` dev items, drawn by a generator seeded from the item id: the same prompt on every run."""
    if not task.num_fewshot:
        return []
    pool = [d for d in task.dev if d["id"] != item["id"]]
    return random.Random(f"{seed}:{task.name}:{item['id']}").sample(pool, task.num_fewshot)


def gold(task: Task, item: dict) -> str:
    return item["choices"][item["answer"]] if task.kind == "multiple_choice" else item["answer"]


def build_prompt(task: Task, item: dict, seed: int = 1234) -> str:
    """Few-shot examples (context + right answer) separated by blank lines, then the item's context."""
    shots = [d["context"] + gold(task, d) for d in fewshot_examples(task, item, seed)]
    return FEWSHOT_SEP.join([*shots, item["context"]])


def build_messages(task: Task, item: dict, seed: int = 1234) -> list[dict[str, str]]:
    """The same few-shot prompt as chat turns, for chat models: each example a user question and the assistant's
    right answer, then the item's question (its `question` field when it has one, else its context)."""
    messages = []
    for shot in fewshot_examples(task, item, seed):
        messages.append({"role": "user", "content": shot.get("question", shot["context"]).strip()})
        messages.append({"role": "assistant", "content": gold(task, shot).strip()})
    messages.append({"role": "user", "content": item.get("question", item["context"]).strip()})
    return messages


# ---- scoring rules -------------------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_generation(prediction: str, item: dict) -> dict[str, float]:
    scores = {"exact_match": float(normalize_answer(prediction) == normalize_answer(item["answer"])),
              "f1": token_f1(prediction, item["answer"])}
    if "pattern" in item:
        scores["regex"] = float(re.search(item["pattern"], prediction) is not None)
    return scores


def pick_choice(logprobs: Sequence[float], choices: Sequence[str]) -> dict[str, int]:
    """Index chosen under each normalisation: raw sum, per character (lm-eval acc_norm), per UTF-8 byte."""
    def argmax(values: list[float]) -> int:
        return max(range(len(values)), key=values.__getitem__)

    return {"acc": argmax(list(logprobs)),
            "acc_norm": argmax([lp / len(c) for lp, c in zip(logprobs, choices, strict=True)]),
            "acc_bytes": argmax([lp / len(c.encode("utf-8")) for lp, c in zip(logprobs, choices, strict=True)])}


# ---- models ----------------------------------------------------------------------------------------------------

Prompt = str | list[dict[str, str]]
"""Plain text for a completion model, OpenAI-style messages for a chat model."""


class ScoringModel(Protocol):
    """What a task needs from a model. `supports_loglikelihood` False turns multiple choice into lettered
    questions; `chat` True makes generation prompts chat messages."""

    name: str
    supports_loglikelihood: bool
    chat: bool

    def loglikelihoods(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of log-probs of continuation given context, whether greedy decoding would produce it)."""
        ...

    def generate(self, prompts: Sequence[Prompt], max_tokens: int, stop: Sequence[str]) -> list[str]:
        """Greedy replies, each cut by `cut_at_stop` (stop strings count only after leading whitespace)."""
        ...


class LocalModel:
    """A loaded model bundle as a `ScoringModel`: batched log-likelihoods, greedy KV-cache generation; chat
    prompts go through the bundle's own template and stop at its stop tokens."""

    supports_loglikelihood = True

    def __init__(self, bundle: ModelBundle, name: str = "model", batch_size: int = 32, chat: bool = False) -> None:
        self.bundle, self.name, self.batch_size, self.chat = bundle, name, batch_size, chat
        self.model, self.tok = bundle.model.eval(), bundle.tokenizer
        bos, eot = bundle.chat.text_bos_id, self.tok.token_to_id(EOT)
        self.prefix = [] if bos is None else [bos]
        """What every plain-text context starts with: the model's text BOS (ours: <|endoftext|>), or nothing."""
        self.eot = next((i for i in (eot, *bundle.stop_ids, bos) if i is not None), 0)
        """End of text (lm-eval's eot_token_id): <|endoftext|> when the vocabulary has it, else EOS; it also
        stands before an empty context of a model whose text has no BOS, as lm-eval's prefix token does."""
        self.stop_ids = list(dict.fromkeys([*([] if eot is None else [eot]), *bundle.stop_ids]))
        self.device = next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's rule: trailing spaces move to the continuation; the continuation is what the whole string
        adds after the context's tokens. Every context starts after the model's text BOS (ours: <|endoftext|>, as
        documents do in training); an empty one without a BOS after end of text, so every token is scored."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return [*self.prefix, *ctx] or [self.eot], whole[len(ctx):]

    @torch.inference_mode()
    def score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Sum log-prob and greedy flag for each (context ids, continuation ids), many rows per forward pass.

        Rows are sorted by length so a batch pads little; right padding never changes earlier positions of a
        causal model. The context is cut from the left to fit the model's window, as lm-eval does.
        """
        limit = self.model.cfg.max_seq_len + 1
        rows = []
        for ctx, cont in pairs:
            if not cont:
                raise HomegrownError("a continuation is empty after tokenization; every choice needs some text")
            seq = (ctx + cont)[-limit:]
            # A continuation longer than the window keeps only its last tokens (lm-eval truncates the same way).
            rows.append((seq, min(len(cont), len(seq) - 1)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = len(rows[batch[0]][0]) - 1
            inputs = torch.zeros(len(batch), width, dtype=torch.long)
            for r, i in enumerate(batch):
                seq = rows[i][0]
                inputs[r, :len(seq) - 1] = torch.tensor(seq[:-1])
            logprobs = torch.log_softmax(self.model(inputs.to(self.device)).float(), dim=-1)
            for r, i in enumerate(batch):
                seq, n = rows[i]
                targets = torch.tensor(seq[-n:], device=self.device)
                positions = torch.arange(len(seq) - 1 - n, len(seq) - 1, device=self.device)
                lp = logprobs[r, positions]
                out[i] = (float(lp.gather(1, targets[:, None]).sum()), bool((lp.argmax(-1) == targets).all()))
        return out

    def loglikelihoods(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.score_tokens([self.encode_pair(c, x) for c, x in requests])

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Text starts as the model's plain text does (after its BOS, if any: ours, like a training document,
        after <|endoftext|>); a chat goes through the model's template, as SFT and the server tokenize it."""
        if isinstance(prompt, str):
            return self.bundle.text_prompt_ids(prompt)
        return self.bundle.chat_prompt_ids(prompt)

    def greedy_tokens(self, ids: list[int], max_tokens: int) -> Iterator[int]:
        """Greedy decoding with the KV cache, ending at one of the model's stop tokens (not yielded)."""
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop_token_ids=self.stop_ids)
        yield from stream_tokens(self.model, ids, params)

    def generate(self, prompts: Sequence[Prompt], max_tokens: int, stop: Sequence[str]) -> list[str]:
        """Greedy continuation of each prompt (messages go through the model's chat template), cut by
        `cut_at_stop` (a stop string counts only once the reply has some non-whitespace text); a long prompt loses
        its oldest tokens first."""
        budget = min(max_tokens, self.model.cfg.max_seq_len - 1)
        outputs = []
        for prompt in prompts:
            ids = self.prompt_ids(prompt)[-(self.model.cfg.max_seq_len - budget):]
            generated: list[int] = []
            text = ""
            for token in self.greedy_tokens(ids, budget):
                generated.append(token)
                text = self.tok.decode(generated)
                if stop_index(text, stop) is not None:
                    break
            outputs.append(cut_at_stop(text, stop).strip() if self.chat else cut_at_stop(text, stop))
        return outputs


def stop_index(text: str, stop: Sequence[str]) -> int | None:
    """Where a generated reply ends: the first occurrence of a stop string at or after the reply's first
    non-whitespace character, None while there is none.

    Leading whitespace never ends a reply: a model asked "...\nAnswer:" often starts its answer on a new line,
    and cutting at that first newline would score every such model 0 (this suite's generation tasks did, for
    every model, before this rule). lm-eval's `until` cuts at the first occurrence wherever it falls.
    """
    start = len(text) - len(text.lstrip())
    if start == len(text):
        return None
    hits = [i for s in stop if s and (i := text.find(s, start)) >= 0]
    return min(hits, default=None)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The reply up to its stop (see `stop_index`), or all of it when no stop string ended it."""
    end = stop_index(text, stop)
    return text if end is None else text[:end]


# ---- evaluation ----------------------------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJ"


def lettered_question(task: Task, item: dict) -> str:
    """A multiple-choice item as a question whose answer is a letter: how chat-only endpoints are scored."""
    options = "\n".join(f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(item["choices"]))
    return (f"{item['context'].strip()} …\nWhich option is right?\n{options}\n"
            "Reply with the letter only.\nAnswer:")


@dataclass
class TaskResult:
    task: str
    kind: str
    metric: str
    score: float
    chance: float
    n: int
    num_fewshot: int
    metrics: dict[str, float]
    stderr: float
    """Standard error of the primary metric over items: differences under ~2 of these are noise."""
    mode: str
    """`loglikelihood`; `generation` or `chat` (the prompt as chat turns); `lettered` (multiple choice asked as
    a question, for endpoints that cannot score log-likelihoods)."""
    examples: list[dict] = field(default_factory=list)


def _stderr(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def evaluate_task(task: Task, lm: ScoringModel, seed: int = 1234, keep_examples: int = 3) -> TaskResult:
    """Score every test item of `task` with `lm`; returns the primary metric, all metrics and a few examples."""
    prompts = [build_prompt(task, it, seed) for it in task.items]
    if task.kind == "multiple_choice" and lm.supports_loglikelihood:
        requests = [(p, c) for p, it in zip(prompts, task.items, strict=True) for c in it["choices"]]
        scores = lm.loglikelihoods(requests)
        totals: Counter[str] = Counter()
        primary: list[float] = []
        examples = []
        pos = 0
        for it in task.items:
            lps = [lp for lp, _ in scores[pos:pos + len(it["choices"])]]
            pos += len(it["choices"])
            picked = pick_choice(lps, it["choices"])
            totals.update({k: float(v == it["answer"]) for k, v in picked.items()})
            primary.append(float(picked[task.metric] == it["answer"]))
            if len(examples) < keep_examples:
                examples.append({"id": it["id"], "context": it["context"], "gold": gold(task, it),
                                 "predicted": it["choices"][picked[task.metric]], "logprobs": lps})
        metrics = {k: totals[k] / len(task.items) for k in METRICS["multiple_choice"]}
        return TaskResult(task.name, task.kind, task.metric, metrics[task.metric], task.chance, len(task.items),
                          task.num_fewshot, metrics, _stderr(primary), "loglikelihood", examples)
    if task.kind == "multiple_choice":
        questions = [lettered_question(task, it) for it in task.items]
        asked: list[Prompt] = [[{"role": "user", "content": q}] for q in questions] if lm.chat else list(questions)
        replies = lm.generate(asked, 4, ["\n"])
        right = [float(r.strip()[:1].upper() == LETTERS[it["answer"]]) for r, it in zip(replies, task.items,
                                                                                          strict=True)]
        acc = sum(right) / len(right)
        examples = [{"id": it["id"], "context": q, "gold": LETTERS[it["answer"]], "predicted": r}
                    for q, r, it in list(zip(questions, replies, task.items, strict=True))[:keep_examples]]
        return TaskResult(task.name, task.kind, "acc", acc, task.chance, len(task.items), 0, {"acc": acc},
                          _stderr(right), "lettered", examples)
    chat = getattr(lm, "chat", False)
    inputs: list[Prompt] = [build_messages(task, it, seed) for it in task.items] if chat else list(prompts)
    replies = lm.generate(inputs, task.max_tokens, task.stop)
    per_item = [score_generation(r, it) for r, it in zip(replies, task.items, strict=True)]
    metrics = {k: sum(s[k] for s in per_item) / len(per_item) for k in per_item[0]}
    examples = [{"id": it["id"], "context": it["context"], "gold": it["answer"], "predicted": r}
                for r, it in list(zip(replies, task.items, strict=True))[:keep_examples]]
    return TaskResult(task.name, task.kind, task.metric, metrics[task.metric], task.chance, len(task.items),
                      task.num_fewshot, metrics, _stderr([s[task.metric] for s in per_item]),
                      "chat" if chat else "generation", examples)
