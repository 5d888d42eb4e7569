"""Progress for long stages: a rich bar with ETA on a terminal, plain periodic lines in CI logs.

Both show the same fields (step, ETA, tokens/s, loss), so a log from CI reads like the terminal did.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())
"""Everything the CLI says goes here. Off a terminal (a log file, CI, a pipe) lines are never wrapped, whatever
COLUMNS says: one record per line, so a long path cannot split a record that someone greps for."""


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StepProgress:
    """Context manager: `update(done, **fields)` after each unit of work; fields are shown after the bar."""

    def __init__(self, description: str, total: int, start: int = 0, plain_every: float = 10.0,
                 enabled: bool = True) -> None:
        self.description, self.total, self.start = description, total, start
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.plain_every = plain_every
        self._last_plain = 0.0
        self._t0 = time.perf_counter()
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> StepProgress:
        if self.enabled and self.tty:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, completed=self.start, info="")
        return self

    def set_total(self, total: int) -> None:
        """A total learned after the start (a wall-clock budget fixes its step count after a few steps)."""
        self.total = total
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def update(self, done: int, **fields: float | str) -> None:
        info = "  ".join(f"{k} {v:,.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        if self._progress is not None:
            self._progress.update(self._task, completed=done, info=info)
            return
        now = time.perf_counter()
        if not self.enabled or (now - self._last_plain < self.plain_every and done < self.total):
            return
        self._last_plain = now
        rate = (done - self.start) / max(now - self._t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        console.print(f"{self.description} {done}/{self.total}  ETA {_fmt_eta(eta)}  {info}", highlight=False)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
