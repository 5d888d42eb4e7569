"""Scale-out: worker count and sharding never change the corpus, and a killed ingest resumes to the same bytes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from crawl_kit import html_page, sample_docs, warc_bytes, write_site

from homegrown.config import IngestConfig
from homegrown.data.corpus import corpus_files
from homegrown.data.ingest import PARTS, SourceSpec, ingest, ingest_parts, merge, parse_shard
from homegrown.data.sources import iter_corpus
from homegrown.errors import HomegrownError
from homegrown.layout import MANIFEST

pytestmark = pytest.mark.usefixtures("ray_session")  # ingest runs on one local Ray per session

PREFIX = "https://example.org/"


def _crawl(root: Path, n: int = 6) -> list[SourceSpec]:
    """HTML pages and a WARC whose pages repeat and nearly repeat pages of the other files (cross-file dedup)."""
    docs = sample_docs(n)
    write_site(root / "site", docs)
    (root / "site" / "zz_copy.html").write_text(html_page(docs[1]["title"], docs[1]["text"]))
    repeats = [docs[3], {"title": "Near", "text": docs[5]["text"] + "\nOne more line."}, *sample_docs(2, offset=n)]
    (root / "crawl.warc.gz").write_bytes(warc_bytes(repeats))
    return [SourceSpec(path=root / "site", licence="CC0-1.0", url_prefix=PREFIX),
            SourceSpec(path=root / "crawl.warc.gz", licence="CC-BY-4.0", name="web")]


def _same(a: Path, b: Path) -> None:
    """Two corpora are the same files, byte for byte: every shard and MANIFEST.json."""
    names = [*corpus_files(a), MANIFEST]
    assert sorted(names[:-1]) == sorted(corpus_files(b))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_workers_and_shards_give_identical_corpora(tmp_path: Path) -> None:
    specs = _crawl(tmp_path / "in")
    one = ingest(specs, tmp_path / "w1", cfg=IngestConfig(workers=1, keep_parts=True), progress=False)
    assert one.rejected.get("duplicate_exact") == 2 and one.rejected.get("duplicate_near") == 1
    # kept parts re-merge without reading the crawl again, e.g. with a new opt-out list
    (tmp_path / "opt-out.txt").write_text(f"prefix: {PREFIX}page0000.html\n")
    again = merge(tmp_path / "w1", opt_out=tmp_path / "opt-out.txt", progress=False)
    assert again.rejected["opt_out_prefix"] == 1 and again.kept == one.kept - 1
    merge(tmp_path / "w1", progress=False)
    ingest(specs, tmp_path / "w2", cfg=IngestConfig(workers=2), progress=False)
    _same(tmp_path / "w1", tmp_path / "w2")

    # two "machines" with their own parts/ directories, merged on a third
    for i in range(2):
        ingest_parts(specs, tmp_path / f"node{i}", shard=(i, 2), progress=False)
    with pytest.raises(HomegrownError, match="4 of 8"):
        merge(tmp_path / "node0", progress=False)
    merge(tmp_path / "node0", extra_parts=[tmp_path / "node1" / PARTS], progress=False)
    _same(tmp_path / "w1", tmp_path / "node0")


def test_shard_spec_is_checked() -> None:
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(HomegrownError, match="i/n"):
            parse_shard(bad)


def test_shard_refuses_parts_of_another_ingest(tmp_path: Path) -> None:
    specs = _crawl(tmp_path / "in")
    ingest_parts(specs, tmp_path / "out", shard=(0, 2), progress=False)
    with pytest.raises(HomegrownError, match="different ingest"):
        ingest_parts(specs[:1], tmp_path / "out", shard=(1, 2), progress=False)


def test_killed_ingest_resumes_to_the_same_output(tmp_path: Path) -> None:
    docs = sample_docs(24, max_chars=1200)
    write_site(tmp_path / "site", docs)
    spec = SourceSpec(path=tmp_path / "site", licence="CC0-1.0", url_prefix=PREFIX)
    ingest([spec], tmp_path / "reference", progress=False)

    exe = Path(sys.executable).with_name("homegrown")
    cmd = [str(exe), "data", "ingest", str(tmp_path / "site"), "--out", str(tmp_path / "out"),
           "--licence", "CC0-1.0", "--url-prefix", PREFIX, "--no-progress", "--keep-parts"]
    parts = tmp_path / "out" / PARTS
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*-*.json"))) < 3 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    ray_processes = _descendants(child.pid)  # its local Ray, killed with it: the whole machine's job dies at once
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    _wait_gone(ray_processes, timeout=0)
    done = {p: p.stat().st_mtime_ns for p in parts.glob("*-*.json")}
    assert 3 <= len(done) < len(docs), "the kill must land mid-run"
    assert not (tmp_path / "out" / "MANIFEST.json").exists()

    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{len(done)} of {len(docs)} files already done" in result.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in done.items()), "finished parts were not redone"
    _same(tmp_path / "reference", tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.tmp")) and not list(parts.glob("*.tmp"))


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (parent links)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (exited, waiting for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: set[int], timeout: float) -> None:
    """Wait until the processes `pids` (started by this test) have exited; kill the ones that outlive `timeout`."""
    deadline = time.monotonic() + timeout
    while pids := {p for p in pids if _running(p)}:
        if time.monotonic() >= deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def test_cli_shards_then_merge(tmp_path: Path, cli) -> None:
    write_site(tmp_path / "site", sample_docs(3))
    spec = SourceSpec(path=tmp_path / "site", licence="CC0-1.0", url_prefix=PREFIX)
    ingest([spec], tmp_path / "reference", progress=False)
    common = ["--out", str(tmp_path / "out"), "--licence", "CC0-1.0", "--url-prefix", PREFIX, "--no-progress"]
    for shard in ("0/2", "1/2"):
        result = cli("data", "ingest", str(tmp_path / "site"), "--shard", shard, *common)
        assert result.returncode == 0 and "homegrown data merge" in result.stderr, result.stderr
        assert not (tmp_path / "out" / "MANIFEST.json").exists()
    merged = cli("data", "merge", str(tmp_path / "out"), "--no-progress")
    assert merged.returncode == 0 and "kept 3 of 3" in merged.stderr, merged.stderr
    _same(tmp_path / "reference", tmp_path / "out")


def _openers(path: Path) -> set[int]:
    """Processes (other than this one) with `path` open, from /proc."""
    found = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) == str(path):
                found.add(int(fd.parts[2]))
        except OSError:  # the process or descriptor went away while listing
            continue
    return found - {os.getpid()}


def _wait_for(what, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def test_a_worker_killed_mid_task_is_retried_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    """The page behind a named pipe holds its Ray task mid-read until the test kills that worker process."""
    docs = sample_docs(5)
    write_site(tmp_path / "site", docs[:4])
    spec = SourceSpec(path=tmp_path / "site", licence="CC0-1.0", url_prefix=PREFIX)
    page = html_page(docs[4]["title"], docs[4]["text"]).encode()
    pipe = tmp_path / "site" / "page0004.html"
    os.mkfifo(pipe)
    held = os.open(pipe, os.O_RDWR)  # a reader's open() returns at once; its read waits for data
    result: list = []
    run = threading.Thread(target=lambda: result.append(
        ingest([spec], tmp_path / "out", cfg=IngestConfig(workers=2), progress=False)))
    run.start()
    try:
        (worker,) = _wait_for(lambda: _openers(pipe))
        os.kill(worker, signal.SIGKILL)
        # Write only once the killed worker has let go of the pipe: a fatal signal and new data can wake its
        # blocked read() together, and the kernel may hand it the page before it dies (seen under load).
        _wait_for(lambda: worker not in _openers(pipe))
        os.write(held, page)  # what the retried task will read
        _wait_for(lambda: _openers(pipe) - {worker})
    finally:
        os.close(held)  # end of file for the retry
        run.join(timeout=300)
    (stats,) = result
    pipe.unlink()
    pipe.write_bytes(page)
    ingest([spec], tmp_path / "reference", progress=False)
    got = [(r["source"], r["sha256"]) for split in ("train", "val") for r in iter_corpus(tmp_path / "out", split)]
    want = [(r["source"], r["sha256"]) for split in ("train", "val")
            for r in iter_corpus(tmp_path / "reference", split)]
    assert stats.kept == 5 and got == want and len(set(got)) == 5


def test_a_merge_rerun_after_a_crash_redoes_only_unfinished_tasks(tmp_path: Path, caplog) -> None:
    specs = _crawl(tmp_path / "in")
    ingest(specs, tmp_path / "reference", progress=False)
    ingest(specs, tmp_path / "out", cfg=IngestConfig(keep_parts=True), progress=False)
    # as if the merge had been killed while writing shards 1 and 2: their outputs and markers are missing
    (work,) = (tmp_path / "out" / "dedup").iterdir()
    meta = json.loads((tmp_path / "out" / MANIFEST).read_text())
    for shard in (1, 2):
        (work / "write" / f"{shard:07d}.done").unlink()
        for name in meta["shards"][shard].values():
            if isinstance(name, str):
                (tmp_path / "out" / name).unlink()
    (tmp_path / "out" / MANIFEST).unlink()
    with caplog.at_level(logging.INFO, logger="homegrown.data.ingest"):
        merge(tmp_path / "out", progress=False)
    ran = {m.split(":")[0].removeprefix("ingest "): m.split(": ")[1] for m in caplog.messages if "tasks to run" in m}
    assert ran == {"keys": "0 of 8 tasks to run", "exact": "0 of 8 tasks to run", "buckets": "0 of 8 tasks to run",
                   "verify": "0 of 8 tasks to run", "components": "0 of 1 tasks to run",
                   "write": "2 of 8 tasks to run"}
    _same(tmp_path / "reference", tmp_path / "out")
