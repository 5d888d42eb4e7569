"""Tool calling through the real `homegrown serve` and the official `openai` client, on an untrained model: what
it samples is noise, so every assertion is one that must hold whatever it samples — a forced call (`required`, a
named function) is made, with arguments valid against the function's schema (checked with jsonschema), streamed
as OpenAI's deltas and rebuilt by the client's own accumulation; results go back into the prompt exactly as
transformers renders the conversation; what cannot be served is a 400 naming the field."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pydantic
import pytest
import torch

from homegrown.chat_template import TOOL_CALL_END, TOOL_CALL_START
from homegrown.config import ServeConfig
from homegrown.model import Transformer
from homegrown.serve.protocol import ChatCompletionRequest
from homegrown.serve.tool_calling import calls_schema, plan_tools
from homegrown.tokenizer import load_tokenizer
from homegrown.train.checkpoint import save_checkpoint
from tests.serve.conftest import TOOLS_MODEL, Server, start_server

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 12},
    "unit": {"enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit", "days"], "additionalProperties": False}
"""Bounded (maxLength, enum, integer range, no other keys), so a call of an untrained model ends well within
max_tokens and its end is the grammar's, not the budget's."""
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time.", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
MAX_TOKENS = 400


@pytest.fixture(scope="module")
def client(tools_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tools_server.base_url}/v1", api_key=tools_server.api_key, max_retries=0,
                         timeout=120)


@pytest.fixture(scope="module")
def http(tools_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tools_server.base_url, headers=tools_server.headers(), timeout=120) as c:
        yield c


def _valid(call) -> None:
    """A call in the reply: an id in OpenAI's shape, a known function, arguments valid against its schema."""
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_function_is_called_with_valid_arguments(client: openai.OpenAI, tools_server: Server) -> None:
    r = client.chat.completions.create(model=tools_server.model, messages=ASK, tools=TOOLS, max_tokens=MAX_TOKENS,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}}, seed=3)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [c.function.name for c in choice.message.tool_calls] == ["get_time"]
    _valid(choice.message.tool_calls[0])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_makes_one_call_when_parallel_calls_are_off(client: openai.OpenAI, tools_server: Server,
                                                             seed: int) -> None:
    r = client.chat.completions.create(model=tools_server.model, messages=ASK, tools=TOOLS, tool_choice="required",
                                       parallel_tool_calls=False, max_tokens=MAX_TOKENS, seed=seed, n=2)
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        _valid(choice.message.tool_calls[0])


def test_required_parallel_calls_are_each_valid(client: openai.OpenAI, tools_server: Server) -> None:
    """Calls and nothing else; any number of them, so the reply may run out of tokens in one (`length`)."""
    r = client.chat.completions.create(model=tools_server.model, messages=ASK, tools=TOOLS, tool_choice="required",
                                       max_tokens=MAX_TOKENS, seed=5)
    choice = r.choices[0]
    calls = choice.message.tool_calls
    assert calls and choice.message.content is None and choice.finish_reason in ("tool_calls", "length")
    for call in calls if choice.finish_reason == "tool_calls" else calls[:-1]:
        _valid(call)
    assert len({c.id for c in calls}) == len(calls)


def test_streamed_call_is_rebuilt_by_the_client(client: openai.OpenAI, tools_server: Server) -> None:
    """The same seed streamed and not: the raw deltas open each call with index, id, type, name and empty
    arguments, then carry argument fragments only; the client's stream helper rebuilds the call and parses its
    arguments into the pydantic model the tool was declared with (`pydantic_function_tool`, strict)."""

    class GetWeather(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        city: str = pydantic.Field(max_length=12)
        unit: str = pydantic.Field(pattern="^(celsius|fahrenheit)$")

    tool = openai.pydantic_function_tool(GetWeather)
    kwargs = dict(model=tools_server.model, messages=ASK, tools=[tool], max_tokens=MAX_TOKENS, seed=11,
                  tool_choice={"type": "function", "function": {"name": "GetWeather"}})
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]

    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    opening, fragments = calls[0][0], [c[0] for c in calls[1:]]
    assert (opening.index, opening.id, opening.type, opening.function.name, opening.function.arguments) == (
        0, opening.id, "function", "GetWeather", "")
    assert opening.id.startswith("call_") and fragments
    assert all(f.index == 0 and f.id is None and f.function.name is None for f in fragments)
    assert "".join(f.function.arguments for f in fragments) == whole.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.function.arguments == whole.function.arguments
    assert call.function.parsed_arguments == GetWeather.model_validate_json(whole.function.arguments)


