"""The same tasks against OpenAI-compatible endpoints, through the official `openai` client, on loopback.

Two servers: the real `homegrown serve` (a child process; its /v1/completions echoes prompt log-probabilities as
vLLM's does, so it is scored by log-likelihood, and it can be asked for chat), and a small OpenAI-shaped server
written here that computes echoed prompt log-probabilities with one plain forward pass.
"""

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import uvicorn
from fastapi import FastAPI

from homegrown.bundle import load_bundle
from homegrown.config import ModelConfig
from homegrown.eval.external import EndpointModel
from homegrown.eval.report import ExternalSpec, build_report
from homegrown.eval.tasks import TASKS_DIR, LocalModel, evaluate_task, load_task
from homegrown.model import Transformer
from homegrown.serve.launch import launch
from homegrown.tokenizer import eot_id
from homegrown.train.checkpoint import save_checkpoint


def echo_logprobs_app(ckpt: Path) -> FastAPI:
    """/v1/completions with echo + logprobs computed by one plain forward pass per prompt, plus the one greedy
    token asked for (which the client must leave out of the score)."""
    bundle = load_bundle(ckpt)
    model, tok = bundle.model, bundle.tokenizer
    app = FastAPI()

    @app.post("/v1/completions")
    def completions(body: dict) -> dict:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        assert body.get("echo") and body.get("max_tokens") == 1, "this test server only scores prompts"
        choices = []
        for i, prompt in enumerate(prompts):
            enc = tok.encode(prompt, add_special_tokens=False)
            ids = [eot_id(tok), *enc.ids]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)
            nxt = int(logp[-1].argmax())
            token_lps = [float(logp[k, ids[k + 1]]) for k in range(len(enc.ids))] + [float(logp[-1, nxt])]
            top = [{tok.id_to_token(int(logp[k].argmax())): float(logp[k].max())} for k in range(len(ids))]
            choices.append({"index": i, "text": prompt + tok.decode([nxt]), "finish_reason": "length", "logprobs": {
                "tokens": [tok.id_to_token(t) for t in [*enc.ids, nxt]], "token_logprobs": token_lps,
                "top_logprobs": top, "text_offset": [start for start, _ in enc.offsets] + [len(prompt)]}})
        return {"id": "cmpl-test", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": choices}

    return app


@pytest.fixture(scope="module")
def echo_server(eval_run):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here and handed to uvicorn: no window for another process to take it
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(echo_logprobs_app(eval_run / "ckpt" / "step_8"), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def test_echoed_logprobs_score_multiple_choice_exactly_like_the_local_model(eval_run, echo_server, tmp_path):
    endpoint = EndpointModel(echo_server, "base-model")
    assert endpoint.mode == "completions" and endpoint.supports_loglikelihood
    local_lm = LocalModel(load_bundle(eval_run / "ckpt" / "step_8"))
    # 0-shot items that fit the tiny model's 64-token window whole (a server would refuse longer prompts).
    _assert_same_multiple_choice_scores(endpoint, local_lm, tmp_path, max_tokens=60, n=30)


def _assert_same_multiple_choice_scores(endpoint: EndpointModel, local_lm: LocalModel, tmp_path: Path,
                                        max_tokens: int, n: int) -> None:
    """Shipped doc_entry items short enough for the model's window: same log-probs and metrics both ways."""
    shipped = [json.loads(line) for line in (TASKS_DIR / "doc_entry.jsonl").read_text().splitlines()[1:]]
    items = [json.dumps(it) for it in shipped if it["split"] == "test"
             and max(len(local_lm.encode(it["context"] + c)) for c in it["choices"]) < max_tokens][:n]
    assert len(items) >= 10
    (tmp_path / "short.jsonl").write_text("\n".join(items) + "\n")
    task = load_task(tmp_path / "short.jsonl")
    remote, local = evaluate_task(task, endpoint), evaluate_task(task, local_lm)
    assert remote.mode == local.mode == "loglikelihood"
    assert remote.metrics == pytest.approx(local.metrics)
    for r, ll in zip(remote.examples, local.examples, strict=True):
        assert r["logprobs"] == pytest.approx(ll["logprobs"], abs=1e-3)


@pytest.fixture(scope="module")
def chat_ckpt(eval_run, tmp_path_factory) -> Path:
    """A seeded random model with peaked logits: unlike 12 training steps, it says something other than newlines,
    so comparing the server's answers with the checkpoint's means something."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128, init_std=0.3)
    return save_checkpoint(tmp_path_factory.mktemp("chat") / "ckpt", 1, Transformer(cfg), eval_run / "tokenizer.json")


@pytest.fixture(scope="module")
def homegrown_server(eval_run, chat_ckpt):
    """The real `homegrown serve` on a checkpoint, as a user starts it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOMEGROWN_API_KEY": "eval-key"}
    srv = launch(chat_ckpt, "--device", "cpu", "--model-name", "chat-model", log=eval_run / "serve-eval.log", env=env)
    yield f"{srv.base_url}/v1"
    srv.stop()


def test_homegrown_serve_scores_likelihood_exactly_like_the_checkpoint(chat_ckpt, homegrown_server, tmp_path):
    """The served model's echoed prompt log-probs and the in-process eval are one truth: same sums, same picks."""
    endpoint = EndpointModel(homegrown_server, "chat-model", api_key="eval-key")
    assert endpoint.mode == "completions" and endpoint.supports_loglikelihood
    local_lm = LocalModel(load_bundle(chat_ckpt))
    pairs = [("The capital of France is", " Paris"), ("Water boils at", " 100 degrees Celsius."),
             ("Héllo wörld —", " ok 日本"), ("def main():", "\n    return 0"), ("A", " B"),
             ("Answer: ", "sys")]  # a trailing space moves to the continuation on both sides (lm-eval's rule)
    remote, local = endpoint.loglikelihoods(pairs), local_lm.loglikelihoods(pairs)
    assert [r[0] for r in remote] == pytest.approx([ll[0] for ll in local], abs=1e-3)
    assert [r[1] for r in remote] == [ll[1] for ll in local]
    _assert_same_multiple_choice_scores(endpoint, local_lm, tmp_path, max_tokens=100, n=12)


def test_chat_mode_is_scored_by_generation_and_marked(chat_ckpt, homegrown_server, tmp_path):
    endpoint = EndpointModel(homegrown_server, "chat-model", api_key="eval-key", mode="chat")
    assert endpoint.mode == "chat" and not endpoint.supports_loglikelihood
    # Short 0-shot questions, so prompt + answer fit the tiny model's 64-token context on the server.
    shipped = [json.loads(line) for line in (TASKS_DIR / "doc_module.jsonl").read_text().splitlines()[1:]]
    # A newline stop: the server is sent none (it would cut leading whitespace), the client cuts by our rule.
    header = {"task": {"name": "module_short", "type": "generation", "metric": "exact_match", "max_tokens": 8,
                       "stop": ["\n"]}}
    (tmp_path / "module_short.jsonl").write_text("\n".join(json.dumps(x) for x in [header, *shipped[5:17]]) + "\n")
    mc = [{"context": f"{a}+{b}=", "choices": [f" {a + b}", f" {a + b + 1}"], "answer": 0} for a, b in [(1, 2), (3, 4)]]
    (tmp_path / "sums.jsonl").write_text("\n".join(json.dumps(x) for x in mc) + "\n")
    task = load_task(tmp_path / "module_short.jsonl")
    remote = evaluate_task(task, endpoint)
    local = evaluate_task(task, LocalModel(load_bundle(chat_ckpt), chat=True))
    assert remote.mode == local.mode == "chat"
    # Same weights, same chat template, greedy decoding: the server says what the checkpoint says.
    assert [e["predicted"] for e in remote.examples] == [e["predicted"] for e in local.examples]
    assert all(e["predicted"] for e in local.examples)
    assert remote.score == pytest.approx(local.score)
    md = build_report([chat_ckpt], tmp_path / "card",
                      [str(tmp_path / "module_short.jsonl"), str(tmp_path / "sums.jsonl")],
                      [ExternalSpec(homegrown_server, "chat-model", "eval-key", mode="chat")])
    text = md.read_text()
    assert "chat-model @ 127.0.0.1" in text and "(lettered)" in text and "(chat)" in text
