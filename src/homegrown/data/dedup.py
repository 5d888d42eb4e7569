"""Deduplication: exact (normalised-text hash) and near-duplicate (MinHash LSH, datasketch).

* `ExactDedup`: mirrors and re-renders of one page differ in case and whitespace only, so the key is
  the sha256 of the lowercased text with whitespace runs collapsed. Punctuation is kept: in code,
  ``a.b(c)`` and ``ab c`` are different texts. Only 32-byte digests are kept in memory, not text.
* `NearDedup`: pages that differ in a few words (a changed date, a different footer, a fixed typo)
  have almost the same set of word 5-grams. A MinHash signature estimates the Jaccard similarity of
  those sets and LSH finds candidates without comparing every pair; a candidate counts only when its
  estimated similarity reaches the threshold, so the threshold means what it says.

Contract used by the ingest stage (so shards can be processed apart and merged later):
``NearDedup(threshold=0.8, num_perm=128, ngram=5)``, ``.signature(text) -> numpy.ndarray`` (the
MinHash hash values: store them with a shard), ``.seen_or_add(key, signature) -> str | None`` (the key
of an earlier near-duplicate, else the signature is added under `key` and None is returned). Replaying
stored signatures in the same order gives the same decisions as the first pass.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from datasketch import MinHash, MinHashLSH

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


_WORD = re.compile(r"\w+")
LSH_WEIGHTS = (0.05, 0.95)
"""datasketch's (false positive, false negative) weights for choosing bands × rows; see NearDedup."""


class NearDedup:
    """Near-duplicate detection over word n-gram shingles with MinHash LSH (see the module docstring).

    Memory: the LSH index plus one signature per kept document (num_perm × 4 bytes, 512 B at 128),
    kept to check each LSH candidate's estimated similarity against the threshold.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed
        # one set of permutations shared by every signature: building them per text would dominate the cost
        template = MinHash(num_perm=num_perm, seed=seed)
        self._permutations = template.permutations
        self._scheme = template.scheme  # datasketch ≥ 2 needs it to rebuild a MinHash from stored values
        self._dtype = template.hashvalues.dtype
        # Banding weighted for recall: with datasketch's equal weights a pair at exactly the threshold
        # becomes a candidate only ~40 % of the time (0.8, 128 perms: 9 bands × 13 rows); with (0.05, 0.95)
        # it is 16 × 8 and ~95 %, ~99 % at 0.85. Extra candidates cost one signature comparison each.
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
        self._signatures: dict[str, np.ndarray] = {}
        self.checked = 0
        self.duplicates = 0

    def shingles(self, text: str) -> set[bytes]:
        """Lowercased word n-grams; a text shorter than n words is one shingle of all its words."""
        words = _WORD.findall(text.lower())
        n = self.ngram
        if len(words) <= n:
            return {" ".join(words).encode("utf-8")}
        return {" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)}

    def signature(self, text: str) -> np.ndarray:
        """The MinHash hash values of `text` (num_perm values): what a shard stores for the merge."""
        m = MinHash(num_perm=self.num_perm, seed=self.seed, permutations=self._permutations, scheme=self._scheme)
        m.update_batch(list(self.shingles(text)))
        return m.hashvalues.copy()

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Estimated Jaccard similarity of the shingle sets behind two signatures."""
        return float(np.mean(a == b))

    def seen_or_add(self, key: str, signature: np.ndarray) -> str | None:
        """Key of an earlier document at least `threshold` similar, or None after adding this one as `key`."""
        signature = np.asarray(signature, dtype=self._dtype)
        if signature.shape != (self.num_perm,):
            raise ValueError(f"signature has shape {signature.shape}, expected ({self.num_perm},)")
        if key in self._signatures:
            raise ValueError(f"key {key!r} was already added; document keys must be unique")
        self.checked += 1
        m = MinHash(
            num_perm=self.num_perm,
            seed=self.seed,
            hashvalues=signature,
            permutations=self._permutations,
            scheme=self._scheme,
        )
        best, best_sim = None, self.threshold
        for candidate in self._lsh.query(m):
            sim = self.similarity(signature, self._signatures[candidate])
            if sim >= best_sim:
                best, best_sim = candidate, sim
        if best is not None:
            self.duplicates += 1
            return best
        self._lsh.insert(key, m)
        self._signatures[key] = signature
        return None
