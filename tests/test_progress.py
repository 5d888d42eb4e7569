"""Off a terminal, CLI output is one record per line whatever the terminal width or path length says."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = """
from homegrown.progress import StepProgress, console
console.print("saved /" + "deep/" * 60 + "step_3  val loss 6.043", highlight=False)
with StepProgress("pretrain", total=2, plain_every=0.0) as bar:
    bar.update(2, loss=1.25, path="/" + "p" * 300)
"""


def test_long_records_are_not_wrapped_off_a_terminal() -> None:
    env = {**os.environ, "COLUMNS": "40", "LINES": "10"}
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=120,
                          check=True)
    lines = done.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("saved /deep/") and lines[0].endswith("step_3  val loss 6.043")
    assert lines[1].startswith("pretrain 2/2") and lines[1].endswith("p" * 300)
