"""Raw HTTP against the real server: error shapes, auth on every guarded path, SSE framing, health, metrics."""

from __future__ import annotations

import json
import re
import socket

import httpx
import pytest

from homegrown.config import ServeConfig
from homegrown.errors import HomegrownError
from homegrown.serve.protocol import parse_generation_defaults
from tests.serve.conftest import Server

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def http(server: Server) -> httpx.Client:
    with httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=60) as c:
        yield c


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    assert body["error"]["message"]
    return body["error"]


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'"text"', b"", b'{"model": 5, "messages": []}',
    b'{"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999999999999999999999}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 0}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ' + b"[" * 900 + b"]" * 900 + b"}",
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ' + b"[" * 100_000 + b"]" * 100_000
    + b"}",
])
def test_malformed_chat_bodies_are_400(http: httpx.Client, body: bytes) -> None:
    r = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert_openai_error(r, 400)


def test_wrong_field_is_named(http: httpx.Client, server: Server) -> None:
    r = http.post("/v1/completions", json={"model": server.model, "prompt": "x", "top_p": 7})
    assert assert_openai_error(r, 400)["param"] == "top_p"


def test_huge_max_tokens_names_both_numbers(http: httpx.Client, server: Server) -> None:
    r = http.post("/v1/completions", json={"model": server.model, "prompt": "hello", "max_tokens": 1000})
    message = assert_openai_error(r, 400)["message"]
    assert "128" in message and "1000" in message


def test_unknown_model_and_path_are_404(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert assert_openai_error(r, 404)["code"] == "model_not_found"
    assert_openai_error(http.get("/v1/no/such/path"), 404)


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
    ("GET", "/api/conversations"),
])
def test_every_guarded_path_needs_the_key(server: Server, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {server.api_key}"}):
        r = httpx.request(method, server.base_url + path, headers=headers, json={}, timeout=30)
        assert assert_openai_error(r, 401)["code"] == "invalid_api_key"


def test_health_and_metrics_are_open(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/health", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    for name in ("homegrown_requests_running", "homegrown_requests_waiting", "homegrown_generation_tokens_total",
                 "homegrown_generation_tokens_per_second", "homegrown_time_to_first_token_seconds_count",
                 "homegrown_time_per_output_token_seconds_count"):
        metric(text, name)


def sse_events(raw: bytes) -> list[str]:
    """Split an SSE body exactly as OpenAI frames it: `data: <payload>\\n\\n`, nothing else."""
    text = raw.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: "):] for e in events]


def test_chat_sse_framing(http: httpx.Client, server: Server) -> None:
    body = {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "n": 2,
            "temperature": 1.0, "seed": 4, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and "usage" in c for c in chunks)
    first = chunks[0]["choices"]
    assert [c["delta"] for c in first] == [{"role": "assistant", "content": ""}] * 2
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 20
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks[1:-1] if c["choices"][0]["index"] == index]
        assert [m["finish_reason"] is not None for m in mine] == [False] * (len(mine) - 1) + [True]
        assert all(c["usage"] is None for c in chunks[:-1])
    plain = http.post("/v1/chat/completions", json={**body, "stream": False}).json()
    streamed = ["".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]
                        if c["choices"][0]["index"] == i) for i in (0, 1)]
    assert streamed == [c["message"]["content"] for c in plain["choices"]]
    assert usage_chunk["usage"] == plain["usage"]


def test_completion_stream_without_usage(http: httpx.Client, server: Server) -> None:
    body = {"model": server.model, "prompt": "Once", "max_tokens": 6, "ignore_eos": True, "stream": True,
            "logprobs": 2}
    with http.stream("POST", "/v1/completions", json=body) as r:
        events = sse_events(r.read())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c and c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    lps = [lp for c in chunks for lp in c["choices"][0]["logprobs"]["token_logprobs"]]
    assert len(lps) == 6 and all(v <= 0 for v in lps)


def test_serve_without_a_checkpoint_is_a_one_line_error(cli, tmp_path) -> None:
    r = cli("serve", str(tmp_path / "missing"), "--port", "1")
    assert r.returncode == 2
    said = " ".join(r.stderr.split())  # however the terminal width wrapped it
    assert "does not exist" in said and "Traceback" not in said


