"""Claim: ingest memory stays flat — peak RSS for 10× the input is under 1.5× the peak for 1×.

The 1× input is one WARC.gz of sample pages (benchmarks/ingest.py builds it); 4× and 10× are that many
copies of the file in one directory, so every stage sees 4× / 10× the bytes and documents (the copies
are duplicates, which is what a re-crawl looks like; dedup state grows only with distinct documents).
Each size runs `ingest` in a fresh child process with one worker, and the child reports its own peak
resident set size (getrusage ru_maxrss), so nothing of one run leaks into another.

    python benchmarks/ingest_memory.py               # 200 pages per copy
    python benchmarks/ingest_memory.py --docs 20     # quick check
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FACTORS = (1, 4, 10)
LIMIT = 1.5


def child(input_dir: Path, out: Path) -> None:
    """Run inside the child: ingest `input_dir`, print peak RSS (MiB), documents read and seconds as JSON."""
    from homegrown.data.ingest import SourceSpec, ingest

    t0 = time.perf_counter()
    stats = ingest([SourceSpec(path=input_dir, licence="mixed", glob="*.warc.gz", name="bench")], out,
                   progress=False)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"peak_mib": peak_mib, "read": stats.pages_read, "kept": stats.kept,
                      "seconds": time.perf_counter() - t0}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200, help="sample pages in the 1× WARC")
    parser.add_argument("--child", nargs=2, type=Path, metavar=("INPUT_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from ingest import build_warc

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one = root / "crawl.warc.gz"
        pages, nbytes = build_warc(one, args.docs)
        for factor in FACTORS:
            input_dir = root / f"x{factor}"
            input_dir.mkdir()
            for i in range(factor):
                shutil.copyfile(one, input_dir / f"copy{i:02d}.warc.gz")
            proc = subprocess.run([sys.executable, __file__, "--child", str(input_dir), str(root / f"out{factor}")],
                                  capture_output=True, text=True, check=True)
            results[factor] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"1× input: {pages} pages, {nbytes / 1e6:.1f} MB HTML in {one.name}")
    for factor, r in results.items():
        print(f"{factor:>3}×: peak RSS {r['peak_mib']:7.1f} MiB  documents read {r['read']:6d}  kept {r['kept']:5d}"
              f"  {r['seconds']:.1f} s")
    ratio = results[10]["peak_mib"] / results[1]["peak_mib"]
    print(f"peak RSS 10× / 1×: {ratio:.2f} (limit {LIMIT}) -> {'PASS' if ratio < LIMIT else 'FAIL'}")


if __name__ == "__main__":
    main()
