"""After real traffic through a gateway: the flywheel export (read back by the SFT loader), forget, the report and
the judging part of `gateway status` — each through the CLI, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import yaml
from conftest import backend, wait_for

from homegrown.data.from_gateway import conversation_sha256, export_from_config
from homegrown.errors import HomegrownError
from homegrown.gateway.judging_status import live_judging_lines
from homegrown.gateway.judging_store import JudgingStore
from homegrown.gateway.store import RequestLog
from homegrown.posttrain.chat import read_chat_jsonl

EMAIL = "jane.doe@example.com"


def test_flywheel_report_and_status_after_traffic(gateway, llm_stubs, cli, tmp_path: Path) -> None:
    provider = llm_stubs("--prefix", "plain answer to")
    inhouse = llm_stubs("--prefix", "GOOD answer to")
    judge = llm_stubs("--role", "judge")
    opted_out = [{"role": "user", "content": "question opted-out"},
                 {"role": "assistant", "content": "plain answer to question opted-out"}]
    (tmp_path / "optout.txt").write_text(f"sha256: {conversation_sha256(opted_out)}\n")
    cfg = {
        "backends": {"provider": backend(provider.base_url, "gpt-stub", price={"input_per_1m": 1000,
                                                                                 "output_per_1m": 2000}),
                     "inhouse": backend(inhouse.base_url, "small", price={"per_request": 0.0001}),
                     "judge": backend(judge.base_url, "judge-stub")},
        "routes": {"chat": {
            "backends": [{"backend": "provider", "weight": 100}, {"backend": "inhouse", "weight": 0}],
            "sticky": False,
            "shadow": {"candidate": "inhouse", "incumbent": "provider", "percent": 100},
            "promotion": {"ladder": [0, 50, 100], "min_judged": 4, "min_requests": 4, "window": 4,
                          "evaluate_every": 4, "max_p95_latency_s": 600}}},
        "judge": {"backend": "judge"},
        "keys": [{"name": "normal", "key_env": "GW_NORMAL"}, {"name": "nokeep", "key_env": "GW_NOKEEP"},
                 {"name": "private", "key_env": "GW_PRIVATE", "log": False}],
        "flywheel": {"enabled": True, "exclude_keys": ["nokeep"], "opt_out": str(tmp_path / "optout.txt")}}
    gw = gateway(cfg, env={"GW_NORMAL": "sk-n", "GW_NOKEEP": "sk-k", "GW_PRIVATE": "sk-p"})
    clients = {k: openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
               for k, key in (("normal", "sk-n"), ("nokeep", "sk-k"), ("private", "sk-p"))}

    def ask(who: str, text: str) -> None:
        clients[who].chat.completions.create(model="chat", messages=[{"role": "user", "content": text}])

    ask("normal", f"mail me at {EMAIL}")
    ask("normal", "question opted-out")
    ask("nokeep", "question nokeep")
    ask("private", "question private")
    i = 0
    while gw.state("sk-n")["judging"]["chat"]["promotion"]["percent"] < 50:  # at least one step up to report
        assert i < 100
        ask("normal", f"question {i}")
        i += 1
    ask("normal", "question last")  # at 50 % (smooth round-robin) one of these two is the in-house model's
    ask("normal", "question very last")
    wait_for(lambda: gw.state("sk-n")["log_rows_written"] == i + 5, what="the log rows")
    config = Path(gw.config)
    log = RequestLog(f"sqlite:///{gw.db}")
    store = JudgingStore(log.engine)
    wait_for(lambda: store.decisions("chat", changes_only=True), what="the promotion to be stored")
    records = log.records()

    # ---- the flywheel: only the provider's answers, from keys that may be kept, minus the opt-out list
    out = tmp_path / "flywheel"
    done = cli("data", "from-gateway", "--config", str(config), "--out", str(out))
    assert done.returncode == 0, done.stderr
    chats = read_chat_jsonl(out / "train.jsonl", strict=True)  # the loader `homegrown sft --data` uses
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    provider_logged = [r for r in records if r.backend == "provider" and r.key_name == "normal"
                       and r.request_text and "opted-out" not in r.request_text]
    assert len(chats.conversations) == len(rows) == len(provider_logged) >= 2
    assert {r["backend"] for r in rows} == {"provider"} and {r["model"] for r in rows} == {"gpt-stub"}
    assert {r["route"] for r in rows} == {"chat"} and {r["key"] for r in rows} == {"normal"}
    assert all(r["date"].endswith("Z") and r["consent"] and r["source"].startswith("gateway://chat/req_")
               for r in rows)
    texts = json.dumps(chats.conversations)
    assert EMAIL not in texts and "<EMAIL>" in texts  # scrubbed by the gateway before it was stored
    assert "nokeep" not in texts and "private" not in texts and "opted-out" not in texts
    assert "GOOD answer" not in texts  # the in-house model's own answers are not teacher data
    meta = json.loads((out / "MANIFEST.json").read_text())
    assert meta["skipped"]["no_consent"] == 1 and meta["skipped"]["opt_out_hash"] == 1
    assert "provider terms" in meta["terms"]

    # ---- forget one conversation: gone from the export, and a new export does not bring it back
    gone = rows[0]["id"]
    done = cli("data", "forget", str(out), "--id", gone)
    assert done.returncode == 0, done.stderr
    assert gone not in (out / "train.jsonl").read_text()
    export_from_config(config, out)  # the CLI's function; the CLI itself ran above
    assert gone not in (out / "train.jsonl").read_text()
    assert json.loads((out / "MANIFEST.json").read_text())["skipped"]["forgotten"] == 1

    # ---- the switch is off by default, and says why
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "flywheel": {}}))
    with pytest.raises(HomegrownError, match=r"flywheel\.enabled is false.*Provider terms may forbid"):
        export_from_config(off, tmp_path / "none")
    assert not (tmp_path / "none").exists()

    # ---- the report: figures that agree with the database
    report = tmp_path / "report"
    done = cli("gateway", "report", "--config", str(config), "--out", str(report))
    assert done.returncode == 0, done.stderr
    data = json.loads((report / "gateway_report.json").read_text())["routes"]["chat"]
    counts = store.outcome_counts("chat")
    assert data["judging"]["win"]["wins"] == counts.get("win", 0) > 0
    provider_costs = [r.cost_usd for r in records if r.backend == "provider"]
    assert data["cost"]["per_1k_all_provider"] == 1000 * sum(provider_costs) / len(provider_costs)
    assert data["candidate_percent_now"] == store.decisions("chat")[-1].to_percent >= 50
    assert 0 < data["cost"]["per_1k_current"] < data["cost"]["per_1k_all_provider"]
    md = (report / "gateway_report.md").read_text()
    assert "promote | 0% → 50%" in md and "saving $" in md
    for png in json.loads((report / "gateway_report.json").read_text())["charts"]:
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # ---- status shows the ladder and its decisions with their evidence
    status = cli("gateway", "status", "--config", str(config), env={"GW_NORMAL": "sk-n", "GW_NOKEEP": "sk-k",
                                                                      "GW_PRIVATE": "sk-p"})
    assert status.returncode == 0, status.stderr
    assert "judging route chat:" in status.stdout and "promote  0% -> 50%" in status.stdout
    assert "95% Wilson" in status.stdout
    # the live part (the gateway answers on an OS-picked port here, not the file's, so asked directly)
    live = "\n".join(live_judging_lines(gw.state("sk-n")))
    assert "ladder  chat             50% in-house" in live and "dropped 0 (queue full)" in live
    log.close()