# -- sampling extensions: min_tokens, ignore_eos, logit_bias -------------------------------------------------------


@pytest.fixture(scope="module")
def tok(server: Server):
    from homegrown.tokenizer import load_tokenizer

    return load_tokenizer(server.run_dir)


def test_logit_bias_forces_a_token(http: httpx.Client, server: Server, tok) -> None:
    forced = tok.token_to_id("a")
    assert forced is not None
    for path, body in (("/v1/completions", {"prompt": "The sea"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
        r = http.post(path, json={"model": server.model, "max_tokens": 9, "temperature": 1.0, "seed": 3,
                                  "logit_bias": {str(forced): 100}, **body})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        text = choice["text"] if "text" in choice else choice["message"]["content"]
        assert text == "a" * 9 and choice["finish_reason"] == "length"


def test_logit_bias_minus_100_bans_tokens(http: httpx.Client, server: Server, tok) -> None:
    kept = tok.token_to_id("b")
    banned = {str(i): -100 for i in range(tok.get_vocab_size()) if i != kept}
    r = http.post("/v1/completions", json={"model": server.model, "prompt": "The sea", "max_tokens": 6,
                                           "temperature": 1.0, "seed": 5, "logit_bias": banned})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "b" * 6


def end_tokens(tok) -> dict[str, int]:
    """A +100 bias on both end tokens: without min_tokens/ignore_eos the reply would end at its first token."""
    return {str(tok.token_to_id(t)): 100 for t in ("<|endoftext|>", "<|end|>")}


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "The sea"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
])
def test_min_tokens_and_ignore_eos_hold_off_the_end_token(http: httpx.Client, server: Server, tok, path: str,
                                                          body: dict) -> None:
    base = {"model": server.model, "max_tokens": 12, "temperature": 1.0, "seed": 1, "logit_bias": end_tokens(tok),
            **body}
    usage = http.post(path, json=base).json()
    assert usage["choices"][0]["finish_reason"] == "stop" and usage["usage"]["completion_tokens"] == 0
    held = http.post(path, json={**base, "min_tokens": 5}).json()
    assert held["choices"][0]["finish_reason"] == "stop" and held["usage"]["completion_tokens"] == 5
    ignored = http.post(path, json={**base, "ignore_eos": True}).json()
    assert ignored["choices"][0]["finish_reason"] == "length" and ignored["usage"]["completion_tokens"] == 12
    # Explicit stop_token_ids still stop under ignore_eos (vLLM's rule); min_tokens holds them off too.
    end = tok.token_to_id("<|end|>")
    explicit = {**base, "ignore_eos": True, "stop_token_ids": [end], "logit_bias": {str(end): 100}}
    assert http.post(path, json=explicit).json()["usage"]["completion_tokens"] == 0
    assert http.post(path, json={**explicit, "min_tokens": 3}).json()["usage"]["completion_tokens"] == 3


def test_min_tokens_streams_the_same_reply(http: httpx.Client, server: Server, tok) -> None:
    body = {"model": server.model, "prompt": "Go", "max_tokens": 20, "min_tokens": 7, "temperature": 1.0,
            "seed": 2, "logit_bias": end_tokens(tok), "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/completions", json=body) as r:
        chunks = [json.loads(e) for e in sse_events(r.read())[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 7
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == "stop"


def test_stop_strings_wait_for_min_tokens(http: httpx.Client, server: Server, tok) -> None:
    forced = tok.token_to_id("a")
    body = {"model": server.model, "prompt": "x", "max_tokens": 10, "temperature": 0, "ignore_eos": True,
            "logit_bias": {str(forced): 100}, "stop": ["aa"]}
    assert http.post("/v1/completions", json=body).json()["choices"][0]["text"] == ""
    r = http.post("/v1/completions", json={**body, "min_tokens": 4}).json()["choices"][0]
    # The first 4 tokens are never cut; the stop string is looked for in what comes after them.
    assert r["text"] == "aaaa" and r["finish_reason"] == "stop"


@pytest.mark.parametrize("extra,param", [
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 100.5}}, "logit_bias"),
    ({"logit_bias": {"-5": 1}}, "logit_bias"),
    ({"logit_bias": {"5": "x"}}, "logit_bias.5"),
    ({"logit_bias": {"99999": 1}}, "logit_bias"),
    ({"stop_token_ids": [99999]}, "stop_token_ids"),
    ({"min_tokens": 20, "max_tokens": 10}, "min_tokens"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 500}, "min_tokens"),
    ({"ignore_eos": "yes please"}, "ignore_eos"),
])
def test_bad_sampling_extensions_are_named(http: httpx.Client, server: Server, extra: dict, param: str) -> None:
    r = http.post("/v1/completions", json={"model": server.model, "prompt": "hi", **extra})
    assert assert_openai_error(r, 400)["param"] == param


