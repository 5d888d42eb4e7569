"""Structured output (`response_format`) on an untrained model: whatever it samples, the reply parses and is
valid against the schema (checked by `jsonschema`, a validator we did not write), in the engine and through the
real server with the official `openai` client — chat and text completions, streamed or not, beside free
requests in the same batch. Why no test here can flake: tests/serve/structured_schemas.py."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import jsonschema
import openai
import pydantic
import pytest
import torch

from homegrown.config import ModelConfig, ServeConfig
from homegrown.model import Transformer
from homegrown.serve.constraint_spec import ConstraintSpec
from homegrown.serve.engine import Engine, GenerationParams
from homegrown.tokenizer import load_tokenizer
from homegrown.train.checkpoint import save_checkpoint
from tests.serve.conftest import Server, start_server
from tests.serve.structured_schemas import BOUND_BYTES, NESTED, SCHEMAS
from tests.serve.test_api import assert_openai_error

MODEL = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=512)
"""The serving tests' tiny model with room for BOUND_BYTES tokens after a prompt."""
CHAT = [{"role": "user", "content": "Describe a person as JSON."}]


@pytest.fixture(scope="module")
def run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("structured_run")
    shutil.copyfile(tiny_run / "tokenizer.json", run / "tokenizer.json")
    torch.manual_seed(0)
    save_checkpoint(run / "ckpt", 1, Transformer(MODEL), run / "tokenizer.json")
    return run


@pytest.fixture(scope="module")
def engine(run: Path) -> Iterator[Engine]:
    from homegrown.bundle import load_bundle

    eng = Engine(load_bundle(run), ServeConfig(max_batch=8)).start()
    yield eng
    eng.stop(drain=False, timeout=30)


@pytest.fixture(scope="module")
def server(run: Path) -> Iterator[Server]:
    srv = start_server(run)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0, timeout=300)


