"""A real DPO run on SmolLM2-135M-Instruct: judged pairs of its own answers, held-out reward accuracy and win rate.

The claim: the product's preference loop — `homegrown data pairs` (the policy samples answers, a judge compares
them in both orders), `homegrown dpo` (LoRA) — moves a real model, measured on prompts it never trained on.
Every step is the CLI a user runs:

1. SmolLM2-135M-Instruct imported from the cached GGUF (`homegrown import`, fp32).
2. Prompts: docqa questions cut from the bundled docs (data/sample; val pages first), each with the passage it
   was cut from; shuffled with `--seed` and split by prompt into train and held-out.
3. The judge: benchmarks/f1_judge.py, a separate process behind an OpenAI-compatible endpoint that prefers the
   reply with the higher token F1 against the question's doc passage (no model stronger than the policy exists
   offline; see its docstring). `homegrown data pairs` samples `--samples` answers per prompt from the policy
   (seeded), asks every comparison in both orders with a randomised first position, and drops ties.
4. `homegrown dpo` on the train prompts' pairs with the held-out prompts' pairs as `--val`: held-out reward
   accuracy (DPO's implicit reward β·log π/π_ref, chosen > rejected) before (every reward is 0: chance, 0.5)
   and after.
5. Win rate: the DPO model and its starting point each answer every held-out prompt `--eval-samples` times with
   the same seeds; the judge compares each pair of answers in both orders; wins / (wins + losses), identical
   answers and split or tied verdicts dropped, with a Wilson 95% interval. Also each model's mean token F1
   against the references (what the judge ranks by).
6. With `--report`: `homegrown report` of both models side by side (held-out bits/byte, task suite).

Work that does not wait on the step before it runs beside it, as a second nice'd one-thread process: the start
model's `homegrown eval` (for the report) while the pairs are sampled, its win-rate answers while `homegrown dpo`
trains, and the DPO model's eval while the DPO model samples its own; `homegrown report` then reuses both evals.

    nice -n 10 python benchmarks/dpo_real.py                 # the first, 120 + 50-prompt run (the defaults)
    nice -n 10 python benchmarks/dpo_real.py --work runs/dpo_real_big --train-prompts 280 --held-prompts 120 \
        --epochs 4 --report --report-items 20 --report-val-pages 6   # the pre-registered run (~57 min, RESULTS.md)
    python benchmarks/dpo_real.py --quick                    # smoke test: 6+4 prompts, 2 steps
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import gzip
import itertools
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import openai
import torch
from dpo_trl import GGUF, import_once
from safetensors.torch import load_file

from homegrown.config import resolve_preset
from homegrown.data.sources import iter_corpus
from homegrown.eval.tasks import token_f1
from homegrown.generate import SamplingParams
from homegrown.layout import SAMPLE_DIR
from homegrown.posttrain.docqa import build_docqa
from homegrown.posttrain.judge import judge_messages, parse_verdict, sample_answers
from homegrown.train.checkpoint import resolve_checkpoint

HERE = Path(__file__).resolve().parent
T = TypeVar("T")


def cli_start(*args: str) -> subprocess.Popen:
    """One `homegrown` command, as a user runs it (same interpreter, same sources), started and not waited for."""
    cmd = [sys.executable, "-m", "homegrown", *args]
    print("$ homegrown " + " ".join(args), flush=True)
    return subprocess.Popen(cmd, env={**os.environ, "OPENAI_API_KEY": "unused-by-the-local-judge",
                                      "OMP_NUM_THREADS": str(torch.get_num_threads())})


def finish(proc: subprocess.Popen) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"`{' '.join(map(str, proc.args[2:]))}` failed with exit code {proc.returncode}")


def cli(*args: str) -> None:
    """One `homegrown` command, run to its end."""
    finish(cli_start(*args))


def docqa_prompts(work: Path, n_train: int, n_held: int, seed: int, open_book: int = 0) -> tuple[Path, Path, Path]:
    """Train and held-out prompt files (single-turn docqa questions, no system prompt) and {prompt: passage}.

    `open_book` > 0 puts the documentation in the prompt: the question's own passage and `open_book` other
    passages of the same page (topped up from other pages when the page has too few), in a seeded order, so the
    judge's preference — agreement with the right passage — is a skill that carries to pages DPO never saw
    (read the right passage, answer from it) rather than facts about the training pages.
    """
    chats = build_docqa(SAMPLE_DIR, work / "docqa", resolve_preset("small", None, [], "small").sft)
    refs: dict[str, str] = {}
    page: dict[str, str] = {}
    for split in ("val", "train"):
        for line in (chats / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            turns = [m for m in record["messages"] if m["role"] != "system"]
            if len(turns) == 2 and turns[0]["content"] not in refs:
                refs[turns[0]["content"]] = turns[1]["content"]
                page[turns[0]["content"]] = record.get("source") or ""
            if len(refs) >= 4 * (n_train + n_held):
                break
    questions = sorted(refs)
    rng = random.Random(seed)
    rng.shuffle(questions)
    if len(questions) < n_train + n_held:
        raise SystemExit(f"only {len(questions)} docqa questions, {n_train + n_held} asked for")
    train, held = questions[:n_train], questions[n_train:n_train + n_held]
    prompts = {q: q for q in questions}
    if open_book:
        passages = sorted(set(refs.values()))
        by_page: dict[str, set[str]] = {}
        for q, passage in refs.items():
            by_page.setdefault(page[q], set()).add(passage)
        for q in train + held:
            same_page = sorted(by_page[page[q]] - {refs[q]})
            others = rng.sample(same_page, min(open_book, len(same_page)))
            others += rng.sample([p for p in passages if p != refs[q] and p not in others], open_book - len(others))
            shown = [refs[q], *others]
            rng.shuffle(shown)
            prompts[q] = ("Answer the question from the documentation below.\n\n" + "\n\n".join(shown)
                          + f"\n\nQuestion: {q}")
    out = []
    for name, qs in (("prompts_train.jsonl", train), ("prompts_held.jsonl", held)):
        (work / name).write_text("".join(json.dumps({"prompt": prompts[q]}) + "\n" for q in qs))
        out.append(work / name)
    (work / "references.json").write_text(json.dumps({prompts[q]: refs[q] for q in train + held}, indent=1))
    return out[0], out[1], work / "references.json"


def first_pages(out: Path, n: int) -> Path:
    """A corpus folder holding the first `n` pages of the bundled val split (for `--corpus`)."""
    out.mkdir(parents=True, exist_ok=True)
    pages = itertools.islice(iter_corpus(SAMPLE_DIR, "val"), n)
    text = "".join(json.dumps(page, ensure_ascii=False) + "\n" for page in pages)
    with gzip.GzipFile(out / "val.jsonl.gz", "wb", mtime=0) as f:  # same bytes every time: evals stay cached
        f.write(text.encode())
    return out


def start_judge(refs: Path, log: Path, tie_margin: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(HERE / "f1_judge.py"), "--references", str(refs), "--port",
                             str(port), "--log", str(log), "--tie-margin", str(tie_margin)])
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the judge did not start")


def wilson(wins: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def read_prompts(prompts_file: Path) -> list[list[dict]]:
    return [[{"role": "user", "content": json.loads(line)["prompt"]}] for line in prompts_file.read_text().splitlines()]


def win_rate(prompts: list[list[dict]], ours: list[list[tuple[int, str]]], base: list[list[tuple[int, str]]],
             refs: dict[str, str], url: str, seed: int) -> dict:
    """The tuned model's answers (`ours`) against the start's (`base`), sampled for the same prompts with the same
    seeds, each pair judged in both orders."""
    client = openai.OpenAI(base_url=url, api_key="unused")
    rng = random.Random(seed)
    counts = {"wins": 0, "losses": 0, "identical": 0, "ties": 0, "order_disagreements": 0}
    f1_tuned, f1_start, examples = [], [], []
    for prompt, t_answers, s_answers in zip(prompts, ours, base, strict=True):
        ref = refs[prompt[0]["content"]]
        for (_, t), (_, s) in zip(t_answers, s_answers, strict=True):
            f1_tuned.append(token_f1(t, ref))
            f1_start.append(token_f1(s, ref))
            if t == s:
                counts["identical"] += 1
                continue
            tuned_first = rng.random() < 0.5
            verdicts = []
            for first_is_tuned in (tuned_first, not tuned_first):
                first, second = (t, s) if first_is_tuned else (s, t)
                reply = client.chat.completions.create(model="token-f1-reference", temperature=0.0, max_tokens=4,
                                                       messages=judge_messages(prompt, first, second))
                word = parse_verdict(reply.choices[0].message.content or "")
                verdicts.append(None if word == "TIE" else (word == "A") == first_is_tuned)
            if verdicts[0] is None and verdicts[1] is None:
                counts["ties"] += 1
            elif verdicts[0] != verdicts[1]:
                counts["order_disagreements"] += 1
            else:
                counts["wins" if verdicts[0] else "losses"] += 1
            if len(examples) < 3:
                examples.append({"prompt": prompt[0]["content"], "dpo": t, "start": s, "dpo_wins": verdicts[0]})
    decided = counts["wins"] + counts["losses"]
    low, high = wilson(counts["wins"], decided)
    return {**counts, "comparisons": len(f1_tuned), "decided": decided,
            "win_rate": counts["wins"] / decided if decided else None, "wilson95": [low, high],
            "mean_f1_dpo": sum(f1_tuned) / len(f1_tuned), "mean_f1_start": sum(f1_start) / len(f1_start),
            "examples": examples}


def timed(fn: Callable[..., T], *args: object, **kwargs: object) -> tuple[T, float]:
    """fn's result and its wall time in seconds."""
    t0 = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=GGUF)
    ap.add_argument("--work", type=Path, default=Path("runs/dpo_real"))
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny sizes everywhere")
    ap.add_argument("--train-prompts", type=int, default=120)
    ap.add_argument("--held-prompts", type=int, default=50)
    ap.add_argument("--open-book", type=int, default=0, metavar="K",
                    help="put the question's doc passage and K other passages of its page in the prompt (0: closed "
                         "book, the question alone)")
    ap.add_argument("--samples", type=int, default=2,
                    help="answers per prompt for the pairs (more: the unique best vs the unique worst)")
    ap.add_argument("--max-tokens", type=int, default=24, help="longest sampled answer")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--tie-margin", type=float, default=0.05, help="judge: F1 difference that counts as a tie")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lora-rank", type=int, default=32, help="0 = full fine-tuning")
    ap.add_argument("--lora-alpha", type=float, default=32)
    ap.add_argument("--eval-every", type=int, default=0, help="held-out reward accuracy every N steps (0: at the "
                    "end only; each costs a forward pass over the held-out pairs)")
    ap.add_argument("--eval-samples", type=int, default=4, help="answers per held-out prompt for the win rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, here and in every `homegrown` process")
    ap.add_argument("--report", action="store_true", help="also `homegrown report` both models side by side")
    ap.add_argument("--report-items", type=int, default=20, help="--max-items for the report's tasks")
    ap.add_argument("--report-val-pages", type=int, default=0,
                    help="held-out bits/byte on only the first N pages of the bundled val split (0: all 20 pages, "
                         "~0.5 MB: over an hour per model at SmolLM2's 8K context on a shared core)")
    args = ap.parse_args()
    # On a CPU shared with other jobs, two OpenMP threads spin at every barrier while one is descheduled: a
    # 4-row decode step took 5.8× the wall time and 6.9× the CPU time of one thread (2 cores, load ~7).
    torch.set_num_threads(args.threads)
    if args.quick:
        args.train_prompts, args.held_prompts, args.samples, args.max_tokens = 6, 4, 2, 16
        args.epochs, args.batch, args.eval_samples, args.report_items, args.eval_every = 1.0, 2, 1, 2, 1
        args.report_val_pages = 1
        args.work = args.work.with_name(args.work.name + "_quick")

    args.work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    imported, start = import_once(args.gguf, args.work)
    train_prompts, held_prompts, refs_path = docqa_prompts(args.work, args.train_prompts, args.held_prompts,
                                                           args.seed, args.open_book)
    refs = json.loads(refs_path.read_text())
    times["import_and_prompts_s"] = time.perf_counter() - t0
    report_args = ["--max-items", str(args.report_items)]
    if args.report_val_pages:
        report_args += ["--corpus", str(first_pages(args.work / "report_corpus", args.report_val_pages))]
    evals = {"start": cli_start("eval", str(imported), *report_args)} if args.report else {}
    eval_t0 = time.perf_counter()
    atexit.register(lambda: [p.kill() for p in evals.values() if p.poll() is None])  # none outlives a failed run

    judge, url = start_judge(refs_path, args.work / "judge_log.jsonl", args.tie_margin)
    try:
        pairs = {}
        for name, prompts in (("train", train_prompts), ("held", held_prompts)):
            t0 = time.perf_counter()
            pairs[name] = args.work / f"pairs_{name}.jsonl"
            if pairs[name].with_name(pairs[name].name + ".manifest.json").exists():
                print(f"reusing {pairs[name]} (delete it and its manifest to sample again)", flush=True)
                continue
            cli("data", "pairs", str(start), "--prompts", str(prompts), "--judge-url", url,
                "--judge-model", "token-f1-reference", "--out", str(pairs[name]), "--samples", str(args.samples),
                "--max-tokens", str(args.max_tokens), "--temperature", str(args.temperature),
                "--seed", str(args.seed + (name == "held")), "--concurrency", "4", "--no-progress")
            times[f"pairs_{name}_s"] = time.perf_counter() - t0
        manifests = {name: json.loads(p.with_name(p.name + ".manifest.json").read_text()) for name, p in pairs.items()}
        n_pairs = {name: sum(1 for _ in p.open()) for name, p in pairs.items()}
        steps = max(1, math.ceil(args.epochs * n_pairs["train"] / args.batch))

        run = args.work / f"dpo_r{args.lora_rank}_lr{args.lr:g}_b{args.beta:g}"
        held = read_prompts(held_prompts)
        sampling = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
        eval_seed = args.seed + 1000
        t0 = time.perf_counter()
        dpo = cli_start(
            "dpo", str(start), "--data", str(pairs["train"]), "--val", str(pairs["held"]), "--out", str(run),
            "--beta", str(args.beta), "--lora-rank", str(args.lora_rank), "--lora-alpha", str(args.lora_alpha),
            "--set", "train.dtype=fp32", "--set", f"dpo.max_steps={steps}", "--set", f"dpo.batch_size={args.batch}",
            "--set", f"dpo.lr={args.lr}", "--set", f"dpo.eval_every={args.eval_every or steps}",
            "--set", f"dpo.ckpt_every={steps}", "--set", f"dpo.warmup_steps={max(1, steps // 10)}",
            "--set", f"dpo.eval_batches={math.ceil(n_pairs['held'] / args.batch)}")
        # The start model's win-rate answers do not depend on the DPO model: sampled while it trains.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            base_job = pool.submit(timed, sample_answers, start, held, args.eval_samples, sampling, eval_seed,
                                   progress=False)
            finish(dpo)
            times["dpo_s"] = time.perf_counter() - t0
            base, times["win_rate_start_samples_s"] = base_job.result()
        metrics = [json.loads(line) for line in (run / "metrics_dpo.jsonl").read_text().splitlines()]
        curve = [{"step": m["step"], "val_reward_accuracy": m["val_rewards/accuracies"],
                  "val_reward_margin": m["val_rewards/margins"], "val_loss": m["val_loss"]}
                 for m in metrics if "val_rewards/accuracies" in m]
        tuned = resolve_checkpoint(run / "dpo" / "ckpt")
        if args.report:
            evals["dpo"] = cli_start("eval", str(run), *report_args)
        # The start model's own log-probs (the stored reference): how often it already rates the judge's chosen
        # answer likelier than the rejected one — a baseline that, unlike the implicit reward, is not 0 by design.
        held_ref = load_file(str(run / "dpo" / "reference.safetensors"))["val"]
        start_agreement = float((held_ref[:, 0] > held_ref[:, 1]).float().mean())

        t0 = time.perf_counter()
        ours = sample_answers(tuned, held, args.eval_samples, sampling, eval_seed, progress=False)
        wins = win_rate(held, ours, base, refs, url, eval_seed)
        times["win_rate_dpo_samples_and_judging_s"] = time.perf_counter() - t0
    finally:
        judge.terminate()
        judge.wait()

    verdicts = [json.loads(line) for line in (args.work / "judge_log.jsonl").read_text().splitlines()]
    summary = {
        "model": args.gguf.name, "policy": str(start), "dpo_checkpoint": str(tuned),
        "judge": "benchmarks/f1_judge.py: token F1 against the question's doc passage, separate process, "
                 f"OpenAI-compatible; tie when |ΔF1| < {args.tie_margin}",
        "settings": {k: v for k, v in vars(args).items() if k not in ("gguf", "work", "report")} | {"steps": steps},
        "prompts": {"train": args.train_prompts, "held_out": args.held_prompts},
        "pairs": {name: {"pairs": n_pairs[name], "comparisons": m["comparisons"],
                         "ties_or_disagreements": m["ties_or_disagreements"],
                         "no_clear_winner": m["no_clear_winner"], "no_distinct_answers": m["no_distinct_answers"]}
                  for name, m in manifests.items()},
        "judge_requests": len(verdicts), "judge_tie_rate": sum(v["verdict"] == "TIE" for v in verdicts) / len(verdicts),
        "held_out_reward_accuracy_before": "0.5: policy = reference, so every implicit reward is 0 (a tie; TRL's "
                                           "strict chosen > rejected counts 0)",
        "held_out_start_logp_agreement": start_agreement,
        "held_out_reward_accuracy_after": curve[-1]["val_reward_accuracy"] if curve else None,
        "held_out_curve": curve, "win_rate": wins,
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    if args.report:
        t0 = time.perf_counter()
        for proc in evals.values():  # the report reuses these evals (same weights, tasks and text)
            finish(proc)
        summary["seconds"]["report_evals_s"] = round(time.perf_counter() - eval_t0, 1)
        cli("report", str(imported), str(run), "--out", str(args.work / "report"), *report_args)
        summary["seconds"]["report_s"] = round(time.perf_counter() - t0, 1)
        summary["report"] = str(args.work / "report" / "report.md")
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(json.dumps(summary, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