# -- refusing instead of ignoring ---------------------------------------------------------------------------------

CHAT_MIN = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("extra,param", [
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"store": True}, "store"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"metadata": {"a": "b"}}, "metadata"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages.0.name"),
    ({"messages": [{"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}]},
     "messages.0.function_call"),
])
def test_unsupported_chat_parameters_are_refused_by_name(http: httpx.Client, server: Server, extra: dict,
                                                         param: str) -> None:
    error = assert_openai_error(http.post("/v1/chat/completions", json={"model": server.model, **CHAT_MIN, **extra}),
                                400)
    assert error["param"] == param and "is not supported" in error["message"] and param in error["message"]
    assert error["code"] == "unsupported_parameter"


@pytest.mark.parametrize("extra,param", [({"suffix": "end"}, "suffix"), ({"best_of": 3}, "best_of"),
                                         ({"tools": []}, "tools"), ({"tool_choice": "auto"}, "tool_choice")])
def test_unsupported_completion_parameters_are_refused_by_name(http: httpx.Client, server: Server, extra: dict,
                                                               param: str) -> None:
    r = http.post("/v1/completions", json={"model": server.model, "prompt": "hi", "max_tokens": 2, **extra})
    error = assert_openai_error(r, 400)
    assert error["param"] == param and "is not supported" in error["message"]


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {**CHAT_MIN, "temprature": 0.5}, "temprature"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "mood": "x"}]}, "messages.0.mood"),
    ("/v1/chat/completions", {**CHAT_MIN, "stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"),
    ("/v1/completions", {"prompt": "hi", "max_new_tokens": 3}, "max_new_tokens"),
])
def test_unknown_parameters_are_refused_by_name(http: httpx.Client, server: Server, path: str, body: dict,
                                                param: str) -> None:
    error = assert_openai_error(http.post(path, json={"model": server.model, **body}), 400)
    assert error["param"] == param and error["message"] == f"Unrecognized request argument supplied: {param}"


def test_switched_off_and_informational_fields_are_accepted(http: httpx.Client, server: Server) -> None:
    """What ordinary clients send: null for anything unset, the default value of an unsupported feature, `user`,
    and an assistant message passed back as the openai client returned it."""
    body = {"model": server.model, "max_tokens": 2, "n": 1, "seed": 1, "user": "u-1", "store": False,
            "response_format": {"type": "text"}, "tools": None, "tool_choice": None, "parallel_tool_calls": None,
            "stream": False, "stream_options": None, "modalities": ["text"], "metadata": None,
            "messages": [{"role": "user", "content": "hi", "name": None},
                         {"role": "assistant", "content": "hello", "refusal": None, "tool_calls": None,
                          "function_call": None, "audio": None, "annotations": []},
                         {"role": "user", "content": [{"type": "text", "text": "again"}]}]}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    r = http.post("/v1/completions", json={"model": server.model, "prompt": "hi", "max_tokens": 2, "suffix": None,
                                           "best_of": 1, "user": "u-1"})
    assert r.status_code == 200, r.text


# -- invalid Unicode ----------------------------------------------------------------------------------------------

BAD = "a\\u0000b\\udcff"  # as JSON spells it: a NUL (valid) and a lone low surrogate (not valid Unicode)


