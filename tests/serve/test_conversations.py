"""/api/conversations through the real `homegrown serve` on loopback: the flow the chat page uses, the API
key guard, and OpenAI-shaped 400/404 errors for every kind of bad request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture
def api(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.api_key}"},
                      timeout=30) as client:
        yield client


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["message"]
    return body["error"]


def test_conversation_lifecycle(api: httpx.Client) -> None:
    made = api.post("/api/conversations", json={"title": "Packaging", "model": "tiny", "system_prompt": "Be brief.",
                                                "temperature": 0.5})
    assert made.status_code == 200, made.text
    conv = made.json()
    assert conv["object"] == "conversation" and conv["id"].startswith("conv_") and conv["messages"] == []
    assert (conv["title"], conv["model"], conv["system_prompt"], conv["temperature"]) == (
        "Packaging", "tiny", "Be brief.", 0.5)
    other = api.post("/api/conversations", json={}).json()
    assert other["title"] == "New chat" and other["temperature"] is None

    for role, content in [("user", "How do I build a wheel?"), ("assistant", "Run `python -m build`.")]:
        msg = api.post(f"/api/conversations/{conv['id']}/messages", json={"role": role, "content": content})
        assert msg.status_code == 200, msg.text
        assert (msg.json()["role"], msg.json()["content"]) == (role, content)

    listed = api.get("/api/conversations").json()
    assert listed["object"] == "list"
    ids = [c["id"] for c in listed["data"]]
    assert ids.index(conv["id"]) < ids.index(other["id"]), "the conversation just written to comes first"
    assert "messages" not in listed["data"][0], "the list stays small: no messages"

    patched = api.patch(f"/api/conversations/{conv['id']}", json={"title": "Wheels", "temperature": 1.1})
    assert patched.status_code == 200, patched.text
    got = api.get(f"/api/conversations/{conv['id']}").json()
    assert (got["title"], got["temperature"], got["system_prompt"]) == ("Wheels", 1.1, "Be brief.")
    assert [(m["role"], m["content"]) for m in got["messages"]] == [
        ("user", "How do I build a wheel?"), ("assistant", "Run `python -m build`.")]

    deleted = api.delete(f"/api/conversations/{conv['id']}")
    assert deleted.json() == {"id": conv["id"], "object": "conversation.deleted", "deleted": True}
    assert api.get(f"/api/conversations/{conv['id']}").status_code == 404
    assert conv["id"] not in [c["id"] for c in api.get("/api/conversations").json()["data"]]


def test_every_endpoint_needs_the_api_key(server: Any, api: httpx.Client) -> None:
    conv_id = api.post("/api/conversations", json={"title": "guarded"}).json()["id"]
    calls = [("GET", "/api/conversations", None), ("POST", "/api/conversations", {"title": "x"}),
             ("GET", f"/api/conversations/{conv_id}", None),
             ("PATCH", f"/api/conversations/{conv_id}", {"title": "stolen"}),
             ("POST", f"/api/conversations/{conv_id}/messages", {"role": "user", "content": "x"}),
             ("DELETE", f"/api/conversations/{conv_id}", None)]
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as anonymous:
            for method, path, body in calls:
                _error(anonymous.request(method, path, json=body), 401)
    got = api.get(f"/api/conversations/{conv_id}").json()
    assert got["title"] == "guarded" and got["messages"] == [], "refused requests changed nothing"


def test_unknown_ids_are_404(api: httpx.Client) -> None:
    for method, path, body in [("GET", "/api/conversations/conv_nope", None),
                               ("PATCH", "/api/conversations/conv_nope", {"title": "x"}),
                               ("DELETE", "/api/conversations/conv_nope", None),
                               ("POST", "/api/conversations/conv_nope/messages", {"role": "user", "content": "x"})]:
        err = _error(api.request(method, path, json=body), 404)
        assert "conv_nope" in err["message"] and err["code"] == "conversation_not_found"


@pytest.mark.parametrize(("method", "path", "body", "param"), [
    ("POST", "/api/conversations", b"{not json", None),
    ("POST", "/api/conversations", b"", None),
    ("POST", "/api/conversations", b"[1, 2]", None),
    ("POST", "/api/conversations", b'{"title": 5}', "title"),
    ("POST", "/api/conversations", b'{"title": ""}', "title"),
    ("POST", "/api/conversations", b'{"title": "' + b"x" * 201 + b'"}', "title"),
    ("POST", "/api/conversations", b'{"temperature": "hot"}', "temperature"),
    ("POST", "/api/conversations", b'{"temperature": 9}', "temperature"),
    ("POST", "/api/conversations", b'{"colour": "red"}', "colour"),
    ("PATCH", "/api/conversations/{id}", b"{}", None),
    ("PATCH", "/api/conversations/{id}", b'{"title": null}', "title"),
    ("PATCH", "/api/conversations/{id}", b'{"title": ""}', "title"),
    ("PATCH", "/api/conversations/{id}", b'{"system_prompt": null, "title": "0"}', "system_prompt"),
    ("PATCH", "/api/conversations/{id}", b'{"temperature": true}', "temperature"),
    ("POST", "/api/conversations/{id}/messages", b'{"role": "robot", "content": "x"}', "role"),
    ("POST", "/api/conversations/{id}/messages", b'{"role": "user"}', "content"),
    ("POST", "/api/conversations/{id}/messages", b'{"role": "user", "content": ["x"]}', "content"),
    ("POST", "/api/conversations/{id}/messages", b'\xff\xfe', None),
])
def test_malformed_bodies_are_400_and_change_nothing(api: httpx.Client, method: str, path: str, body: bytes,
                                                     param: str | None) -> None:
    conv = api.post("/api/conversations", json={"title": "untouched", "temperature": 0.2}).json()
    before = len(api.get("/api/conversations").json()["data"])
    err = _error(api.request(method, path.format(id=conv["id"]), content=body,
                             headers={"Content-Type": "application/json"}), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param
    after = api.get(f"/api/conversations/{conv['id']}").json()
    assert (after["title"], after["temperature"], after["messages"]) == ("untouched", 0.2, [])
    assert len(api.get("/api/conversations").json()["data"]) == before


def test_openapi_describes_the_bodies(server: Any) -> None:
    schema = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    post = schema["paths"]["/api/conversations"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"title", "model", "system_prompt", "temperature"} <= set(body["properties"])
    assert "patch" in schema["paths"]["/api/conversations/{conversation_id}"]
    assert "post" in schema["paths"]["/api/conversations/{conversation_id}/messages"]
