"""schemathesis generates requests from the server's own /openapi.json, valid and invalid ones, and sends them to
the real process; whatever it sends, the answer must not be a 5xx, and an error must have OpenAI's shape.

Operations are driven through hypothesis directly (schemathesis' pytest fixture loader does not work with
pytest 9); examples are limited so the whole run stays near a minute.
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests.serve.conftest import Server

EXAMPLES = 8


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_no_server_errors(api_schema: schemathesis.BaseSchema, server: Server,
                          mode: schemathesis.GenerationMode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/models", "/v1/chat/completions", "/v1/completions", "/health"}
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=server.base_url, headers=server.headers(), timeout=120)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} body={case.body!r} -> {response.status_code}: "
                                f"{response.text[:300]}")
            elif response.status_code >= 400:
                error = response.json().get("error", {})
                if set(error) != {"message", "type", "param", "code"}:
                    failures.append(f"{case.method} {case.path} -> {response.status_code} not OpenAI-shaped: "
                                    f"{response.text[:300]}")

        try:
            check()
        except Unsatisfiable:  # nothing to make invalid (e.g. GET /health has no inputs): nothing to test
            assert mode == schemathesis.GenerationMode.NEGATIVE
    assert not failures, "\n".join(failures[:10])


MUTATIONS = ("unknown field", "unsupported field", "invalid unicode")


def _string_paths(value: object, path: tuple = ()) -> list[tuple]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _string_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _string_paths(v, (*path, i))]
    return []


def _with_surrogate(body: dict, path: tuple) -> dict:
    copy = json.loads(json.dumps(body))
    if not path:  # no string anywhere: a key of its own
        return {**copy, "\udcff": 1}
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] += "\udcff"
    return copy


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_unknown_unsupported_and_invalid_unicode_bodies_are_400(api_schema: schemathesis.BaseSchema,
                                                                 server: Server, mutation: str) -> None:
    """Valid bodies from the schema, each spoiled one way: a field nobody defines, a field of OpenAI's API we do
    not implement, or a lone surrogate in one of its strings (as a JSON escape). Every one must be a 400 in
    OpenAI's shape (naming the field where there is one), never a 5xx or a silent success."""
    operations = [op for op in (r.ok() for r in api_schema.get_all_operations())
                  if op.method.upper() in ("POST", "PATCH") and op.body]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/api/conversations"}
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE), data=st.data())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case, data: st.DataObject) -> None:
            body = case.body if isinstance(case.body, dict) else {}
            param: str | None
            if mutation == "unknown field":
                param = data.draw(st.sampled_from(["temprature", "max_new_tokens", "frobnicate"]))
                body = {**body, param: data.draw(st.sampled_from([1, "x", True, [1], {"a": 1}]))}
            elif mutation == "unsupported field":
                param = data.draw(st.sampled_from(["functions", "function_call", "store"]))
                body = {**body, param: {"functions": [{"name": "f"}], "function_call": "auto",
                                        "store": True}[param]}
            else:
                paths = _string_paths(body)
                body = _with_surrogate(body, data.draw(st.sampled_from(paths)) if paths else ())
                param = None
            path = case.path.format(**(case.path_parameters or {}))
            response = httpx.request(case.method, server.base_url + path, timeout=120,
                                     headers={**server.headers(), "Content-Type": "application/json"},
                                     content=json.dumps(body).encode(),  # ensure_ascii: the surrogate as \udcff
                                     **({"params": case.query} if case.query else {}))
            error = response.json().get("error", {}) if response.headers.get("content-type", "").startswith(
                "application/json") else {}
            if response.status_code != 400 or set(error) != {"message", "type", "param", "code"} or (
                    param is not None and error.get("param") != param):
                failures.append(f"{case.method} {path} body={body!r} -> {response.status_code}: "
                                f"{response.text[:300]}")

        check()
    assert not failures, "\n".join(failures[:10])
