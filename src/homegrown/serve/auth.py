"""Who a request to `homegrown serve` acts for, from its `Authorization: Bearer KEY` header.

Three kinds of key are accepted:
- a key from the key store (`homegrown serve keys add`): its user and role;
- the server's single `--api-key`: user LEGACY_OWNER with the admin role, as before keys had users (the
  conversations saved by earlier versions belong to that user);
- none at all, but only while the server has no `--api-key` and no key was ever added to its database: then
  the server is open, as it always was without `--api-key`, and every caller is LEGACY_OWNER with the *user* role:
  an anonymous caller must not be able to mint the first key over /api/keys and lock everyone else out. The first
  `keys add` (on the server's machine) closes it, even for a running server; revoking keys never reopens it.

Answers are remembered per Authorization header while the key store's `change_marker` stays the same, so a
client's next request (and every request to an open server) is answered on the event loop without a database
query or a worker thread; any write to the database — a key added or revoked by any process — forgets them all.
"""

from __future__ import annotations

import hmac
import threading

from homegrown.serve.keys import KeyStore, Principal
from homegrown.serve.store import LEGACY_OWNER

LEGACY = Principal(user=LEGACY_OWNER, role="admin")
OPEN = Principal(user=LEGACY_OWNER, role="user")
KNOWN_MAX = 4096
"""Authorization headers remembered at once; past that the memory starts over (a flood of made-up keys)."""


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Authenticator:
    """The server's key check: its `--api-key` (or None) and its key store (or None without a database)."""

    def __init__(self, api_key: str | None, keys: KeyStore | None) -> None:
        self.api_key = api_key or None
        self.keys = keys
        self._closed = False  # keys are revoked, never deleted: once there is one, there always is
        self._known: dict[str, Principal] = {}
        self._known_at: object = None  # the change marker `_known` holds for
        self._lock = threading.Lock()

    def known(self, authorization: str) -> Principal | None:
        """The caller, when it can be told without waiting: the `--api-key`, no database at all, or an answer
        `principal` gave while nothing in the database has changed since. None means: ask `principal`."""
        if self.keys is None:
            return self.principal(authorization)
        token = bearer_token(authorization)
        if token is not None and self.api_key is not None and hmac.compare_digest(token.encode(),
                                                                                    self.api_key.encode()):
            return LEGACY
        marker = self.keys.change_marker()
        if marker is None:
            return None
        with self._lock:
            return self._known_for(marker).get(authorization)

    def principal(self, authorization: str) -> Principal | None:
        """The caller for this Authorization header, or None for a missing, unknown or revoked key.

        Blocking (a database lookup): call it from a worker thread."""
        marker = self.keys.change_marker() if self.keys is not None else None
        found = self._lookup(authorization)
        if found is not None and marker is not None:
            with self._lock:
                known = self._known_for(marker)
                if len(known) >= KNOWN_MAX:
                    known.clear()
                known[authorization] = found
        return found

    def _known_for(self, marker: object) -> dict[str, Principal]:
        """The remembered answers, emptied first when the database changed since they were given (hold _lock)."""
        if marker != self._known_at:
            self._known.clear()
            self._known_at = marker
        return self._known

    def _lookup(self, authorization: str) -> Principal | None:
        token = bearer_token(authorization)
        if token is not None:
            if self.api_key is not None and hmac.compare_digest(token.encode(), self.api_key.encode()):
                return LEGACY
            if self.keys is not None:
                found = self.keys.authenticate(token)
                if found is not None:
                    return found
        return OPEN if self.open() else None

    def open(self) -> bool:
        """No key is needed: no --api-key and no key ever added."""
        if self.api_key is not None or self._closed:
            return False
        self._closed = self.keys is not None and self.keys.any_keys()
        return not self._closed
