"""Quality rules: every rule rejects a hand-made junk document and passes a real one; the bundled docs mostly pass."""

from __future__ import annotations

import gzip
import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from homegrown.config import FilterConfig
from homegrown.data.filters import RULES, QualityFilter, ngram_repetition
from homegrown.errors import HomegrownError

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"

GOOD = """How the garbage collector works

CPython frees most objects as soon as the last reference to them disappears, which is called reference counting.
Cycles are different: two lists that refer to each other keep their counts above zero forever.
For that reason the interpreter also runs a generational collector that looks for unreachable groups of objects.

You can inspect it with the gc module:

    import gc
    gc.collect()
    print(gc.get_count())

New objects start in the youngest generation and move to an older one when they survive a collection.
Older generations are scanned less often, because long-lived objects rarely become garbage.
If your program creates many short-lived containers, tuning the thresholds may save a little time.
Most applications never need to touch these settings, and disabling the collector is rarely a good idea."""

GOOD_WORDS = " ".join(GOOD.split())
PROSE = GOOD.splitlines()[2]  # one good line of prose
MENU = ["Home", "About us", "Products", "Contact", "Blog", "Careers", "Login", "Sign up", "Shop", "Support"]


def _repeat_phrase(phrase: str, every: int = 1) -> str:
    """Good prose with `phrase` inserted after every `every` words: a top n-gram far above Gopher's limits."""
    words = GOOD_WORDS.split()
    out: list[str] = []
    for i, word in enumerate(words):
        out.append(word)
        if i % every == 0:
            out.append(phrase)
    return " ".join(out)


JUNK: dict[str, str] = {
    "word_count": "Buy the best shoes with free shipping and have them tomorrow.",
    "mean_word_length": " ".join(
        ["the", "internationalization", "and", "of", "telecommunications", "incomprehensibilities"] * 3
        + ["counterrevolutionaries", "electroencephalographically", "characteristically"] * 15
    ),
    "symbol_ratio": PROSE + "\n" + " ".join(f"#tag{i} #love #instagood #photooftheday" for i in range(20)),
    "alpha_words": "The price list of the shop and what to pay with cash.\n"
    + "\n".join(" ".join(str(random.Random(i).randint(10, 99999)) for _ in range(8)) for i in range(12)),
    "stop_words": " ".join(
        f"cheap pills online pharmacy discount viagra order now fast delivery best price {i}" for i in range(8)
    ),
    "lorem_ipsum": GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "boilerplate": PROSE
    + "\n"
    + "\n".join(
        [
            "This website uses cookies to improve your experience.",
            "Please enable JavaScript to view the comments.",
            "Read our cookie policy before you continue.",
            "By using the site you accept our terms of use.",
            "See the privacy policy for the details.",
        ]
    ),
    "bullet_lines": "\n".join(f"• {word} and {other} with the best deals." for word, other in itertools.pairwise(MENU)),
    "ellipsis_lines": PROSE
    + "\n"
    + "\n".join(f"{item}: the latest news about {item.lower()} and more..." for item in MENU),
    "line_punctuation": "\n".join(
        [f"{item} of the {other}" for item, other in zip(MENU, reversed(MENU), strict=True)] * 2
        + ["Copyright 2024 Shop with the best prices and deals to have"]
    ),
    "dup_lines": PROSE + "\n" + "\n".join(["Click here to subscribe to the newsletter."] * 8),
    "dup_line_chars": "\n".join([f"Line {i} of the text." for i in range(10)] + [PROSE * 3] * 3),
    "top_2gram": _repeat_phrase("click here", every=2),
    "top_3gram": _repeat_phrase("buy it now", every=3),
    "top_4gram": _repeat_phrase("free shipping on orders", every=4),
    **{f"dup_{n}gram": GOOD + "\n" + GOOD.upper() for n in range(5, 11)},
}


def test_every_rule_has_a_junk_example() -> None:
    assert sorted(JUNK) == sorted(RULES)


def test_good_document_passes_every_rule() -> None:
    qf = QualityFilter(FilterConfig())
    assert qf.failures(GOOD) == []
    assert qf.check(GOOD) is None


