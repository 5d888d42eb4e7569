"""lm-eval-harness integration: our checkpoints as the `homegrown` model of `lm_eval`.

Importing this module registers the model class (lm-eval 0.4 discovers models only through its registry, not
through package entry points), so any harness task runs on a checkpoint with

    homegrown eval RUN --harness TASK [--include-path DIR]        (in-process lm_eval.simple_evaluate)
    python -c "import homegrown.eval.harness, lm_eval.__main__ as m; m.cli_evaluate()" \
        --model homegrown --model_args path=RUN --tasks TASK

Scoring goes through `LocalModel`, the same code `homegrown eval` uses, so both agree on a shared task.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from homegrown.bundle import load_bundle
from homegrown.errors import HomegrownError
from homegrown.eval.suite import ModelSpec
from homegrown.eval.tasks import LocalModel


@register_model("homegrown")
class HomegrownLM(TemplateLM):
    """`--model homegrown --model_args path=RUN_OR_CKPT[,batch_size=32][,max_gen_toks=64]`."""

    def __init__(self, path: str, batch_size: int | str = 32, max_gen_toks: int = 64, **_: object) -> None:
        super().__init__()
        bundle = load_bundle(Path(path))
        size = 32 if str(batch_size).startswith("auto") else int(batch_size)
        self.local = LocalModel(bundle, name=str(path), batch_size=size)
        self.max_gen_toks = int(max_gen_toks)
        self.max_length = bundle.config.max_seq_len

    @property
    def eot_token_id(self) -> int:
        return self.local.eot

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: object) -> list[int]:
        return self.local.encode(string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.local.tok.decode(list(tokens))

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: object
                              ) -> list[tuple[float, bool]]:
        """Every context starts after the model's text BOS (ours: <|endoftext|>), as in `LocalModel.encode_pair`;
        lm-eval already put end of text before an empty one."""
        prefix = self.local.prefix
        pairs = [(ctx if not prefix or ctx[:1] == prefix else [*prefix, *ctx], cont) for _, ctx, cont in requests]
        results = self.local.score_tokens(pairs)
        for (key, _, _), result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood in disjoint windows of the model's context (perplexity tasks)."""
        out = []
        for (text,) in (r.args for r in requests):
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(text), self.eot_token_id, self.max_length, 1)]
            out.append(sum(lp for lp, _ in self.local.score_tokens(windows)))
        return out

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        out = []
        for context, gen_kwargs in (r.args for r in requests):
            until = gen_kwargs.get("until") or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            text = self.local.generate([context], max_tokens, until)[0]
            # lm-eval's rule, not ours: a stop string cuts wherever it falls, leading whitespace included.
            out.append(text[:min((i for s in until if s and (i := text.find(s)) >= 0), default=len(text))])
        return out


def run_harness(checkpoint: Path, tasks: Sequence[str], include_path: Path | None = None,
                limit: int | None = None, num_fewshot: int | None = None, batch_size: int = 32) -> dict:
    """lm_eval.simple_evaluate on a checkpoint, in this process; returns lm-eval's `results` per task.

    With `include_path`, only tasks from that directory are indexed (no scan of lm-eval's thousands of
    built-in YAML files, and nothing is downloaded for them).
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path), include_defaults=False) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise HomegrownError(f"lm-eval knows no task {', '.join(unknown)}"
                             + ("" if include_path else "; pass --include-path DIR for your own YAML tasks"))
    out = lm_eval.simple_evaluate(model="homegrown", model_args={"path": str(checkpoint), "batch_size": batch_size},
                                  tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                                  log_samples=False)
    if out is None:
        raise HomegrownError("lm-eval returned no results")
    return json.loads(json.dumps(out["results"], default=str))


def harness_for_models(specs: Sequence[ModelSpec], tasks: Sequence[str], include_path: Path | None = None,
                       limit: int | None = None, out: Path | None = None) -> list[Path]:
    """`homegrown eval --harness`: lm-eval's results for each model, printed and written to
    `out` (default: the run's eval/) as harness-<checkpoint>.json."""
    from homegrown.eval.suite import default_eval_dir
    from homegrown.io import write_json_atomic
    from homegrown.progress import console

    written = []
    for spec in specs:
        results = run_harness(spec.checkpoint, tasks, include_path, limit)
        path = write_json_atomic((out or default_eval_dir(spec)) / f"harness-{spec.checkpoint.name}.json", results)
        console.print(json.dumps(results, indent=2))
        console.print(f"wrote {path}")
        written.append(path)
    return written
