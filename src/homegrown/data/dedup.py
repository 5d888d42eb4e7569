"""Exact deduplication: the same text after light normalisation is kept once.

Mirrors and re-renders of one page differ in case and whitespace only, so the key is the sha256 of
the lowercased text with whitespace runs collapsed. Only 32-byte digests are kept in memory, not text.
"""

from __future__ import annotations

import hashlib
import re

_WS = re.compile(r"\s+")


def normalise(text: str) -> str:
    """The form two texts must share to count as the same: lowercase, whitespace runs → one space, trimmed."""
    return _WS.sub(" ", text.lower()).strip()


def text_key(text: str) -> bytes:
    """sha256 digest of the normalised text."""
    return hashlib.sha256(normalise(text).encode("utf-8")).digest()


class ExactDedup:
    """Remembers every text it has been shown; `seen` answers whether a text is a repeat."""

    def __init__(self) -> None:
        self._keys: set[bytes] = set()
        self.checked = 0
        self.duplicates = 0

    def seen(self, text: str) -> bool:
        """True if an equal (normalised) text was seen before; otherwise remember it and return False."""
        self.checked += 1
        key = text_key(text)
        if key in self._keys:
            self.duplicates += 1
            return True
        self._keys.add(key)
        return False

    @property
    def unique(self) -> int:
        """Number of distinct texts seen so far."""
        return len(self._keys)
