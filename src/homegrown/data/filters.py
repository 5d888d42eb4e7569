"""Per-document quality rules in the spirit of Gopher (Rae et al. 2021), C4 and FineWeb, each named.

A web crawl is mostly text nobody should train on: menus, link farms, keyword spam, cookie banners,
pages that repeat one line a hundred times, tables of symbols. These rules are cheap statistics that
catch most of it without a model. Each rule has a name so that a run can report how many documents
each one rejected, and so that one rule can be switched off (`FilterConfig.disabled`) when it does
not suit a source (line punctuation on a corpus of source code, say).

Contract used by the ingest stage:

* ``QualityFilter(cfg: FilterConfig)``; ``.rule_names`` lists the enabled rules in the order they run.
* ``.check(text) -> str | None``: the name of the first rule the text fails, None to keep it.
  Rules run cheapest first, so one rejection costs little.
* ``.failures(text) -> list[str]``: every rule the text fails (for measuring rules one by one).

Definitions (whitespace-split tokens with surrounding punctuation stripped are "words"; tokens that
are only punctuation are not words; lines are stripped and blank lines ignored):

========================  =====================================================================
rule                      the document fails when
========================  =====================================================================
word_count                words < min_words or > max_words
mean_word_length          mean characters per word outside [min_mean_word_length, max_…]
symbol_ratio              ("#" + "..." + "…") / words > max_symbol_word_ratio
alpha_words               share of words with a letter < min_alpha_word_fraction
stop_words                fewer than min_stop_words of the words are Gopher stop words
lorem_ipsum               "lorem ipsum" appears anywhere (C4)
boilerplate               share of lines holding a boilerplate phrase > max_boilerplate_line_fraction
bullet_lines              share of lines starting with a bullet > max_bullet_line_fraction
ellipsis_lines            share of lines ending in "..." or "…" > max_ellipsis_line_fraction
line_punctuation          share of lines ending in . ! ? " ' : < min_punct_line_fraction (FineWeb)
dup_lines                 share of lines that repeat an earlier line > max_dup_line_fraction
dup_line_chars            share of characters in such repeated lines > max_dup_line_char_fraction
top_{2,3,4}gram           characters of the most frequent word n-gram / all word characters > max
dup_{5..10}gram           characters of words covered by n-grams seen more than once / all > max
========================  =====================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from homegrown.config import FilterConfig
from homegrown.errors import HomegrownError

# Gopher's stop-word rule: real English prose uses these constantly, keyword spam and lists do not.
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_BULLETS = ("•", "‣", "●", "◦", "▪", "-", "*", "–", "—", "·")
_ELLIPSES = ("...", "…")
_END_PUNCT = (".", "!", "?", '"', "'", "”", "’", ":")
_PUNCT_STRIP = "\"'`.,;:!?()[]{}<>«»“”‘’—–-…*_|/\\"
_ALPHA = re.compile(r"[^\W\d_]")
_LINES = re.compile(r"\s*\n\s*")
TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)


class _Doc:
    """One text's words, lines and statistics, each computed once, on first use by a rule."""

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def words(self) -> list[str]:
        stripped = (token.strip(_PUNCT_STRIP) for token in self.text.split())
        return [w for w in stripped if w]

    @cached_property
    def lower_words(self) -> list[str]:
        return [w.lower() for w in self.words]

    @cached_property
    def lines(self) -> list[str]:
        return [line for line in _LINES.split(self.text.strip()) if line]

    @property
    def mean_word_length(self) -> float:
        return _fraction(sum(map(len, self.words)), len(self.words))

    @property
    def symbol_ratio(self) -> float:
        symbols = self.text.count("#") + self.text.count("...") + self.text.count("…")
        return _fraction(symbols, len(self.words))

    @property
    def alpha_word_fraction(self) -> float:
        return _fraction(sum(1 for w in self.words if _ALPHA.search(w)), len(self.words))

    @property
    def stop_words(self) -> int:
        return sum(1 for w in self.lower_words if w in STOP_WORDS)

    def line_fraction(self, keep: Callable[[str], bool]) -> float:
        return _fraction(sum(1 for line in self.lines if keep(line)), len(self.lines))

    @cached_property
    def dup_lines(self) -> tuple[float, float]:
        return _dup_line_stats(self.lines)

    @cached_property
    def ngrams(self) -> dict[int, tuple[float, float]]:
        return ngram_repetition(self.lower_words)


def _fraction(count: int, total: int) -> float:
    return count / total if total else 0.0


def _dup_line_stats(lines: list[str]) -> tuple[float, float]:
    """(share of lines, share of characters) that repeat an earlier line; the first copy is not counted."""
    seen: set[str] = set()
    dup_lines = dup_chars = 0
    for line in lines:
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        else:
            seen.add(line)
    return _fraction(dup_lines, len(lines)), _fraction(dup_chars, sum(map(len, lines)))


# Odd 64-bit multiplier for the polynomial n-gram hash (wraps mod 2**64; collisions are ~N**2 / 2**64).
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)


