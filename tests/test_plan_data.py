"""The data side of `homegrown plan`: its arithmetic on a small crawl, --measure-data, and bad input."""

from __future__ import annotations

import json
import math

import pytest

from homegrown.errors import HomegrownError
from homegrown.plan_data import (
    FINEWEB_BUDGET,
    SORT_OVERHEAD,
    STAGES,
    Crawl,
    crawl_from,
    data_plan,
    fineweb_check,
    load_rates,
    parse_size,
)
from tests.conftest import _run_cli


def test_plan_arithmetic_follows_the_shipped_rates():
    """A 10,000-page crawl of 50 MB: every figure is the rates file's values times the crawl's size."""
    rates = load_rates()
    crawl = Crawl("small", docs=10_000, html_bytes=50e6, snapshots=2, filter_keep=0.5, dedup_keep=0.8)
    plan = data_plan(crawl, rates, worker_memory_bytes=4e9)
    st = rates["state"]
    assert plan.docs_filtered == 5_000 and plan.docs_kept == 4_000
    text_bytes = 4_000 * st["text_bytes_per_doc"]
    units = {"extract": 50e6, "pack": text_bytes}
    for stage in plan.stages:
        expected = units.get(stage.name, 5_000) / rates["stages"][stage.name]["per_core_s"] / 3600
        assert stage.cpu_hours == pytest.approx(expected)
    assert [s.name for s in plan.stages] == list(STAGES)
    assert plan.cpu_hours == pytest.approx(sum(s.cpu_hours for s in plan.stages))
    keys = 5_000 * (st["exact_key_bytes_per_doc"] + st["band_key_bytes_per_doc"])
    assert plan.shuffle_bytes == pytest.approx(keys + 5_000 * st["candidate_pair_bytes_per_doc"])
    assert plan.storage["token shards"] == pytest.approx(text_bytes * st["tokens_per_text_byte"] * st["token_bytes"])
    assert plan.storage["corpus shards (text + manifest, gzip)"] == pytest.approx(4_000 * st["corpus_bytes_per_doc"])
    largest = 5_000 * max(st["exact_key_bytes_per_doc"], st["band_key_bytes_per_doc"])
    assert plan.partitions == max(1, math.ceil(largest * SORT_OVERHEAD / (4e9 - st["worker_baseline_bytes"])))
    assert plan.memory["partition"] == pytest.approx(st["worker_baseline_bytes"] + largest * SORT_OVERHEAD
                                                     / plan.partitions)
    check = fineweb_check(plan)
    assert check["published_cpu_hours_per_snapshot"] == sum(b.tasks * b.hours * b.cpus for b in FINEWEB_BUDGET)
    assert check["ratio"] == pytest.approx(plan.cpu_hours / 2 / check["published_cpu_hours_per_snapshot"])


def test_more_pages_need_more_partitions_and_never_more_memory_per_partition_task():
    rates = load_rates()
    small = data_plan(Crawl("a", 1e7, 1e11), rates)
    large = data_plan(Crawl("b", 1e10, 1e14), rates)
    assert large.partitions > small.partitions
    assert large.memory["partition"] <= 4e9


def test_sizes_and_crawl_presets():
    assert parse_size("394TiB", "x") == 394 * 2**40
    assert parse_size("2.64e9", "x") == 2.64e9
    assert parse_size("3G", "x") == 3e9
    fineweb = crawl_from("fineweb", None, None, None, None, 0.5)
    assert fineweb.snapshots == 96 and fineweb.dedup_keep == 0.5
    with pytest.raises(HomegrownError, match="not a non-negative size"):
        parse_size("-5", "--data-docs")
    with pytest.raises(HomegrownError, match="unknown crawl"):
        crawl_from("commoncrawl-2099", None, None, None, None, None)
    with pytest.raises(HomegrownError, match="both --data-docs and --data-bytes"):
        crawl_from(None, "1e6", None, None, None, None)
    with pytest.raises(HomegrownError, match="must be positive"):
        data_plan(crawl_from(None, "1e6", "0", None, None, None), load_rates())
    with pytest.raises(HomegrownError, match="must be in"):
        data_plan(Crawl("c", 10, 10, filter_keep=1.5), load_rates())


def test_measure_data_on_a_tiny_sample_writes_a_rates_file_the_planner_reads(tmp_path):
    out = tmp_path / "rates.json"
    done = _run_cli("plan", "--measure-data", "--measure-docs", "12", "--rates-out", str(out),
                    "--data-docs", "1e6", "--data-bytes", "10G", "--json")
    assert done.returncode == 0, done.stderr
    rates = load_rates(out)  # well-formed: the format, every stage with a positive rate
    assert rates["input"]["pages"] == 12 + 1 + 1  # + 10 % exact and 10 % near copies
    assert rates["host"]["cores"] >= 1 and rates["measured_at"]
    assert 0 < rates["yields"]["filter_keep"] <= 1 and 0 < rates["yields"]["dedup_keep"] <= 1
    for stage in STAGES:
        assert rates["stages"][stage]["cpu_seconds"] > 0
    plan = json.loads(done.stdout[done.stdout.index("{"):])
    assert plan["crawl"]["docs"] == 1e6
    assert plan["cpu_hours"] == pytest.approx(data_plan(Crawl("custom", 1e6, 10e9), rates).cpu_hours)


@pytest.mark.parametrize(("args", "message"), [
    (["--data-docs", "-5", "--data-bytes", "1G"], "non-negative size"),
    (["--crawl", "fineweb", "--rates", "/nonexistent/rates.json"], "not found"),
])
def test_bad_input_is_a_clear_error(args, message):
    done = _run_cli("plan", *args)
    assert done.returncode == 2
    assert message in done.stderr + done.stdout and "Traceback" not in done.stderr
