"""Preference pairs from the policy itself: sample answers to each prompt, let a stronger model judge them.

Each prompt gets `samples` answers from the model being tuned (seeded, so a re-run samples the same answers), and
every two distinct answers are shown to the judge — any OpenAI-compatible endpoint, through data/synth.py's
teacher client, so judgements are cached in SQLite, retried, and stop cleanly at a token or cost budget; a re-run
pays only for the comparisons it never had answered. Judges prefer whichever answer is shown first (or second)
more often than chance, so each comparison is asked in both orders — which order goes first is randomised per
comparison — and counts only when both verdicts agree; a tie or a disagreement counts for neither. The answer with
the most wins becomes `chosen` and the one with the fewest `rejected`; a prompt whose best or worst place is shared
gives no pair. Every pair records its provenance: policy checkpoint, sampling seeds, judge model and URL, votes,
date.

Other sources write the same lines: a JSONL of TRL's `{"prompt"|"messages", "chosen", "rejected"}` trains as is,
and the gateway's judged shadow comparisons (provider answer vs ours, with the judge's verdict) become pairs by
writing the preferred answer as `chosen` with the comparison's provenance beside it.
"""

from __future__ import annotations

import itertools
import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from homegrown.bundle import load_bundle
from homegrown.config import SynthConfig
from homegrown.data.recipes import BadReply
from homegrown.data.sources import numbered_json_lines
from homegrown.data.synth import Budget, BudgetExhausted, Cache, Teacher, TeacherFailed, price_for
from homegrown.errors import HomegrownError
from homegrown.generate import SamplingParams, sample_batch
from homegrown.io import atomic_open, write_json_atomic
from homegrown.posttrain.pairs import Messages
from homegrown.progress import StepProgress, console

JUDGE_SYSTEM = (
    "You are an impartial judge. Given a conversation and two candidate replies to its last message, decide which "
    "reply is better: more correct, more helpful, clearer. Length is not a merit in itself. Answer with exactly one "
    "word: A, B, or TIE.")


def judge_messages(prompt: Messages, first: str, second: str) -> list[dict[str, str]]:
    """The judge's request for one ordering of two answers."""
    convo = "\n".join(f"[{m['role']}]\n{m['content']}" for m in prompt)
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Conversation:\n{convo}\n\nReply A:\n{first}\n\nReply B:\n{second}\n\n"
                                        "Which reply is better? Answer A, B or TIE."}]


def parse_verdict(text: str) -> str:
    """"A", "B" or "TIE" from the judge's reply; anything else is a bad reply (retried, never cached)."""
    word = text.strip().strip(".*:\"'` ").upper().split()
    if not word or word[0].rstrip(".,:") not in ("A", "B", "TIE"):
        raise BadReply(f"the judge answered {text[:40]!r}, not A, B or TIE")
    return word[0].rstrip(".,:")


@dataclass
class PairStats:
    prompts: int = 0
    no_distinct_answers: int = 0
    comparisons: int = 0
    ties_or_disagreements: int = 0
    no_clear_winner: int = 0
    pairs: int = 0
    skipped_for_budget: int = 0
    failed_comparisons: int = 0
    judge_requests: int = 0
    judge_cache_hits: int = 0
    problems: list[str] = field(default_factory=list)


def read_prompts(path: Path) -> tuple[list[Messages], list[str]]:
    """Prompts from JSONL: `{"prompt": "text" | [messages]}` or a chat `{"messages": [...]}`, whose conversation up
    to its last user turn is the prompt (so SFT data and preference data can be read alike)."""
    path = Path(path)
    if not path.is_file():
        raise HomegrownError(f"prompts file {path} does not exist")
    prompts, problems = [], []
    with path.open(encoding="utf-8") as f:
        for lineno, record, err in numbered_json_lines(f):
            value = record.get("prompt", record.get("messages")) if isinstance(record, dict) else None
            if isinstance(value, str) and value.strip():
                prompts.append([{"role": "user", "content": value}])
                continue
            if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                               for m in value):
                last_user = max((i for i, m in enumerate(value) if m.get("role") == "user"), default=-1)
                if last_user >= 0:
                    prompts.append([{"role": m["role"], "content": m["content"]} for m in value[:last_user + 1]])
                    continue
            why = (f"not valid JSON ({err.msg})" if err is not None
                   else 'expected "prompt" or "messages" with a user turn')
            problems.append(f"{path}:{lineno}: {why}")
    if not prompts:
        raise HomegrownError(f"{path} holds no usable prompts ({len(problems)} bad lines)")
    return prompts, problems


def sample_answers(model_path: Path, prompts: list[Messages], samples: int, params: SamplingParams,
                   seed: int, progress: bool = True) -> list[list[tuple[int, str]]]:
    """`samples` (seed, answer) per prompt from the policy; answer k of prompt i is sampled with its own seed,
    and a prompt's answers are decoded as one batch (generate.sample_batch: about the cost of one)."""
    bundle = load_bundle(model_path)
    out = []
    with StepProgress("sample", len(prompts), enabled=progress) as bar:
        for i, prompt in enumerate(prompts):
            ids = bundle.chat_prompt_ids(prompt)
            room = bundle.config.max_seq_len - len(ids)
            answers = []
            if room >= 1:
                seeds = [seed * 1_000_003 + i * 1_009 + k for k in range(samples)]
                p = SamplingParams(min(params.max_tokens, room), params.temperature, params.top_k, params.top_p,
                                   stop_token_ids=bundle.stop_ids)
                rows = sample_batch(bundle.model, ids, seeds, p)
                answers = [(s, bundle.tokenizer.decode(row).strip()) for s, row in zip(seeds, rows, strict=True)]
            out.append(answers)
            bar.update(i + 1)
    return out


