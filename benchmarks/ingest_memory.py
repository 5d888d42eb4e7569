"""Claim: ingest memory per process stays flat in the crawl size — the largest process's peak RSS at 10× the
input is within 1.5× of its peak at 1× — on DISTINCT documents, where dedup state really grows.

The input is generated: every page draws its words from its own slice of a large vocabulary mixed with
common words, so no two pages share a 5-gram by construction, and 10 % of the pages get a near copy (a few
words changed) and 3 % an exact copy, spread over the crawl. The 1× crawl is `--docs` pages in JSONL files
of `--per-file` pages; 4× and 10× add more distinct pages in more files (never copies of the 1× files),
and the corpus gets one shard (= dedup partition) per input file, so a partition's size is constant, as on
a cluster where the partition count follows the crawl.

Each size runs `ingest` in a fresh child process with 2 workers on a private local Ray. The child samples
the resident set size of itself and of every process below it (Ray's workers and daemons) every 0.1 s
with psutil and reports the largest driver and the largest worker; the driver's own peak is also read from
getrusage. `--src DIR` runs another checkout's sources (e.g. `--src /path/to/old/src` for the
single-process merge of before issue 18, whose dedup state lives in the driver).

    python benchmarks/ingest_memory.py                      # 3000 pages at 1× (30,000 at 10×)
    python benchmarks/ingest_memory.py --docs 400           # quick check
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FACTORS = (1, 4, 10)
LIMIT = 1.5
COMMON = ["the", "a", "of", "to", "and", "in", "is", "for", "with", "on", "that", "by", "this", "as", "are"]


def page_words(index: int, rng: random.Random, length: int = 260) -> list[str]:
    """Words of page `index`: its own 400-word vocabulary slice plus common words; no 5-gram is shared."""
    own = [f"t{index}x{k}" for k in range(400)]
    return [rng.choice(own) if i % 3 else rng.choice(COMMON) for i in range(length)]


def write_crawl(root: Path, first: int, count: int, per_file: int, seed: int) -> int:
    """JSONL.gz files of pages first..first+count with 10 % near and 3 % exact copies; returns pages written."""
    rng = random.Random(seed)
    pages: list[tuple[str, str]] = []
    for i in range(first, first + count):
        words = page_words(i, rng)
        text = "\n".join(" ".join(words[k:k + 20]).capitalize() + "." for k in range(0, len(words), 20))
        pages.append((f"https://gen.example/{i}", text))
        if rng.random() < 0.10:
            near = words[:]
            for _ in range(3):
                near[rng.randrange(len(near))] = rng.choice(COMMON)
            pages.append((f"https://mirror.example/{i}", "\n".join(" ".join(near[k:k + 20]).capitalize() + "."
                                                                   for k in range(0, len(near), 20))))
        if rng.random() < 0.03:
            pages.append((f"https://copy.example/{i}", text))
    rng.shuffle(pages)
    root.mkdir(parents=True, exist_ok=True)
    for f, start in enumerate(range(0, len(pages), per_file)):
        with gzip.open(root / f"gen-{first:08d}-{f:04d}.jsonl.gz", "wt", encoding="utf-8") as out:
            for url, text in pages[start:start + per_file]:
                out.write(json.dumps({"url": url, "text": text}) + "\n")
    return len(pages)


class PeakSampler(threading.Thread):
    """Largest RSS seen per process under this one (psutil), sampled every `every` seconds."""

    def __init__(self, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.every, self.stop, self.peak, self.kind = every, threading.Event(), {}, {}

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            for proc in [me, *me.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss
                    if proc.pid not in self.kind:
                        cmd = " ".join(proc.cmdline())
                        worker = cmd.startswith("ray::") or "default_worker" in cmd or "multiprocessing" in cmd
                        self.kind[proc.pid] = "driver" if proc.pid == me.pid else "worker" if worker else "ray daemon"
                except psutil.Error:
                    continue
                self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), rss)
            time.sleep(self.every)

    def largest(self, kind: str) -> float:
        return max((v for p, v in self.peak.items() if self.kind.get(p) == kind), default=0) / 2**20


def child(input_dir: Path, out: Path, shards: int) -> None:
    """Run inside the child: ingest `input_dir`, print peaks (MiB), documents and seconds as JSON."""
    from homegrown.config import IngestConfig
    from homegrown.data.ingest import SourceSpec, ingest

    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    cfg = IngestConfig(workers=2)
    if hasattr(cfg, "shards"):
        cfg.shards = shards
    stats = ingest([SourceSpec(path=input_dir, licence="mixed", glob="*.jsonl.gz", name="bench")], out,
                   progress=False, cfg=cfg)
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    print(json.dumps({"driver_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "driver_sampled_mib": sampler.largest("driver"), "worker_mib": sampler.largest("worker"),
                      "daemon_mib": sampler.largest("ray daemon"), "read": stats.pages_read, "kept": stats.kept,
                      "duplicates": stats.dropped_duplicate, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=3000, help="distinct pages in the 1× crawl")
    parser.add_argument("--per-file", type=int, default=500, help="pages per input file")
    parser.add_argument("--src", type=Path, default=None, help="run another checkout's src/ instead")
    parser.add_argument("--child", nargs=3, metavar=("INPUT_DIR", "OUT", "SHARDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(args.src.resolve())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for factor in FACTORS:
            crawl = root / f"x{factor}"
            pages = write_crawl(crawl, 0, args.docs * factor, args.per_file, seed=factor)
            files = len(list(crawl.iterdir()))
            proc = subprocess.run([sys.executable, __file__, "--child", str(crawl), str(root / f"out{factor}"),
                                   str(files)], capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            results[factor] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "pages": pages, "files": files}
    print(f"sources: {args.src or 'this tree'}; 2 workers; distinct generated pages, 10 % near / 3 % exact copies")
    for factor, r in results.items():
        print(f"{factor:>3}×: {r['pages']:6d} pages in {r['files']:3d} files  driver peak {r['driver_mib']:7.1f} MiB"
              f"  largest worker {r['worker_mib']:7.1f} MiB  Ray daemons {r['daemon_mib']:7.1f} MiB"
              f"  kept {r['kept']:6d}  duplicates {r['duplicates']:5d}  {r['seconds']:.1f} s")

    def largest(r: dict) -> float:
        return max(r["driver_mib"], r["worker_mib"])

    ratio = largest(results[10]) / largest(results[1])
    print(f"largest process (driver or worker) 10× / 1×: {ratio:.2f} (limit {LIMIT}) -> "
          f"{'PASS' if ratio < LIMIT else 'FAIL'}")


if __name__ == "__main__":
    main()