@pytest.mark.parametrize("rule", RULES)
def test_rule_rejects_its_junk(rule: str) -> None:
    qf = QualityFilter(FilterConfig())
    assert rule in qf.failures(JUNK[rule])
    only = QualityFilter(FilterConfig(disabled=[r for r in RULES if r != rule]))
    assert only.rule_names == [rule]
    assert only.check(JUNK[rule]) == rule
    assert only.check(GOOD) is None


def test_check_returns_the_first_failing_rule_in_order() -> None:
    qf = QualityFilter(FilterConfig())
    text = JUNK["dup_lines"] + "\nLorem ipsum dolor sit amet."
    failed = qf.failures(text)
    assert {"lorem_ipsum", "dup_lines"} <= set(failed)
    assert qf.check(text) == failed[0] == "lorem_ipsum"  # lorem_ipsum runs before dup_lines


def test_disabled_rule_is_skipped_and_unknown_name_is_an_error() -> None:
    qf = QualityFilter(FilterConfig(disabled=["lorem_ipsum"]))
    assert "lorem_ipsum" not in qf.rule_names
    assert qf.check(JUNK["lorem_ipsum"]) is None
    with pytest.raises(HomegrownError, match="unknown filter rule"):
        QualityFilter(FilterConfig(disabled=["no_such_rule"]))


def test_thresholds_come_from_the_config() -> None:
    assert QualityFilter(FilterConfig(min_words=5)).check(JUNK["word_count"]) != "word_count"
    assert QualityFilter(FilterConfig(min_words=200)).check(GOOD) == "word_count"
    assert QualityFilter(FilterConfig(max_words=20)).check(GOOD) == "word_count"
    # the text written out twice has every duplicated n-gram fraction at 1.0: only a limit of 1.0 keeps it
    relaxed = {f"max_dup_{n}gram_fraction": 1.0 for n in range(5, 11)}
    twice = JUNK["dup_5gram"]
    assert QualityFilter(FilterConfig(**relaxed, disabled=["dup_lines", "dup_line_chars"])).check(twice) is None
    assert QualityFilter(FilterConfig(boilerplate_phrases=["garbage collector"])).check(GOOD) is None
    assert (
        QualityFilter(FilterConfig(max_boilerplate_line_fraction=0.05)).check(GOOD + "\nPlease enable JavaScript.")
        == "boilerplate"
    )


def _reference_repetition(words: list[str], n: int) -> tuple[float, float]:
    """Straightforward Gopher definitions with Python tuples, to cross-check the hashed numpy version."""
    total = sum(map(len, words))
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0, 0.0
    counts = Counter(grams)
    gram, count = counts.most_common(1)[0]
    top = count * sum(map(len, gram)) / total if count > 1 else 0.0
    covered = set()
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered.update(range(i, i + n))
    return top, sum(len(words[i]) for i in covered) / total


def test_ngram_repetition_matches_the_definitions() -> None:
    rng = random.Random(0)
    vocab = ["a", "bb", "ccc", "dddd", "ee", "f"]
    for length in (0, 1, 3, 9, 40, 300):
        words = [rng.choice(vocab) for _ in range(length)]
        got = ngram_repetition(words)
        for n, (top, dup) in got.items():
            ref_top, ref_dup = _reference_repetition(words, n)
            assert top == pytest.approx(ref_top if n <= 4 else 0.0)
            assert dup == pytest.approx(ref_dup if n >= 5 else 0.0)
    twice = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"] * 2
    assert ngram_repetition(twice)[5][1] == 1.0
    assert ngram_repetition(twice[:11])[5][1] == 0.0


def test_bundled_docs_mostly_pass() -> None:
    """The shipped technical docs (prose + code) are the kind of text the defaults must keep."""
    qf = QualityFilter(FilterConfig())
    with gzip.open(SAMPLE / "val.jsonl.gz", "rt", encoding="utf-8") as f:
        verdicts = [qf.check(json.loads(line)["text"]) for line in f]
    kept = verdicts.count(None) / len(verdicts)
    assert kept >= 0.85, Counter(verdicts)