def json_schema_format(schema: dict, name: str = "reply") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def assert_valid(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_engine_constrained_and_free_sequences_share_a_batch(engine: Engine, name: str) -> None:
    """One submit puts all four sequences in one prefill and the same decode steps: two constrained (sampled and
    greedy), a free one forced to run long, and one under a different grammar."""
    schema = SCHEMAS[name]
    spec = ConstraintSpec.json_schema(schema)
    params = [GenerationParams(max_tokens=BOUND_BYTES, temperature=1.0, seed=7, constraint=spec),
              GenerationParams(max_tokens=BOUND_BYTES, temperature=0.0, constraint=spec),
              GenerationParams(max_tokens=40, temperature=1.0, seed=3, ignore_eos=True),
              GenerationParams(max_tokens=BOUND_BYTES, temperature=1.0, seed=9,
                               constraint=ConstraintSpec.json_schema(SCHEMAS["enum"]))]
    results = engine.generate(engine.encode("Person:"), params)
    for text, _, _, reason in (results[0], results[1]):
        assert reason == "stop", text
        assert_valid(text, schema)
    assert results[2][3] == "length" and len(results[2][1]) == 40
    assert results[3][3] == "stop"
    assert_valid(results[3][0], SCHEMAS["enum"])


def test_top_level_number_ends_at_a_stop_token_where_the_grammar_may_end(engine: Engine) -> None:
    """Digits may go on after '4', so the reply ends at the model's stop token, which the mask allows only once
    the number is whole (and forces after five digits)."""
    schema = {"type": "integer", "minimum": 0, "maximum": 99999}
    for seed in range(4):
        text, ids, _, reason = engine.generate(engine.encode("n ="), [GenerationParams(
            max_tokens=BOUND_BYTES, seed=seed, constraint=ConstraintSpec.json_schema(schema))])[0]
        assert reason == "stop" and len(ids) <= 5
        assert_valid(text, schema)


def test_tagged_tool_call_spec_in_the_engine(engine: Engine) -> None:
    """The spec tool calling builds on (`tool_choice: required`, one call): the begin string, JSON valid for one of
    the schemas, the end string, and nothing after it."""
    schemas = [SCHEMAS["enum"], SCHEMAS["optional"]]
    spec = ConstraintSpec.tagged("<tool_call>\n", schemas, "\n</tool_call>", required=True, parallel=False)
    for seed in range(3):
        (text, _, _, reason), = engine.generate(engine.encode("call:"), [GenerationParams(
            max_tokens=BOUND_BYTES, seed=seed, constraint=spec)])
        assert reason == "stop" and text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>"), text
        call = json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
        assert sum(jsonschema.Draft202012Validator(s).is_valid(call) for s in schemas) >= 1


def test_logprobs_are_of_the_masked_distribution(engine: Engine) -> None:
    schema = {"const": "blue sky"}
    (text, ids, lps, reason), = engine.generate(engine.encode("x"), [GenerationParams(
        max_tokens=BOUND_BYTES, seed=1, logprobs=True, top_logprobs=5, constraint=ConstraintSpec.json_schema(schema))])
    assert json.loads(text) == "blue sky" and reason == "stop" and len(lps) == len(ids)
    for lp in lps:
        assert lp.top and all(v > float("-inf") for _, v in lp.top) and lp.token_id in dict(lp.top)
        assert sum(torch.tensor([v for _, v in lp.top]).exp()) <= 1 + 1e-5
    # The closing quote is the only token the grammar allows: certain under the mask.
    assert len(lps[-1].top) == 1 and lps[-1].logprob == pytest.approx(0.0, abs=1e-6)


def test_logit_bias_cannot_push_a_token_the_grammar_forbids(engine: Engine) -> None:
    """+100 on 'a' (never valid outside a string) and on '{' and '}', -100 on '{"': any JSON object is then '{}',
    every step decided by a bias of 100 — and 'a' never appears, though it outweighs everything else."""
    vocab = engine.tokenizer.get_vocab()
    bias = {vocab[t]: 100.0 for t in ("{", "}", "a")}
    bias.update({vocab[t]: -100.0 for t in ('{"', "{}") if t in vocab})
    (text, _, _, reason), = engine.generate(engine.encode("x"), [GenerationParams(
        max_tokens=BOUND_BYTES, logit_bias=bias, constraint=ConstraintSpec.json_object())])
    assert (text, reason) == ("{}", "stop")
    free, = engine.generate(engine.encode("x"), [GenerationParams(max_tokens=3, logit_bias=bias, ignore_eos=True)])
    assert set(free[0]) <= set("{}a")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_chat_json_schema_with_the_openai_client(client: openai.OpenAI, server: Server, name: str) -> None:
    r = client.chat.completions.create(model=server.model, messages=CHAT, n=2, seed=5, max_tokens=BOUND_BYTES,
                                       response_format=json_schema_format(SCHEMAS[name], name))
    assert len(r.choices) == 2
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        assert_valid(choice.message.content, SCHEMAS[name])


def test_top_logprobs_hold_only_tokens_the_grammar_allows(client: openai.OpenAI, server: Server) -> None:
    """20 alternatives asked where the grammar often allows one: masked tokens are left out, not sent as
    -Infinity (which is not JSON)."""
    r = client.chat.completions.create(model=server.model, messages=CHAT, seed=4, max_tokens=BOUND_BYTES,
                                       logprobs=True, top_logprobs=20, response_format=json_schema_format(NESTED))
    assert_valid(r.choices[0].message.content, NESTED)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    assert all(e.top_logprobs and all(t.logprob > float("-inf") for t in e.top_logprobs) for e in entries)
    assert any(len(e.top_logprobs) < 20 for e in entries)


def test_streamed_chat_and_completions_are_valid(client: openai.OpenAI, server: Server) -> None:
    fmt = json_schema_format(NESTED)
    chunks = list(client.chat.completions.create(model=server.model, messages=CHAT, seed=11, stream=True,
                                                 max_tokens=BOUND_BYTES, response_format=fmt))
    assert_valid("".join(c.choices[0].delta.content or "" for c in chunks), NESTED)
    assert chunks[-1].choices[0].finish_reason == "stop"

    whole = client.completions.create(model=server.model, prompt="Person:", seed=12, max_tokens=BOUND_BYTES,
                                      extra_body={"response_format": fmt})
    assert whole.choices[0].finish_reason == "stop"
    assert_valid(whole.choices[0].text, NESTED)
    pieces = list(client.completions.create(model=server.model, prompt="Person:", seed=12, max_tokens=BOUND_BYTES,
                                            stream=True, extra_body={"response_format": fmt}))
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text


def test_json_object_and_text_formats(client: openai.OpenAI, server: Server, run: Path) -> None:
    """The biases of test_logit_bias_cannot_push_a_token_the_grammar_forbids make any JSON object '{}'."""
    tok = load_tokenizer(run)
    bias = {str(tok.token_to_id(t)): 100 for t in ("{", "}")}
    bias.update({str(tok.token_to_id(t)): -100 for t in ('{"', "{}") if tok.token_to_id(t) is not None})
    r = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=BOUND_BYTES, logit_bias=bias,
                                       response_format={"type": "json_object"})
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("{}", "stop")
    plain = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=3, seed=1,
                                           response_format={"type": "text"}, extra_body={"ignore_eos": True})
    assert plain.usage.completion_tokens == 3