@pytest.mark.parametrize("path,template,param", [
    ("/v1/chat/completions", '{"model": "M", "messages": [{"role": "user", "content": "BAD"}]}',
     "messages.0.content"),
    ("/v1/chat/completions", '{"model": "M", "messages": [{"role": "user", "content": [{"type": "text", '
                             '"text": "BAD"}]}]}', "messages.0.content.0.text"),
    ("/v1/chat/completions", '{"model": "M", "messages": [{"role": "user", "content": "hi"}], "stop": ["BAD"]}',
     "stop.0"),
    ("/v1/chat/completions", '{"model": "M", "messages": [{"role": "user", "content": "hi"}], "stop": "BAD"}',
     "stop"),
    ("/v1/chat/completions", '{"model": "BAD", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    ("/v1/chat/completions", '{"model": "M", "messages": [{"role": "user", "content": "hi"}], "BAD": 1}',
     "body (a key)"),
    ("/v1/chat/completions", '{"model": "M", "messages": [{"role": "user", "content": "hi"}], "user": "BAD"}',
     "user"),
    ("/v1/completions", '{"model": "M", "prompt": "BAD"}', "prompt"),
    ("/v1/completions", '{"model": "M", "prompt": ["ok", "BAD"]}', "prompt.1"),
    ("/v1/completions", '{"model": "M", "prompt": "hi", "logit_bias": {"BAD": 1}}', "logit_bias (a key)"),
    ("/api/conversations", '{"title": "BAD"}', "title"),
    ("/api/conversations", '{"system_prompt": "BAD"}', "system_prompt"),
])
def test_invalid_unicode_is_400_naming_the_string(http: httpx.Client, server: Server, path: str, template: str,
                                                  param: str) -> None:
    body = template.replace("BAD", BAD).replace('"M"', json.dumps(server.model))
    r = http.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
    error = assert_openai_error(r, 400)
    assert error["param"] == param and "not valid Unicode" in error["message"]


def test_invalid_unicode_in_a_stored_message_is_400(http: httpx.Client) -> None:
    conv = http.post("/api/conversations", json={"title": "unicode"}).json()
    body = '{"role": "user", "content": "BAD"}'.replace("BAD", BAD).encode()
    r = http.post(f"/api/conversations/{conv['id']}/messages", content=body,
                  headers={"Content-Type": "application/json"})
    assert assert_openai_error(r, 400)["param"] == "content"
    r = http.patch(f"/api/conversations/{conv['id']}", content=b'{"title": "\\ud800"}',
                   headers={"Content-Type": "application/json"})
    assert assert_openai_error(r, 400)["param"] == "title"
    assert http.get(f"/api/conversations/{conv['id']}").json()["messages"] == []


def test_surrogates_as_raw_utf8_bytes_are_400_too(http: httpx.Client, server: Server) -> None:
    """UTF-8-encoded surrogates (ED B3 BF) are not UTF-8 either, whatever a lenient decoder makes of them."""
    body = b'{"model": "%s", "prompt": "a\xed\xb3\xbfb"}' % server.model.encode()
    assert_openai_error(http.post("/v1/completions", content=body, headers={"Content-Type": "application/json"}),
                        400)
    assert_openai_error(http.post("/v1/completions", content=b'{"model": "m", "prompt": "\xff"}',
                                  headers={"Content-Type": "application/json"}), 400)


def test_nul_is_valid_text(http: httpx.Client, server: Server) -> None:
    r = http.post("/v1/chat/completions", json={"model": server.model, "max_tokens": 2,
                                                "messages": [{"role": "user", "content": "a\u0000b"}]})
    assert r.status_code == 200, r.text


# -- body size cap ------------------------------------------------------------------------------------------------

LIMIT = ServeConfig.max_body_bytes