def ngram_repetition(words: list[str]) -> dict[int, tuple[float, float]]:
    """For n in 2 … 10: (top n-gram fraction, duplicated n-gram fraction), as Gopher defines them.

    * top: characters taken by the most frequent word n-gram (all its copies) over all word characters;
      0.0 unless that n-gram occurs more than once.
    * dup: characters of the words covered by any n-gram that occurs more than once, over all word
      characters; overlapping repeats count each word once, so a text written out twice scores 1.0.

    N-grams are hashed incrementally (the n-gram hash extends the (n-1)-gram one) in numpy, so all nine
    sizes cost about as much as one pass of Python tuple counting would for a single n.
    """
    out = {n: (0.0, 0.0) for n in (*TOP_NGRAMS, *DUP_NGRAMS)}
    if not words:
        return out
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab) + 1) for w in words), dtype=np.uint64, count=len(words))
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    total = int(lengths.sum())
    prefix = np.concatenate(([0], np.cumsum(lengths)))
    hashes = ids.copy()
    with np.errstate(over="ignore"):
        for n in range(2, max(out) + 1):
            if len(words) < n:
                break
            hashes = hashes[:-1] * _HASH_MUL + ids[n - 1 :]
            _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
            top = dup = 0.0
            if n in TOP_NGRAMS and counts.max() > 1:
                first = int(np.argmax(counts[inverse] == counts.max()))  # first start of the most frequent n-gram
                top = int(counts.max()) * int(prefix[first + n] - prefix[first]) / total
            if n in DUP_NGRAMS:
                starts = np.flatnonzero(counts[inverse] > 1)
                cover = np.zeros(len(words) + 1, dtype=np.int64)
                np.add.at(cover, starts, 1)
                np.add.at(cover, starts + n, -1)
                dup = int(lengths[np.cumsum(cover[:-1]) > 0].sum()) / total
            out[n] = (top, dup)
    return out


@dataclass(frozen=True)
class _Rule:
    name: str
    fails: Callable[[_Doc], bool]


class QualityFilter:
    """Applies the enabled rules of a FilterConfig to one text at a time (see the module docstring)."""

    def __init__(self, cfg: FilterConfig | None = None) -> None:
        self.cfg = cfg = cfg or FilterConfig()
        all_rules = self._build(cfg)
        unknown = set(cfg.disabled) - {r.name for r in all_rules}
        if unknown:
            raise HomegrownError(
                f"unknown filter rule(s) in disabled: {', '.join(sorted(unknown))}; "
                f"rules are: {', '.join(r.name for r in all_rules)}"
            )
        self._rules = [r for r in all_rules if r.name not in cfg.disabled]
        self._phrases = [p.lower() for p in cfg.boilerplate_phrases]

    @property
    def rule_names(self) -> list[str]:
        """Enabled rules, in the order `check` runs them."""
        return [r.name for r in self._rules]

    def check(self, text: str) -> str | None:
        """Name of the first rule `text` fails, or None when the document is kept."""
        doc = _Doc(text)
        for rule in self._rules:
            if rule.fails(doc):
                return rule.name
        return None

    def failures(self, text: str) -> list[str]:
        """Every enabled rule `text` fails, in rule order (slower than `check`: no early exit)."""
        doc = _Doc(text)
        return [rule.name for rule in self._rules if rule.fails(doc)]

    def _is_boilerplate(self, line: str) -> bool:
        lowered = line.lower()
        return any(p in lowered for p in self._phrases)

    def _build(self, cfg: FilterConfig) -> list[_Rule]:
        rules = [
            _Rule("word_count", lambda d: not cfg.min_words <= len(d.words) <= cfg.max_words),
            _Rule(
                "mean_word_length",
                lambda d: not cfg.min_mean_word_length <= d.mean_word_length <= cfg.max_mean_word_length,
            ),
            _Rule("symbol_ratio", lambda d: d.symbol_ratio > cfg.max_symbol_word_ratio),
            _Rule("alpha_words", lambda d: d.alpha_word_fraction < cfg.min_alpha_word_fraction),
            _Rule("stop_words", lambda d: d.stop_words < cfg.min_stop_words),
            _Rule("lorem_ipsum", lambda d: "lorem ipsum" in d.text.lower()),
            _Rule("boilerplate", lambda d: d.line_fraction(self._is_boilerplate) > cfg.max_boilerplate_line_fraction),
            _Rule(
                "bullet_lines",
                lambda d: d.line_fraction(lambda ln: ln.startswith(_BULLETS)) > cfg.max_bullet_line_fraction,
            ),
            _Rule(
                "ellipsis_lines",
                lambda d: d.line_fraction(lambda ln: ln.endswith(_ELLIPSES)) > cfg.max_ellipsis_line_fraction,
            ),
            _Rule(
                "line_punctuation",
                lambda d: d.line_fraction(lambda ln: ln.endswith(_END_PUNCT)) < cfg.min_punct_line_fraction,
            ),
            _Rule("dup_lines", lambda d: d.dup_lines[0] > cfg.max_dup_line_fraction),
            _Rule("dup_line_chars", lambda d: d.dup_lines[1] > cfg.max_dup_line_char_fraction),
        ]
        for n in TOP_NGRAMS:
            limit = getattr(cfg, f"max_top_{n}gram_fraction")
            rules.append(_Rule(f"top_{n}gram", lambda d, n=n, limit=limit: d.ngrams[n][0] > limit))
        for n in DUP_NGRAMS:
            limit = getattr(cfg, f"max_dup_{n}gram_fraction")
            rules.append(_Rule(f"dup_{n}gram", lambda d, n=n, limit=limit: d.ngrams[n][1] > limit))
        return rules


RULES: list[str] = QualityFilter(FilterConfig()).rule_names
"""Every rule name, in the order `check` runs them."""
