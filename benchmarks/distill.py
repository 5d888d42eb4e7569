"""Distillation vs plain training of the same student, at equal steps and data.

A bigger teacher is trained briefly on the run's shards (or given with --teacher). Then the student preset is
trained twice from the same initialisation on exactly the same batches (the loop seeds each step's sampler
from (seed, step)): once on the hard labels alone, once with α·T²·KL(teacher ‖ student) + (1−α)·CE. Both
are scored by plain held-out loss on the run's val shards, so the difference is the teacher's.

    python benchmarks/distill.py runs/small --preset small --steps 300 --teacher-steps 720
    python benchmarks/distill.py runs/tiny --preset tiny --steps 40 --teacher-steps 80   # smoke test
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from homegrown.config import DistillConfig, apply_overrides, get_preset
from homegrown.posttrain.distill import distill
from homegrown.train.loop import train


def _schedule(steps: int) -> list[str]:
    return [f"train.max_steps={steps}", f"train.eval_every={steps}", f"train.ckpt_every={steps}",
            f"train.warmup_steps={max(1, steps // 20)}", "train.eval_batches=16"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="run directory; corpus, tokenizer and shards are built if missing")
    ap.add_argument("--preset", default="small", help="the student's preset")
    ap.add_argument("--steps", type=int, default=300, help="student steps (both students)")
    ap.add_argument("--teacher", type=Path, help="teacher checkpoint with the run's tokenizer (else one is trained)")
    ap.add_argument("--teacher-steps", type=int, default=720)
    ap.add_argument("--teacher-scale", type=int, default=2, help="teacher d_model and n_layers = student's × this")
    ap.add_argument("--teacher-lr", type=float, help="default: the student's lr / teacher-scale (wider nets need less)")
    ap.add_argument("--teacher-dir", type=Path, help="train the teacher here and keep it (reused when present)")
    ap.add_argument("--alpha", type=float, default=DistillConfig.alpha)
    ap.add_argument("--temperature", type=float, default=DistillConfig.temperature)
    ap.add_argument("--set", action="append", default=[], help="override for every model, e.g. train.threads=2")
    args = ap.parse_args()

    student = apply_overrides(get_preset(args.preset), [*args.set, *_schedule(args.steps)])
    run = args.run_dir
    tok, shards = run / "tokenizer.json", run / "shards"
    if not (shards / "index.json").exists():  # the data stages need the ingest stack; a ready run dir does not
        from homegrown.pipeline import prepare_corpus, prepare_shards, prepare_tokenizer

        run.mkdir(parents=True, exist_ok=True)
        corpus = prepare_corpus(student.data, run / "corpus")
        tok = prepare_tokenizer(corpus, student.model.vocab_size, tok)
        shards = prepare_shards(corpus, tok, shards)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher_ckpt = args.teacher
        if teacher_ckpt is None:
            m = student.model
            teacher_lr = args.teacher_lr or student.train.lr / args.teacher_scale
            teacher = apply_overrides(get_preset(args.preset), [
                *args.set, *_schedule(args.teacher_steps), f"model.d_model={m.d_model * args.teacher_scale}",
                f"model.n_layers={m.n_layers * args.teacher_scale}", f"train.lr={teacher_lr}"])
            t0 = time.perf_counter()
            result = train(teacher.model, teacher.train, shards, args.teacher_dir or tmp / "teacher", tok,
                           progress=False)
            teacher_ckpt = result.final_checkpoint
            print(f"teacher  {args.teacher_steps} steps: val loss {result.final_val_loss:.4f}  "
                  f"bpb {result.final_val_bpb:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)

        results = {}
        for name in ("plain", "distilled"):
            student_run = tmp / name
            student_run.mkdir()
            (student_run / "tokenizer.json").symlink_to(tok.resolve())
            (student_run / "shards").symlink_to(shards.resolve())
            t0 = time.perf_counter()
            if name == "plain":
                r = train(student.model, student.train, shards, student_run, tok, progress=False)
            else:
                r = distill(student_run, teacher_ckpt, student, DistillConfig(args.alpha, args.temperature),
                            progress=False)
            results[name] = r
            print(f"{name:9s} {args.steps} steps: val loss {r.final_val_loss:.4f}  bpb {r.final_val_bpb:.4f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    plain, dist = results["plain"], results["distilled"]
    print(f"distilled/plain held-out loss: {dist.final_val_loss / plain.final_val_loss:.3f} "
          f"(α={args.alpha}, T={args.temperature}; below 1 means the teacher helped)")


if __name__ == "__main__":
    main()