def test_constrained_and_free_requests_concurrently(client: openai.OpenAI, server: Server) -> None:
    results: dict[str, object] = {}

    def constrained(i: int) -> None:
        results[f"c{i}"] = client.chat.completions.create(
            model=server.model, messages=CHAT, seed=i, max_tokens=BOUND_BYTES,
            response_format=json_schema_format(SCHEMAS["optional"])).choices[0]

    def free(i: int) -> None:
        results[f"f{i}"] = client.chat.completions.create(model=server.model, messages=CHAT, seed=i, max_tokens=30,
                                                          extra_body={"ignore_eos": True}).choices[0]

    threads = [threading.Thread(target=f, args=(i,)) for i in range(3) for f in (constrained, free)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == 6
    for key, choice in results.items():
        if key.startswith("c"):
            assert choice.finish_reason == "stop"
            assert_valid(choice.message.content, SCHEMAS["optional"])
        else:
            assert choice.finish_reason == "length"


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=6)
    kind: Literal["cat", "dog"]
    age: int = pydantic.Field(ge=0, le=30)
    toys: list[Literal["ball", "rope"]] = pydantic.Field(max_length=2)


def test_parse_with_a_pydantic_model(client: openai.OpenAI, server: Server) -> None:
    """`client.chat.completions.parse` sends the model's strict JSON schema and parses the reply into it."""
    r = client.chat.completions.parse(model=server.model, messages=CHAT, seed=2, max_tokens=BOUND_BYTES,
                                      response_format=Pet)
    pet = r.choices[0].message.parsed
    assert isinstance(pet, Pet) and pet.kind in ("cat", "dog")


