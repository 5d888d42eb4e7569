"""Users and keys through the real `homegrown serve` on loopback: two users never see each other's conversations
(another user's id is a 404, like an unknown one), a missing, unknown or revoked key is a 401 on every endpoint,
the old `--api-key` still works and owns the conversations of a database from before users, admins manage keys
over /api/keys, and `homegrown serve keys add|list|revoke` (the console script) changes a running server at once."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from homegrown.serve.keys import KeyStore
from tests.conftest import _run_cli
from tests.serve.conftest import API_KEY, Server, start_server
from tests.serve.test_store import LEGACY_DB

ERROR_KEYS = {"message", "type", "param", "code"}


@dataclass
class Users:
    server: Server
    db_url: str
    keys: dict[str, str]

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys.get(who, who)}"} if who else {}
        return httpx.Client(base_url=self.server.base_url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def users(serve_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Users]:
    """A server with `--api-key` on a copy of a database from before users (its conversations are the legacy
    user's), and keys for alice and bob (users) and root (admin) added to that database while it runs."""
    db = tmp_path_factory.mktemp("users") / "serve.sqlite"
    shutil.copyfile(LEGACY_DB, db)
    db_url = f"sqlite:///{db}"
    srv = start_server(serve_run, "--db-url", db_url)
    with KeyStore.open(db_url) as store:
        keys = {"alice": store.add("alice")[1], "bob": store.add("bob")[1], "root": store.add("root", "admin")[1],
                "legacy": API_KEY}
    yield Users(srv, db_url, keys)
    srv.stop()


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    return body["error"]


def test_two_users_see_only_their_own_conversations(users: Users) -> None:
    with users.client("alice") as alice, users.client("bob") as bob:
        mine = alice.post("/api/conversations", json={"title": "alice's plans"}).json()
        alice.post(f"/api/conversations/{mine['id']}/messages", json={"role": "user", "content": "secret plan"})
        theirs = bob.post("/api/conversations", json={"title": "bob's notes"}).json()

        assert [c["id"] for c in alice.get("/api/conversations").json()["data"]] == [mine["id"]]
        assert [c["id"] for c in bob.get("/api/conversations").json()["data"]] == [theirs["id"]]
        # Every way of reaching alice's conversation with bob's key is a 404, worded as for an id nobody has.
        unknown = "conv_" + "0" * 32
        for method, path, body in [("GET", "/api/conversations/{}", None),
                                   ("PATCH", "/api/conversations/{}", {"title": "taken over"}),
                                   ("POST", "/api/conversations/{}/messages", {"role": "user", "content": "hi"}),
                                   ("DELETE", "/api/conversations/{}", None)]:
            err = _error(bob.request(method, path.format(mine["id"]), json=body), 404)
            same = _error(bob.request(method, path.format(unknown), json=body), 404)
            assert err["code"] == same["code"] == "conversation_not_found"
            assert err["message"].replace(mine["id"], unknown) == same["message"], "ids do not leak"
        got = alice.get(f"/api/conversations/{mine['id']}").json()
        assert got["title"] == "alice's plans" and [m["content"] for m in got["messages"]] == ["secret plan"]
        _error(alice.delete(f"/api/conversations/{theirs['id']}"), 404)
        assert bob.get(f"/api/conversations/{theirs['id']}").status_code == 200

        # Each user may rename and delete their own.
        assert alice.patch(f"/api/conversations/{mine['id']}", json={"title": "renamed"}).json()["title"] == "renamed"
        assert alice.delete(f"/api/conversations/{mine['id']}").json()["deleted"] is True
        assert alice.get("/api/conversations").json()["data"] == []
        assert [c["id"] for c in bob.get("/api/conversations").json()["data"]] == [theirs["id"]]
        assert alice.get("/api/me").json() == {"object": "user", "user": "alice", "role": "user"}


def test_the_old_api_key_owns_the_migrated_conversations(users: Users) -> None:
    with users.client("legacy") as legacy, users.client("alice") as alice:
        assert legacy.get("/api/me").json() == {"object": "user", "user": "default", "role": "admin"}
        old = legacy.get("/api/conversations").json()["data"]
        assert [c["title"] for c in old][-2:] == ["Second chat", "Packaging wheels"]
        got = legacy.get(f"/api/conversations/{old[-1]['id']}").json()
        assert [m["role"] for m in got["messages"]] == ["system", "user", "assistant"]
        assert not {c["id"] for c in alice.get("/api/conversations").json()["data"]} & {c["id"] for c in old}
        _error(alice.get(f"/api/conversations/{old[-1]['id']}"), 404)


def test_missing_unknown_and_revoked_keys_are_401_everywhere(users: Users) -> None:
    store = KeyStore.open(users.db_url)
    record, dave = store.add("dave", "admin")
    calls = [("GET", "/v1/models", None), ("POST", "/v1/completions", {"model": users.server.model, "prompt": "a",
                                                                      "max_tokens": 1}),
             ("GET", "/api/conversations", None), ("POST", "/api/conversations", {"title": "x"}),
             ("GET", "/api/me", None), ("GET", "/api/keys", None)]
    with users.client(dave) as client:
        for method, path, body in calls:
            assert client.request(method, path, json=body).status_code == 200, path
    store.revoke(record.prefix)  # while the server runs: refused from the next request on
    store.close()
    for who in (None, dave, "hg-00000000_" + "x" * 43, "sk-wrong", API_KEY + "x"):
        with users.client(who) as client:
            for method, path, body in calls:
                assert _error(client.request(method, path, json=body), 401)["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=f"{users.server.base_url}/v1", api_key=dave, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_official_client_works_with_a_user_key(users: Users) -> None:
    client = openai.OpenAI(base_url=f"{users.server.base_url}/v1", api_key=users.keys["bob"], max_retries=0)
    done = client.completions.create(model=users.server.model, prompt="hello", max_tokens=2, extra_body={
        "min_tokens": 2})
    assert done.usage.completion_tokens == 2


def test_admins_manage_keys_over_http(users: Users) -> None:
    with users.client("root") as root, users.client("alice") as alice:
        listed = root.get("/api/keys").json()["data"]
        assert {"alice", "bob", "root"} <= {k["user"] for k in listed}
        assert all("key" not in k and set(k) == {"id", "object", "prefix", "user", "role", "created_at",
                                                  "revoked_at"} for k in listed), "no secret is ever listed"
        made = root.post("/api/keys", json={"user": "erin"}).json()
        assert made["user"] == "erin" and made["role"] == "user" and made["key"].startswith(made["prefix"] + "_")
        with users.client(made["key"]) as erin:
            assert erin.get("/api/me").json()["user"] == "erin"
            assert _error(erin.get("/api/keys"), 403)["code"] == "permission_denied"
            revoked = root.delete(f"/api/keys/{made['prefix']}").json()
            assert revoked["id"] == made["id"] and revoked["revoked_at"] is not None
            _error(erin.get("/api/me"), 401)
        for method, path, body in [("GET", "/api/keys", None), ("POST", "/api/keys", {"user": "mallory"}),
                                   ("DELETE", f"/api/keys/{made['id']}", None)]:
            assert _error(alice.request(method, path, json=body), 403)["code"] == "permission_denied"
        assert _error(root.delete("/api/keys/hg-zzzzzzzz"), 404)["code"] == "key_not_found"
        assert _error(root.post("/api/keys", json={"user": "two words"}), 400)["param"] == "user"
        assert _error(root.post("/api/keys", json={"user": "x", "role": "root"}), 400)["param"] == "role"
        assert "mallory" not in {k["user"] for k in root.get("/api/keys").json()["data"]}


def test_keys_cli_closes_an_open_server_and_revokes_at_once(serve_run: Path, tmp_path: Path) -> None:
    """No --api-key and no keys: open, as before. The first `serve keys add` closes the running server; `revoke`
    shuts its key out at once, and revoking the last key does not open the server again."""
    db_url = f"sqlite:///{tmp_path / 'open.sqlite'}"
    srv = start_server(serve_run, "--db-url", db_url, api_key=None)
    try:
        with httpx.Client(base_url=srv.base_url, timeout=60) as anyone:
            assert anyone.get("/api/me").json() == {"object": "user", "user": "default", "role": "user"}
            assert anyone.post("/api/conversations", json={"title": "before keys"}).status_code == 200
            # an anonymous caller cannot mint the first key and lock everyone else out
            assert _error(anyone.post("/api/keys", json={"user": "mallory"}), 403)["code"] == "permission_denied"

            added = _run_cli("serve", "keys", "add", "--user", "frank", "--db-url", db_url)
            assert added.returncode == 0, added.stderr
            key = added.stdout.strip()
            assert key.startswith("hg-") and "only time" in added.stderr
            _error(anyone.get("/api/conversations"), 401)
            with httpx.Client(base_url=srv.base_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as frank:
                assert frank.get("/api/me").json()["user"] == "frank"
                assert frank.get("/api/conversations").json()["data"] == [], "the open era's chats are not frank's"

                listed = _run_cli("serve", "keys", "list", "--db", db_url)
                assert listed.returncode == 0, listed.stderr
                header, row = listed.stdout.strip().splitlines()
                assert header.split("\t") == ["id", "prefix", "user", "role", "created", "revoked"]
                assert row.split("\t")[:4] == ["1", key.partition("_")[0], "frank", "user"] and row.endswith("\t-")
                assert key.partition("_")[2] not in listed.stdout

                revoked = _run_cli("serve", "keys", "revoke", key.partition("_")[0], "--db-url", db_url)
                assert revoked.returncode == 0 and "revoked key 1" in revoked.stderr, revoked.stderr
                _error(frank.get("/api/me"), 401)
            _error(anyone.get("/api/me"), 401)
            missing = _run_cli("serve", "keys", "revoke", "hg-zzzzzzzz", "--db-url", db_url)
            assert missing.returncode == 2 and "no API key" in missing.stderr and "Traceback" not in missing.stderr
    finally:
        srv.stop()