def test_tool_choice_none_and_auto(client: openai.OpenAI, tools_server: Server) -> None:
    """none: no tools in the prompt and no calls parsed; auto: the tools are in the prompt, and whatever the model
    writes, any call in its reply is valid."""
    bare = client.chat.completions.create(model=tools_server.model, messages=ASK, max_tokens=8, seed=1)
    none = client.chat.completions.create(model=tools_server.model, messages=ASK, tools=TOOLS, tool_choice="none",
                                          max_tokens=8, seed=1)
    assert none.usage.prompt_tokens == bare.usage.prompt_tokens
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].message.content == bare.choices[0].message.content
    auto = client.chat.completions.create(model=tools_server.model, messages=ASK, tools=TOOLS, max_tokens=64, seed=1)
    assert auto.usage.prompt_tokens > bare.usage.prompt_tokens + 100
    for call in auto.choices[0].message.tool_calls or []:
        _valid(call)


def test_tool_result_round_trip_renders_as_transformers_does(client: openai.OpenAI, tools_server: Server) -> None:
    """The call the server made goes back with its result; the prompt the server builds has exactly the tokens
    of transformers' `apply_chat_template(tools=...)` over the same conversation, for the server's checkpoint."""
    transformers = pytest.importorskip("transformers")
    first = client.chat.completions.create(model=tools_server.model, messages=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=MAX_TOKENS, seed=4)
    call = first.choices[0].message.tool_calls[0]
    messages = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'}]
    second = client.chat.completions.create(model=tools_server.model, messages=messages, tools=TOOLS,
                                            tool_choice="none", max_tokens=4, seed=1)
    assert second.choices[0].message.tool_calls is None

    hf = transformers.AutoTokenizer.from_pretrained(tools_server.ckpt)
    function = {"name": call.function.name, "arguments": json.loads(call.function.arguments)}
    theirs = [*ASK, {"role": "assistant", "content": "",
                     "tool_calls": [{"id": call.id, "type": "function", "function": function}]},
              {"role": "tool", "tool_call_id": call.id, "name": call.function.name, "content": messages[-1]["content"]}]
    text = hf.apply_chat_template(theirs, tokenize=False, add_generation_prompt=True)
    assert '<tool_response>\n{"temperature": 21, "sky": "clear"}\n</tool_response>' in text
    assert second.usage.prompt_tokens == len(hf(text, add_special_tokens=False)["input_ids"])
    with_tools = hf.apply_chat_template(theirs, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    again = client.chat.completions.create(model=tools_server.model, messages=messages, tools=TOOLS, max_tokens=1,
                                           seed=1)
    assert again.usage.prompt_tokens == len(hf(with_tools, add_special_tokens=False)["input_ids"])


BAD_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                         "properties": {"a": {"type": 12}}}}}


@pytest.mark.parametrize("extra,param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [BAD_TOOL]}, "tools.0.function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools.0.function.parameters"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
    ({"tools": TOOLS, "messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "21"}]},
     "messages.1.tool_call_id"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": TOOLS, "stop": ["x"]}, "stop"),
    ({"functions": [{"name": "f"}]}, "functions"),
])
def test_what_cannot_be_served_is_a_400_naming_it(http: httpx.Client, tools_server: Server, extra: dict,
                                                  param: str) -> None:
    r = http.post("/v1/chat/completions", json={"model": tools_server.model, "messages": ASK, "max_tokens": 4,
                                                 **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_function_schemas_keep_their_definitions() -> None:
    """Arguments schemas with `$defs` (pydantic's nested models) keep working one level down, per function."""
    nested = {"type": "object", "properties": {"where": {"$ref": "#/$defs/Place"}}, "required": ["where"],
              "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}},
                                  "required": ["city"]}}}
    schema = calls_schema({"a": nested, "b": nested})
    jsonschema.validate({"name": "b", "arguments": {"where": {"city": "Oslo"}}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "b", "arguments": {"where": {"town": "Oslo"}}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "c", "arguments": {"where": {"city": "Oslo"}}}, schema)
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": ASK, "tools": [
        {"type": "function", "function": {"name": "a", "parameters": nested}}], "parallel_tool_calls": False})
    plan = plan_tools(req)
    assert plan.max_calls == 1 and plan.constraint is not None and plan.tools[0]["function"]["name"] == "a"


