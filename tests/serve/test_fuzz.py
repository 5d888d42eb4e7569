"""schemathesis generates requests from the server's own /openapi.json, valid and invalid ones, and sends them to
the real process; whatever it sends, the answer must not be a 5xx, and an error must have OpenAI's shape.

Operations are driven through hypothesis directly (schemathesis' pytest fixture loader does not work with
pytest 9); examples are limited so the whole run stays near a minute.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
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
