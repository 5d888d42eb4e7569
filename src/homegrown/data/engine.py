"""The distributed engine every data stage runs on: Ray tasks (README, "Ingest at scale", says why Ray).

A stage is a list of independent tasks, each a plain function that reads files and writes its output
atomically (homegrown.io), then a small marker; the driver only submits tasks and collects their small
return values. So:

* a worker killed mid-task loses nothing: Ray runs the task again (`max_retries`) and the rerun rewrites
  the same output under a temporary name — no output is half-written or written twice;
* a driver killed mid-stage loses nothing either: a re-run skips every task whose marker exists;
* results never depend on how many workers ran or in which order tasks finished: tasks return in the
  order they were listed and each task's output depends on its inputs only.

`workers` caps the tasks in flight for this job, so a shared cluster (or the test session's one local
Ray) is not flooded. Locally, `ray.init` starts a private Ray with `workers` CPUs; `address` (or
RAY_ADDRESS) joins an existing cluster, e.g. one started on SLURM nodes (scripts/slurm/ray_ingest.sbatch).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from homegrown.errors import HomegrownError
from homegrown.progress import StepProgress

log = logging.getLogger(__name__)

MAX_RETRIES = 3
"""Times Ray re-runs a task whose worker process died (killed, out of memory, node lost)."""
OBJECT_STORE_BYTES = 100 * 1024 * 1024
"""Tasks exchange files, not objects, so a local Ray needs only a small object store (Ray's minimum is 75 MiB)."""


_PENDING: dict[str, Any] | None = None
"""ray.init arguments of the outermost `connect` while it has not started Ray (Ray starts on the first task)."""


@contextlib.contextmanager
def connect(workers: int, address: str = "") -> Iterator[None]:
    """Use the Ray already initialised in this process, else join `address`, else start a local Ray.

    Ray is started lazily, by the first `run_tasks` inside the block, so a command that fails on its input
    fails before paying Ray's start-up. A Ray this block started is shut down on exit; one that was running
    before is left running; nested blocks share the outer one's.
    """
    global _PENDING
    import ray

    if workers < 1:
        raise HomegrownError(f"workers must be at least 1, got {workers}")
    if ray.is_initialized() or _PENDING is not None:
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=workers, object_store_memory=OBJECT_STORE_BYTES)
    _PENDING = kwargs
    try:
        yield
    finally:
        _PENDING = None
        if ray.is_initialized():
            ray.shutdown()


def _start() -> None:
    """Start the Ray `connect` prepared, unless one is running."""
    import ray

    if ray.is_initialized():
        return
    kwargs = _PENDING or {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = kwargs.get("address", "local")
        raise HomegrownError(f"cannot start or reach Ray ({where}): {err}; check --ray-address "
                             "(ray://HOST:10001 or HOST:6379) or leave it empty for a local Ray; a cluster "
                             "started with RAY_AUTH_MODE=token also needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN "
                             "(or RAY_AUTH_TOKEN_PATH) in this command's environment") from err


def run_tasks(fn: Callable[..., Any], calls: Sequence[tuple], workers: int, label: str,
              progress: bool = True) -> list[Any]:
    """Run `fn(*call)` for every call as Ray tasks, at most `workers` at once; results in `calls` order.

    A task whose worker dies is retried by Ray up to MAX_RETRIES times; an exception raised by `fn`
    itself is not retried (it would fail again) and is re-raised here as it was (a HomegrownError stays
    one).
    """
    import ray

    if not calls:
        return []
    _start()
    remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(fn)
    results: list[Any] = [None] * len(calls)
    pending: dict[Any, int] = {}
    nxt = done = 0
    with StepProgress(label, total=len(calls), enabled=progress) as bar:
        while done < len(calls):
            while nxt < len(calls) and len(pending) < workers:
                pending[remote.remote(*calls[nxt])] = nxt
                nxt += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                try:
                    results[pending.pop(ref)] = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    if isinstance(err.cause, HomegrownError):
                        raise err.cause from None
                    raise
                done += 1
                bar.update(done)
    return results
