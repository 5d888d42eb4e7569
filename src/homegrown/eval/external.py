"""Score the same tasks against any OpenAI-compatible endpoint, so the card puts the rented model next to ours.

Two ways in, through the official `openai` client:
- `completions`: the legacy /v1/completions with `echo=True, logprobs=1` returns the prompt's
  token log-probabilities, so multiple choice is scored by log-likelihood exactly as for our checkpoints.
  vLLM, llama.cpp's server and `homegrown serve` style servers offer it; current OpenAI chat models do not.
- `chat`: /v1/chat/completions with greedy decoding; generation tasks are asked as chat turns and multiple
  choice as a lettered question, which the report marks, because it is a different (easier) test.
`auto` (the default) probes echo+logprobs once and picks `completions` when it works.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from urllib.parse import urlparse

from homegrown.errors import HomegrownError
from homegrown.eval.tasks import Prompt, Task, cut_at_stop, evaluate_task
from homegrown.progress import console

MODES = ("auto", "completions", "chat")


class EndpointModel:
    """A `ScoringModel` backed by an OpenAI-compatible HTTP endpoint."""

    def __init__(self, base_url: str, model: str, api_key: str = "", mode: str = "auto", batch: int = 16,
                 timeout: float = 120.0) -> None:
        import openai

        if mode not in MODES:
            raise HomegrownError(f"endpoint mode {mode!r} is not one of {', '.join(MODES)}")
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout,
                                    max_retries=2)
        self.model, self.batch = model, batch
        self.name = f"{model} @ {urlparse(base_url).netloc or base_url}"
        self._openai = openai
        self.mode = self._probe() if mode == "auto" else mode
        self.supports_loglikelihood = self.mode == "completions"
        self.chat = self.mode == "chat"

    def _call(self, fn, **kwargs):
        try:
            return fn(model=self.model, **kwargs)
        except self._openai.APIConnectionError as e:
            raise HomegrownError(f"cannot reach {self.client.base_url} ({e}); is the server running?") from e
        except self._openai.APIStatusError as e:
            raise HomegrownError(f"{self.client.base_url} answered {e.status_code}: {e.message}") from e

    def _probe(self) -> str:
        try:
            out = self.client.completions.create(model=self.model, prompt="Hello world", max_tokens=1, echo=True,
                                                 logprobs=1, temperature=0)
            logprobs = out.choices[0].logprobs
            # Log-probs for the generated token alone (OpenAI's chat-era models) do not score a prompt.
            if logprobs and logprobs.token_logprobs and any(o < len("Hello world") for o in logprobs.text_offset or []):
                return "completions"
        except self._openai.APIConnectionError as e:
            raise HomegrownError(f"cannot reach {self.client.base_url} ({e}); is the server running?") from e
        except self._openai.APIError:
            pass
        return "chat"

    def loglikelihoods(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Sum of the echoed log-probs of the prompt tokens that start inside the continuation (offsets are in
        characters). One token is generated and ignored, as lm-eval's local-completions does: some servers
        refuse max_tokens=0."""
        out: list[tuple[float, bool]] = []
        for start in range(0, len(requests), self.batch):
            chunk = requests[start:start + self.batch]
            resp = self._call(self.client.completions.create, prompt=[c + x for c, x in chunk], max_tokens=1,
                              echo=True, logprobs=1, temperature=0)
            choices = sorted(resp.choices, key=lambda c: c.index)
            for (context, continuation), choice in zip(chunk, choices, strict=True):
                lp = choice.logprobs
                end = len(context) + len(continuation)
                # lm-eval's rule, as LocalModel.encode_pair: a context's trailing spaces belong to the continuation
                start = len(context.rstrip())
                picked = [i for i, off in enumerate(lp.text_offset) if start <= off < end]
                total = sum(lp.token_logprobs[i] or 0.0 for i in picked)
                greedy = bool(lp.top_logprobs) and all(
                    lp.top_logprobs[i] and max(lp.top_logprobs[i].values()) <= lp.token_logprobs[i] + 1e-6
                    for i in picked)
                out.append((total, greedy))
        return out

    def generate(self, prompts: Sequence[Prompt], max_tokens: int, stop: Sequence[str]) -> list[str]:
        """Greedy replies cut by `cut_at_stop`, as for our checkpoints. A server cuts at a stop string wherever it
        falls, so only stop strings that cannot match inside the reply's leading whitespace are sent to it; the
        rest are applied here."""
        server_stop = [s for s in stop if s and not s[0].isspace()] or None
        replies = []
        for prompt in prompts:
            if isinstance(prompt, str):
                resp = self._call(self.client.completions.create, prompt=prompt, max_tokens=max_tokens,
                                  temperature=0, stop=server_stop)
                replies.append(cut_at_stop(resp.choices[0].text or "", stop))
            else:
                resp = self._call(self.client.chat.completions.create, messages=prompt, max_tokens=max_tokens,
                                  temperature=0, stop=server_stop)
                replies.append(cut_at_stop(resp.choices[0].message.content or "", stop).strip())
        return replies


def evaluate_endpoint(base_url: str, model: str, tasks: list[Task], api_key: str = "", mode: str = "auto") -> dict:
    """The external model's card entry: task scores only (its size, data and bits/byte are not ours to see)."""
    t0 = time.perf_counter()
    lm = EndpointModel(base_url, model, api_key, mode)
    console.print(f"eval: {lm.name} through /v1/{'completions' if lm.mode == 'completions' else 'chat/completions'}")
    results = {}
    for task in tasks:
        r = evaluate_task(task, lm)
        results[task.name] = asdict(r)
        console.print(f"  {task.name:<18} {r.metric} {r.score:.3f}  (chance {r.chance:.3f}, n={r.n}, {r.mode})")
    return {"name": lm.name, "stage": f"external ({lm.mode})", "checkpoint": base_url, "params": None,
            "tokens_trained": None, "context": None, "val": None, "tasks": results, "metrics_file": None,
            "seconds": time.perf_counter() - t0}