def test_langchain_rebuilds_streamed_calls(tools_server: Server) -> None:
    """langchain-openai's own accumulation of streamed tool-call chunks gives the call the whole reply has."""
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=tools_server.model, base_url=f"{tools_server.base_url}/v1", api_key=tools_server.api_key,
                     max_tokens=MAX_TOKENS, seed=8, max_retries=0, timeout=120)
    bound = llm.bind_tools(TOOLS, tool_choice="get_weather")
    whole = bound.invoke(ASK)
    streamed = None
    for chunk in bound.stream(ASK):
        streamed = chunk if streamed is None else streamed + chunk
    assert len(whole.tool_calls) == 1 and not whole.invalid_tool_calls
    assert [(c["name"], c["args"], c["id"]) for c in streamed.tool_calls] == [
        ("get_weather", whole.tool_calls[0]["args"], streamed.tool_calls[0]["id"])]
    jsonschema.validate(streamed.tool_calls[0]["args"], WEATHER)


# -- markers that are special tokens ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def special_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tools_run with `<tool_call>` and `</tool_call>` added to the tokenizer as special tokens (as some models'
    vocabularies have them): a decode skips them, so the reply's text holds no marker unless the engine keeps
    them. The model gets logits for the two new ids."""
    run = tmp_path_factory.mktemp("special_markers_run")
    tok = load_tokenizer(tiny_run)
    assert tok.add_special_tokens([TOOL_CALL_START, TOOL_CALL_END]) == 2
    tok.save(str(run / "tokenizer.json"))
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(TOOLS_MODEL, vocab_size=tok.get_vocab_size()))
    save_checkpoint(run / "ckpt", 1, model, run / "tokenizer.json")
    return run


def test_special_token_markers_reach_the_parser_in_the_engine(special_run: Path) -> None:
    """The grammar writes both markers as their one token each, and the text keeps them (only them: other
    special tokens are still skipped), so the call is found."""
    from homegrown.bundle import load_bundle
    from homegrown.serve.engine import Engine, GenerationParams
    from homegrown.serve.tool_parser import ToolCallParser

    tok = load_tokenizer(special_run)
    start, end = tok.token_to_id(TOOL_CALL_START), tok.token_to_id(TOOL_CALL_END)
    plan = plan_tools(ChatCompletionRequest.model_validate(
        {"model": "m", "messages": ASK, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}))
    engine = Engine(load_bundle(special_run), ServeConfig(max_batch=1)).start()
    try:
        assert engine.grammars.marker_ids(plan.constraint) == {start, end}
        text, ids, _, reason = engine.generate(engine.encode("<|user|>hi<|end|>"), [GenerationParams(
            max_tokens=MAX_TOKENS, seed=2, constraint=plan.constraint)])[0]
    finally:
        engine.stop(drain=False, timeout=30)
    assert reason == "stop" and ids[0] == start and end in ids
    assert text.startswith(TOOL_CALL_START + "\n") and text.endswith("\n" + TOOL_CALL_END)
    assert text == tok.decode(ids, skip_special_tokens=False)
    parser = ToolCallParser(plan.max_calls)
    parser.feed(text)
    parser.finish()
    assert len(parser.calls) == 1 and not parser.content
    jsonschema.validate(json.loads(parser.calls[0].arguments), SCHEMAS[parser.calls[0].name])


def test_special_token_trigger_makes_a_call_over_http(special_run: Path) -> None:
    """tool_choice auto with the trigger token pushed up (+100): the model opens a call with it, and the official
    client gets the call whole and, streamed, rebuilt from the same deltas — none of the markers left as
    content."""
    trigger = load_tokenizer(special_run).token_to_id(TOOL_CALL_START)
    server = start_server(special_run)
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0,
                               timeout=120)
        kwargs = dict(model=server.model, messages=ASK, tools=TOOLS, parallel_tool_calls=False, seed=4,
                      max_tokens=MAX_TOKENS, logit_bias={str(trigger): 100})
        whole = client.chat.completions.create(**kwargs).choices[0]
        with client.chat.completions.stream(**kwargs) as stream:
            streamed = stream.get_final_completion().choices[0]
    finally:
        server.stop()
    assert whole.finish_reason == streamed.finish_reason == "tool_calls"
    assert whole.message.content is None and not streamed.message.content
    call, = whole.message.tool_calls
    _valid(call)
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == [
        (call.function.name, call.function.arguments)]