@pytest.mark.parametrize("fmt,reason", [
    (json_schema_format({"type": "foo"}), "Invalid type"),
    (json_schema_format({"type": "object", "propertyNames": {"maxLength": 2}}), "propertyNames"),
    (json_schema_format({"type": "string", "pattern": "(("}), "unclosed group"),
    (json_schema_format({"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]}), ""),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_schemas_that_cannot_be_enforced_are_a_400(server: Server, fmt: dict, reason: str, path: str) -> None:
    body = {"messages": CHAT} if "chat" in path else {"prompt": "x"}
    r = httpx.post(server.base_url + path, headers=server.headers(), timeout=60,
                   json={"model": server.model, **body, "max_tokens": 5, "response_format": fmt})
    error = assert_openai_error(r, 400)
    assert error["param"] == "response_format" and reason in error["message"], error


@pytest.mark.parametrize("fmt,param", [
    ({"type": "json_schema"}, "response_format.json_schema.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}},
     "response_format.json_schema.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
     "response_format.json_schema.json_schema.name"),
    ({"type": "xml"}, "response_format"),
    ({"type": "json_object", "schema": {}}, "response_format.json_object.schema"),
])
def test_malformed_response_formats_are_a_400_naming_the_field(server: Server, fmt: dict, param: str) -> None:
    r = httpx.post(f"{server.base_url}/v1/chat/completions", headers=server.headers(), timeout=60,
                   json={"model": server.model, "messages": CHAT, "max_tokens": 5, "response_format": fmt})
    assert assert_openai_error(r, 400)["param"] == param


@pytest.mark.parametrize("path,extra,param", [
    ("/v1/chat/completions", {"stop": ["}"]}, "stop"),
    ("/v1/chat/completions", {"stop_token_ids": [5]}, "stop_token_ids"),
    ("/v1/chat/completions", {"min_tokens": 3}, "min_tokens"),
    ("/v1/chat/completions", {"ignore_eos": True}, "ignore_eos"),
    ("/v1/completions", {"echo": True}, "echo"),
    ("/v1/completions", {"ignore_eos": True}, "ignore_eos"),
])
def test_what_would_end_the_reply_elsewhere_is_refused_by_name(server: Server, path: str, extra: dict,
                                                               param: str) -> None:
    body = {"messages": CHAT} if "chat" in path else {"prompt": "x"}
    r = httpx.post(server.base_url + path, headers=server.headers(), timeout=60,
                   json={"model": server.model, **body, "max_tokens": 20, **extra,
                         "response_format": {"type": "json_object"}})
    error = assert_openai_error(r, 400)
    assert error["param"] == param and param in error["message"]


# -- server-side defaults (--generation-config) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def defaulted(tools_run: Path) -> Iterator[Server]:
    """`homegrown serve` whose --generation-config sets every default a grammar overrules (ENDS_ELSEWHERE), beside
    a +100 bias on the end tokens: a free reply shows which defaults applied, and the '}' stop string would cut
    any JSON object it reached. tools_run, for its context long enough for a prompt with tools."""
    tok = load_tokenizer(tools_run)
    config = {"ignore_eos": True, "min_tokens": 2, "stop": ["}"], "stop_token_ids": [tok.token_to_id("{")],
              "logit_bias": {str(tok.token_to_id(t)): 100 for t in ("<|endoftext|>", "<|end|>")}}
    srv = start_server(tools_run, "--generation-config", json.dumps(config))
    yield srv
    srv.stop()


def test_server_defaults_that_end_replies_yield_to_the_grammar(defaulted: Server) -> None:
    """A client that asks for JSON or a tool call sent nothing wrong, so the server's own ignore_eos, min_tokens,
    stop and stop_token_ids do not turn its request into a 400: the grammar decides where the reply ends, and
    the server's other defaults (the bias) still apply. A free request gets all of them."""
    from tests.serve.test_tool_calling import SCHEMAS as TOOL_SCHEMAS
    from tests.serve.test_tool_calling import TOOLS

    client = openai.OpenAI(base_url=f"{defaulted.base_url}/v1", api_key=defaulted.api_key, max_retries=0,
                           timeout=300)
    fmt = json_schema_format(NESTED)
    chat = client.chat.completions.create(model=defaulted.model, messages=CHAT, seed=3, max_tokens=BOUND_BYTES,
                                          response_format=fmt).choices[0]
    assert chat.finish_reason == "stop"
    assert_valid(chat.message.content, NESTED)
    text = client.completions.create(model=defaulted.model, prompt="Person:", seed=4, max_tokens=BOUND_BYTES,
                                     extra_body={"response_format": fmt}).choices[0]
    assert text.finish_reason == "stop"
    assert_valid(text.text, NESTED)
    call = client.chat.completions.create(model=defaulted.model, messages=CHAT, seed=5, max_tokens=BOUND_BYTES,
                                          tools=TOOLS, tool_choice="required",
                                          parallel_tool_calls=False).choices[0]
    function = call.message.tool_calls[0].function
    assert call.finish_reason == "tool_calls"
    assert_valid(function.arguments, TOOL_SCHEMAS[function.name])

    free = {"model": defaulted.model, "prompt": "x", "max_tokens": 4}
    no_stops = {"stop": None, "stop_token_ids": None}
    runs_on = client.completions.create(**free, extra_body=no_stops)
    assert (runs_on.usage.completion_tokens, runs_on.choices[0].finish_reason) == (4, "length")
    ends = client.completions.create(**free, extra_body={**no_stops, "ignore_eos": False})
    assert (ends.usage.completion_tokens, ends.choices[0].finish_reason) == (2, "stop")