def build_pairs(model_path: Path, prompts_path: Path, out: Path, judge_url: str, judge_model: str, cfg: SynthConfig,
                samples: int = 2, sampling: SamplingParams | None = None, cache_path: Path | None = None,
                api_key: str | None = None, progress: bool = True) -> PairStats:
    """Write judged preference pairs to `out` (JSONL, TRL's format + provenance) and `out`.manifest.json."""
    if samples < 2:
        raise HomegrownError(f"--samples must be at least 2 to compare answers, got {samples}")
    if cfg.concurrency < 1:
        raise HomegrownError("--concurrency must be at least 1")
    price = price_for(judge_model)
    if cfg.max_cost_usd and price is None:
        raise HomegrownError(f"no list price known for {judge_model!r}, so a cost cap cannot be enforced; use "
                             "--max-tokens-budget instead")
    sampling = sampling or SamplingParams(max_tokens=128, temperature=1.0)
    sampling.validate()
    prompts, problems = read_prompts(prompts_path)
    stats = PairStats(prompts=len(prompts), problems=problems[:20])
    answers = sample_answers(model_path, prompts, samples, sampling, cfg.seed, progress)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = Cache(cache_path or out.with_name(out.name + ".cache.sqlite"))
    judge = Teacher(judge_url, judge_model, cfg, cache, Budget(cfg.max_tokens_budget, cfg.max_cost_usd, price),
                    api_key)
    rng = random.Random(cfg.seed)
    jobs = []  # (prompt index, answer a, answer b, a shown first?)
    for i, cands in enumerate(answers):
        distinct = {text for _, text in cands if text}
        if len(distinct) < 2:
            stats.no_distinct_answers += 1
            continue
        for a, b in itertools.combinations(range(len(cands)), 2):
            if cands[a][1] and cands[b][1] and cands[a][1] != cands[b][1]:
                jobs.append((i, a, b, rng.random() < 0.5))

    def compare(job: tuple[int, int, int, bool]) -> tuple[str, str | None]:
        """("ok", winner "a"/"b"/None) or ("budget"|"failed", None) for one comparison asked in both orders."""
        i, a, b, a_first = job
        x, y = answers[i][a][1], answers[i][b][1]
        orders = [(x, y, "a"), (y, x, "b")] if a_first else [(y, x, "b"), (x, y, "a")]
        winners = []
        try:
            for first, second, first_is in orders:
                _, verdict = judge.ask(judge_messages(prompts[i], first, second), parse_verdict)
                winners.append(None if verdict == "TIE" else first_is if verdict == "A" else
                               ("b" if first_is == "a" else "a"))
        except BudgetExhausted:
            return "budget", None
        except TeacherFailed as e:
            return "failed", str(e)
        return "ok", winners[0] if winners[0] is not None and winners[0] == winners[1] else None

    with ThreadPoolExecutor(cfg.concurrency) as pool:
        results = list(pool.map(compare, jobs))
    cache.close()
    stats.judge_requests, stats.judge_cache_hits = judge.stats.requests, judge.stats.cache_hits

    wins: dict[int, list[int]] = {}
    incomplete: set[int] = set()
    for (i, a, b, _), (status, winner) in zip(jobs, results, strict=True):
        stats.comparisons += 1
        if status != "ok":
            incomplete.add(i)
            stats.skipped_for_budget += status == "budget"
            stats.failed_comparisons += status == "failed"
            continue
        score = wins.setdefault(i, [0] * len(answers[i]))
        if winner is None:
            stats.ties_or_disagreements += 1
        else:
            score[a if winner == "a" else b] += 1
    date = datetime.now(UTC).isoformat(timespec="seconds")
    with atomic_open(out) as f:
        for i, score in sorted(wins.items()):
            if i in incomplete:
                continue
            best, worst = max(score), min(score)
            if best == worst or score.count(best) > 1 or score.count(worst) > 1:
                stats.no_clear_winner += 1
                continue
            chosen, rejected = answers[i][score.index(best)], answers[i][score.index(worst)]
            stats.pairs += 1
            f.write(json.dumps({"prompt": prompts[i], "chosen": chosen[1], "rejected": rejected[1],
                                "policy": str(model_path), "chosen_seed": chosen[0], "rejected_seed": rejected[0],
                                "samples": len(answers[i]), "wins": score, "judge_model": judge_model,
                                "judge_url": judge_url, "seed": cfg.seed, "date": date}, ensure_ascii=False) + "\n")
    write_json_atomic(out.with_name(out.name + ".manifest.json"),
                      {"format": "homegrown-pairs/1", "file": out.name, "policy": str(model_path),
                       "prompts_file": str(prompts_path), "judge_model": judge_model, "judge_url": judge_url,
                       "samples": samples, "sampling": asdict(sampling), "config": asdict(cfg), "date": date,
                       **asdict(stats)})
    if stats.skipped_for_budget:
        console.print(f"budget reached: {stats.skipped_for_budget} comparisons left for a re-run with a larger "
                      "budget (verdicts already received come from the cache for free)")
    return stats


def print_pair_stats(stats: PairStats, out: Path) -> None:
    console.print(f"{stats.pairs} pairs → {out} from {stats.prompts} prompts; {stats.comparisons} comparisons "
                  f"({stats.judge_requests} judge requests, {stats.judge_cache_hits} from cache); dropped: "
                  f"{stats.ties_or_disagreements} ties or order-dependent verdicts, {stats.no_clear_winner} prompts "
                  f"without a clear best and worst, {stats.no_distinct_answers} without two distinct answers, "
                  f"{stats.failed_comparisons} failed comparisons", highlight=False)
    for p in stats.problems[:10]:
        console.print(f"  skipped {p}", highlight=False, markup=False)
