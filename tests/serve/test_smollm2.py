"""The official `openai` client against the real `homegrown serve` of an imported SmolLM2-135M-Instruct.

Greedy decoding (temperature 0) makes every answer deterministic, and a real instruct model's answer can be
checked for what it says: the capital of France is Paris, in a sentence, ending at the model's own end of turn
(<|im_end|>, from its ChatML template and generation_config) — finish_reason "stop", no marker text left over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pydantic
import pytest

from homegrown.bundle import load_chat_format
from homegrown.serve.launch import ServerProcess, launch

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MODEL = "smollm2"
MAX_LEN = 1024
"""Served context: a KV cache of 4 × 1,024 tokens (47 MB per slot) instead of 11 × 8,192 (4 GiB)."""


@pytest.fixture(scope="module")
def smol_server(smol_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("smol_serve")
    srv = launch(smol_run, "--device", "cpu", "--model-name", MODEL, "--db-url", f"sqlite:///{tmp / 'c.sqlite'}",
                 "--max-model-len", str(MAX_LEN), "--max-batch", "4", log=tmp / "serve.log", timeout=300)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(smol_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{smol_server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


def _is_sentence_about_paris(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][^\n]*\bParis\b[^\n]*[.!]", text.strip())) and len(text.split()) >= 4


def test_capital_of_france_streams_a_sentence_with_usage(client: openai.OpenAI, smol_run: Path) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=48)
    answer = whole.choices[0].message.content
    assert _is_sentence_about_paris(answer), answer
    assert whole.choices[0].finish_reason == "stop"
    assert "<|im_end|>" not in answer and "<|im_start|>" not in answer

    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=48,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    tok, chat = load_chat_format(smol_run)
    prompt_ids = tok.encode(chat.render(QUESTION), add_special_tokens=False).ids
    assert usage.prompt_tokens == len(prompt_ids) == whole.usage.prompt_tokens
    # The reply's tokens plus the <|im_end|> it stopped at, as OpenAI and vLLM count a stop token.
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.completion_tokens in (len(tok.encode(answer, add_special_tokens=False).ids) + k for k in (0, 1))


def test_completions_start_text_bare_as_smollm2_does(client: openai.OpenAI, smol_run: Path) -> None:
    """SmolLM2's tokenizer adds no BOS (its GGUF: add_bos_token false), so a plain-text prompt is its tokens
    alone — no <|endoftext|> in front, as our own models get."""
    prompt = "The capital of France is"
    tok, _ = load_chat_format(smol_run)
    ids = tok.encode(prompt, add_special_tokens=False).ids
    r = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=8, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert r.usage.prompt_tokens == len(ids)
    assert lp.tokens[:len(ids)] == [tok.decode([i]) for i in ids]
    assert lp.token_logprobs[0] is None and all(x is not None for x in lp.token_logprobs[1:])
    assert r.choices[0].text.startswith(prompt) and "Paris" in r.choices[0].text[len(prompt):]


def test_empty_completion_prompt_is_a_clear_400(client: openai.OpenAI) -> None:
    """Without a BOS to start from, an empty prompt has no token to continue: a 400 naming it, not a 500."""
    with pytest.raises(openai.BadRequestError, match="prompt is empty"):
        client.completions.create(model=MODEL, prompt="", max_tokens=4)


def test_served_context_is_max_model_len(client: openai.OpenAI) -> None:
    assert client.models.retrieve(MODEL).model_extra["max_model_len"] == MAX_LEN
    with pytest.raises(openai.BadRequestError, match=f"maximum context length is {MAX_LEN} tokens"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Paris " * MAX_LEN}],
                                       max_tokens=4)


def test_langchain_agent_calls_a_tool_and_answers_from_its_result(smol_server: ServerProcess) -> None:
    """A real agent loop from a library nobody here wrote: langchain's `create_agent` over `ChatOpenAI`, with a
    Python tool. SmolLM2's template has no tool support, so the tool reaches it through the Hermes fallback
    prompt. The loop is made deterministic with langchain's own middleware: the first model call must call the
    tool (tool_choice named), the one after its result must answer (tool_choice none); greedy decoding picks the
    arguments — SmolLM2 reads the city off the question — and the answer carries the tool's result."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    asked: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        asked.append(city)
        return f"It is 21 degrees Celsius and sunny in {city}."

    @wrap_model_call
    def call_then_answer(request, handler):
        answered = any(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="none" if answered else "get_weather"))

    llm = ChatOpenAI(model=MODEL, base_url=f"{smol_server.base_url}/v1", api_key="unused", temperature=0,
                     max_tokens=40, max_retries=0, timeout=300)
    agent = create_agent(llm, tools=[get_weather], middleware=[call_then_answer])
    messages = agent.invoke({"messages": [{"role": "user", "content": "What is the weather like in Paris?"}]})[
        "messages"]
    assert asked == ["Paris"]
    call, result, answer = messages[1], messages[2], messages[-1]
    assert isinstance(call, AIMessage) and call.tool_calls[0]["args"] == {"city": "Paris"}
    assert call.tool_calls[0]["id"].startswith("call_") and not call.invalid_tool_calls
    assert isinstance(result, ToolMessage) and result.tool_call_id == call.tool_calls[0]["id"]
    assert isinstance(answer, AIMessage) and not answer.tool_calls and len(messages) == 4
    assert "21 degrees Celsius and sunny" in answer.content


class CountryCapital(pydantic.BaseModel):
    country: str = pydantic.Field(max_length=20)
    capital: str = pydantic.Field(max_length=20)


def test_structured_output_parses_into_the_schema(client: openai.OpenAI) -> None:
    """`parse` with a pydantic model: the grammar (strings of at most 20 characters, so at most ~300 bytes
    whatever is sampled) makes the reply valid JSON for the schema, and a real model fills it with the answer."""
    question = [{"role": "user", "content": "What is the capital of France? Answer in JSON with the country and "
                                            "its capital."}]
    r = client.chat.completions.parse(model=MODEL, messages=question, temperature=0, max_tokens=300,
                                      response_format=CountryCapital)
    reply = r.choices[0]
    assert reply.finish_reason == "stop"
    jsonschema.validate(json.loads(reply.message.content), CountryCapital.model_json_schema())
    assert reply.message.parsed.capital == "Paris" and reply.message.parsed.country.lower() == "france"
