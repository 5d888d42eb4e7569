"""The official `openai` client against the real `homegrown serve` process: switching is a base_url change."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.serve.conftest import Server

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)


def test_models_lists_the_served_model(client: openai.OpenAI, server: Server) -> None:
    assert [m.id for m in client.models.list()] == [server.model]
    assert client.models.retrieve(server.model).owned_by == "homegrown"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_chat_completion_with_usage(client: openai.OpenAI, server: Server) -> None:
    r = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=12, seed=1,
                                       extra_body={"ignore_eos": True})
    assert r.object == "chat.completion" and r.model == server.model
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_seed_reproduces_text(client: openai.OpenAI, server: Server) -> None:
    def ask(seed: int) -> str:
        return client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=20, seed=seed,
                                              temperature=1.0, extra_body={"ignore_eos": True}
                                              ).choices[0].message.content

    assert ask(42) == ask(42)
    assert ask(42) != ask(43)


def test_n_choices(client: openai.OpenAI, server: Server) -> None:
    r = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=10, n=2, seed=5,
                                       extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content


def test_stop_string(client: openai.OpenAI, server: Server) -> None:
    kwargs = dict(model=server.model, prompt="The sea", max_tokens=30, temperature=0, extra_body={"ignore_eos": True})
    text = client.completions.create(**kwargs).choices[0].text
    assert len(text) > 8
    stop = text[4:7]
    cut = client.completions.create(**kwargs, stop=stop)
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_streaming_chat_matches_non_streaming(client: openai.OpenAI, server: Server) -> None:
    kwargs = dict(model=server.model, messages=CHAT, max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_async_client_concurrent_requests(server: Server) -> None:
    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key,
                                      max_retries=0) as aclient:
            calls = [aclient.completions.create(model=server.model, prompt=f"Item {i}:", max_tokens=8, seed=i)
                     for i in range(6)]
            return [r.choices[0].text for r in await asyncio.gather(*calls)]

    texts = asyncio.run(main())
    assert len(texts) == 6


def test_async_streaming(server: Server) -> None:
    async def main() -> str:
        async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key,
                                      max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(model=server.model, messages=CHAT, max_tokens=8,
                                                           stream=True, seed=9)
            return "".join([c.choices[0].delta.content or "" async for c in stream])

    assert asyncio.run(main()) == asyncio.run(main())


def test_error_classes(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128") as e:
        client.completions.create(model=server.model, prompt="hi", max_tokens=500)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=-3)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=CHAT)
    bad = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_vllm_extensions_through_extra_body(client: openai.OpenAI, server: Server) -> None:
    """min_tokens and ignore_eos travel in extra_body, as with vLLM; a +100 logit_bias on the end-of-turn token
    makes the reply end at once unless they hold it off."""
    from homegrown.tokenizer import load_tokenizer

    end = str(load_tokenizer(server.run_dir).token_to_id("<|end|>"))
    kwargs = dict(model=server.model, messages=CHAT, max_tokens=10, seed=1, logit_bias={end: 100})
    assert client.chat.completions.create(**kwargs).usage.completion_tokens == 0
    held = client.chat.completions.create(**kwargs, extra_body={"min_tokens": 4})
    assert held.usage.completion_tokens == 4 and held.choices[0].finish_reason == "stop"
    ignored = client.chat.completions.create(**kwargs, extra_body={"ignore_eos": True})
    assert ignored.usage.completion_tokens == 10 and ignored.choices[0].finish_reason == "length"


def test_unsupported_features_are_refused_not_ignored(client: openai.OpenAI, server: Server) -> None:
    function = {"name": "get_weather", "parameters": {"type": "object"}}
    with pytest.raises(openai.BadRequestError, match=r"not supported.*use tools") as e:
        client.chat.completions.create(model=server.model, messages=CHAT, extra_body={"functions": [function]})
    assert e.value.param == "functions"
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: top_n") as e:
        client.chat.completions.create(model=server.model, messages=CHAT, extra_body={"top_n": 3})
    assert e.value.param == "top_n"
    ok = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=2, user="someone",
                                        response_format={"type": "text"}, store=False)
    assert ok.choices[0].message.role == "assistant"