def raw_exchange(server: Server, request: bytes) -> tuple[int, dict]:
    """Send bytes on a fresh connection, read until the server closes it; (status, JSON body)."""
    url = httpx.URL(server.base_url)
    received = b""
    with socket.create_connection((url.host, url.port), timeout=60) as s:
        s.sendall(request)
        try:
            while chunk := s.recv(65536):
                received += chunk
        except ConnectionResetError:  # the server does not read the rest of a refused body
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def head(server: Server, path: str, *lines: str) -> bytes:
    host = httpx.URL(server.base_url).netloc.decode()
    return "\r\n".join([f"POST {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {server.api_key}",
                        "Content-Type: application/json", *lines, "", ""]).encode()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/api/conversations"])
def test_declared_oversized_body_is_413_before_it_is_sent(server: Server, path: str) -> None:
    status, body = raw_exchange(server, head(server, path, "Content-Length: 20000000"))
    assert status == 413 and set(body["error"]) == ERROR_KEYS and str(LIMIT) in body["error"]["message"]
    assert body["error"]["code"] == "request_too_large"


def test_chunked_body_is_counted_as_it_arrives(server: Server) -> None:
    chunk = b" " * (LIMIT + 1)  # JSON whitespace: only its size is wrong
    request = head(server, "/v1/completions", "Transfer-Encoding: chunked") + b"%x\r\n" % len(chunk) + chunk
    status, body = raw_exchange(server, request)
    assert status == 413 and body["error"]["code"] == "request_too_large"


def test_chunked_body_under_the_limit_is_served(http: httpx.Client, server: Server) -> None:
    payload = json.dumps({"model": server.model, "prompt": "hi", "max_tokens": 2}).encode()
    r = http.post("/v1/completions", content=iter([payload[:10], payload[10:]]),
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text


# -- server-side sampling defaults --------------------------------------------------------------------------------


def test_generation_config_fills_what_a_request_leaves_out(defaults_server: Server, tok) -> None:
    from tests.serve.conftest import FORCED_TOKEN

    with httpx.Client(base_url=defaults_server.base_url, headers=defaults_server.headers(), timeout=60) as c:
        body = {"model": defaults_server.model, "prompt": "The sea", "max_tokens": 8}
        r = c.post("/v1/completions", json=body).json()
        assert r["choices"][0]["text"] == FORCED_TOKEN * 8 and r["choices"][0]["finish_reason"] == "length"
        # A field the request sets is its own: here the end token wins again.
        mine = {**body, "ignore_eos": False, "logit_bias": end_tokens(tok)}
        assert c.post("/v1/completions", json=mine).json()["usage"]["completion_tokens"] == 0


@pytest.mark.parametrize("config,words", [
    ("{not json", "not valid JSON"), ("[1]", "must be a JSON object"), ('{"n": 2}', "cannot set n"),
    ('{"temperature": 9}', "temperature"), ('{"logit_bias": {"x": 1}}', "logit_bias"),
])
def test_bad_generation_config_is_named(config: str, words: str) -> None:
    with pytest.raises(HomegrownError, match="--generation-config") as e:
        parse_generation_defaults(config)
    assert words in str(e.value)


def test_bad_generation_config_is_a_cli_error(cli, serve_run) -> None:
    r = cli("serve", str(serve_run), "--port", "1", "--generation-config", '{"max_tokens": "many"}')
    assert r.returncode == 2, r.stderr
    said = " ".join(r.stderr.split())
    assert "--generation-config: max_tokens" in said and "Traceback" not in said


@pytest.mark.parametrize("path,body", [
    # langchain-openai ChatOpenAI(streaming=True): model, stream, stream_options (stream_usage), a named message
    ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": True}, "temperature": 0.7,
                              "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "hi"}]}),
    # langchain-openai OpenAI (completions): its _default_params as sent when nothing is configured
    ("/v1/completions", {"prompt": ["hi"], "temperature": 0.7, "top_p": 1, "frequency_penalty": 0,
                         "presence_penalty": 0, "n": 1, "logit_bias": None, "seed": None, "logprobs": None,
                         "max_tokens": 4, "stream": False}),
])
def test_what_langchain_sends_by_default_is_accepted(http: httpx.Client, server: Server, path: str,
                                                     body: dict) -> None:
    r = http.post(path, json={"model": server.model, "max_tokens": 4, **body})
    assert r.status_code == 200, r.text
