"""Personal data and secrets → typed placeholders, counted per kind.

A model memorises rare strings it saw, so e-mail addresses, phone numbers, card numbers and leaked keys
in a crawl can come back out of it verbatim. Each is replaced before training by a placeholder naming
its kind, which keeps the sentence readable (``write to <EMAIL>``) and the count auditable.

Contract used by the ingest stage:

* ``scrub(text, kinds, private_ips) -> (text, Counter)``: the text with every match replaced, and how many
  of each kind.
* ``find(text, kinds, private_ips) -> list[Match]``: the spans alone (what the labelled test set scores).
* ``KINDS`` / ``PLACEHOLDERS``: ``EMAIL, PHONE, IP_ADDRESS, CREDIT_CARD, SECRET`` → ``<EMAIL>`` …

The detectors are regular expressions plus a validator each, because precision matters as much as
recall: technical text is full of numbers that only look like data (dates, times, versions such as
3.11.7, ports, hex digests, Python reprs). So:

* credit cards must pass the Luhn check, start with a real issuer prefix and be grouped the way cards
  are printed (4-4-4-4, Amex 4-6-5, or no separators);
* IP addresses are parsed with :mod:`ipaddress`; loopback, unspecified, multicast, broadcast and
  netmasks (``255.255.255.0``) are kept, since they identify no machine; a dotted quad right after
  "version", "==" or "name-" is a version number, and one opening a line as ``8.6.4.1. Title`` is a
  section number. By default only *globally reachable* addresses are replaced
  (datatrove's PII formatter does the same): private (``10.0.0.5``, ``192.168.1.10``), link-local,
  shared (``100.64.0.0/10``) and documentation ranges (``203.0.113.0/24``, ``2001:db8::/32``) point at no
  one's machine on the internet, and technical text is full of them — scrubbing them cost the Python docs
  553 example addresses. ``private_ips=True`` replaces those too;
* phone numbers need a phone shape: ``+`` or ``00`` and a country code, North American ``(555) 123-4567``
  / ``555-123-4567``, or a European trunk ``0`` number in groups (``030 12345678``, ``06 12 34 56 78``,
  ``020 7946 0958``), never a bare run of digits, and 8 to 15 digits in all;
* secrets are either a known token format (AWS ``AKIA…``, GitHub ``ghp_…``, OpenAI ``sk-…``, Slack
  ``xox…``, GitLab ``glpat-…``, Hugging Face ``hf_…``, Stripe, Google ``AIza…``, JWTs), a PEM/PGP
  *private* key block (public keys and certificates are public), or the value after ``key=`` /
  ``token:`` / ``secret=`` … when it is at least 16 characters, mixes letters and digits and looks
  random (≥ 3 bits of entropy per character).

Overlapping matches are resolved by kind priority (secret > e-mail > card > IP > phone), then length.
Precision and recall are measured on tests/data/pii_cases.jsonl (benchmarks/pii_eval.py).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

KINDS = ("SECRET", "EMAIL", "CREDIT_CARD", "IP_ADDRESS", "PHONE")
"""In priority order: when two matches overlap, the earlier kind wins."""
PLACEHOLDERS = {kind: f"<{kind}>" for kind in KINDS}


@dataclass(frozen=True)
class Match:
    """One detected span of `text[start:end]` and its kind."""

    start: int
    end: int
    kind: str


# ---- secrets ----------------------------------------------------------------------------------------
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
    re.DOTALL,
)
_TOKENS = re.compile(
    r"(?<![A-Za-z0-9_])(?:"
    r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"  # GitHub
    r"|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"  # OpenAI (and Anthropic sk-ant-…)
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|glpat-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{34,}"  # GitLab, Hugging Face
    r"|(?:sk|rk|pk)_live_[A-Za-z0-9]{16,}"  # Stripe
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
    r")(?![A-Za-z0-9_-])"
)
# `name = value` secrets: the regex anchors on the operator (rare) and only then checks the name before it,
# which is ~20x faster than trying the name alternation at every position of the text.
_ASSIGNED_VALUE = re.compile(r"(?:[:=]|=>)\s*[\"']?(?:Bearer\s+)?(?P<value>[A-Za-z0-9_\-+/=.~]{16,})")
_SECRET_NAME = re.compile(
    r"(?i)(?:api[_-]?key|apikey|secret(?:[_-]?key)?|client[_-]?secret|(?:access|auth|api|bearer|refresh)[_-]?token"
    r"|token|password|passwd|private[_-]?key|aws_secret_access_key|credentials?|authorization)[\"']?\s*$"
)
_MIN_ENTROPY = 3.0
_IDENTIFIER = re.compile(r"[a-z_.]+\d*|[A-Z_.]+\d*")  # settings.API_KEY, get_access_token2
_PLACEHOLDER = re.compile(r"(?i)your|my[_-]|example|dummy|fake|test|change|replace|xxxx")


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _looks_random(value: str) -> bool:
    """A real key mixes letters and digits and has no dictionary-word shape; `os.environ.get` does not."""
    value = value.rstrip(".=")
    return (
        len(value) >= 16
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and _entropy(value) >= _MIN_ENTROPY
        and not _IDENTIFIER.fullmatch(value)
        and not _PLACEHOLDER.match(value)
    )


def _secrets(text: str) -> Iterator[Match]:
    for m in _PRIVATE_KEY.finditer(text):
        yield Match(m.start(), m.end(), "SECRET")
    for m in _TOKENS.finditer(text):
        yield Match(m.start(), m.end(), "SECRET")
    for m in _ASSIGNED_VALUE.finditer(text):
        value = m.group("value").rstrip(".")
        if _SECRET_NAME.search(text, max(0, m.start() - 40), m.start()) and _looks_random(value):
            yield Match(m.start("value"), m.start("value") + len(value), "SECRET")


# ---- e-mail -----------------------------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9](?:[A-Za-z0-9._%+'-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-]|\.[A-Za-z0-9])"
)


# "logo@2x.png" is a retina image name, not an address
_FILE_SUFFIX = re.compile(r"(?i)\.(?:png|jpe?g|gif|svg|webp|avif|ico|css|js|html?)$")


def _emails(text: str) -> Iterator[Match]:
    for m in _EMAIL.finditer(text):
        if not _FILE_SUFFIX.search(m.group()):
            yield Match(m.start(), m.end(), "EMAIL")


# ---- credit cards -----------------------------------------------------------------------------------
_CARD = re.compile(
    r"(?<![\w.,/:+-])(?:\d{4}([ -]?)\d{4}\1\d{4}\1\d{4}(?:\1?\d{1,3})?|\d{4}([ -]?)\d{6}\2\d{4,5})(?![\w.,/:-]\d|\w)"
)
_ISSUER = re.compile(r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|6(?:011|5|4[4-9])|35|3(?:0[0-5]|[68])")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cards(text: str) -> Iterator[Match]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _ISSUER.match(digits) and _luhn(digits):
            yield Match(m.start(), m.end(), "CREDIT_CARD")


# ---- IP addresses -----------------------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?<!\.)({_OCTET}(?:\.{_OCTET}){{3}})(?:/\d{{1,2}})?(?!\w|\.\w)")
_IPV6 = re.compile(
    r"(?<![\w:.\[])((?:[0-9A-Fa-f]{1,4}:){1,7}:?(?:[0-9A-Fa-f]{1,4}|:)?(?::[0-9A-Fa-f]{1,4}){0,6}"
    rf"(?:\.{_OCTET}){{0,3}}|::(?:[0-9A-Fa-f]{{1,4}}:){{0,6}}[0-9A-Fa-f]{{1,4}}(?:\.{_OCTET}){{0,3}})"
    r"(?:%[\w.]+)?(?:/\d{1,3})?(?![\w:])"
)
_VERSION_BEFORE = re.compile(r"(?i)(?:\b(?:version|release|ver|section|chapter|gcc|python|zlib)|§|[=<>~]=|[a-z]-)\s*$")
_HEADING = re.compile(r"\. +\S")
"""After a dotted quad that opens a line or sentence, ". Title": a section number (``8.6.4.1. OR Patterns``)."""


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def is_global_ip(address: str) -> bool:
    """Whether an address is globally reachable (an IPv4-mapped IPv6 address counts as its IPv4 one)."""
    ip = ipaddress.ip_address(address.split("%")[0].split("/")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_global


def _identifying_ip(address: str, private: bool) -> bool:
    """False for addresses that identify no machine (loopback, unspecified, multicast, netmasks, broadcast)
    and, unless `private`, for those no one outside a private network can reach."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip in _THIS_NETWORK:
        return False
    if ip.version == 4:
        bits = f"{int(ip):032b}"
        if "01" not in bits and bits.startswith("1"):  # a run of ones then zeros: a netmask or broadcast
            return False
    return private or is_global_ip(address)


def _ips(text: str, private: bool = False) -> Iterator[Match]:
    for m in _IPV4.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        opens = text[line_start : m.start()].strip() == "" or text.endswith(". ", 0, m.start())
        if opens and _HEADING.match(text, m.end()):
            continue
        if (_VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start()) is None
                and _identifying_ip(m.group(1), private)):
            yield Match(m.start(), m.end(), "IP_ADDRESS")
    for m in _IPV6.finditer(text):
        address = m.group(1)
        # slices (a[1::3]) and C++ scopes parse as IPv6 too; a written address has 2+ groups, one of 3+ digits
        groups = [g for g in address.split(":") if g]
        if (
            len(groups) >= 2
            and max(map(len, groups)) >= 3
            and any(c.isdigit() for c in address)
            and _identifying_ip(address, private)
        ):
            yield Match(m.start(), m.end(), "IP_ADDRESS")


# ---- phone numbers ----------------------------------------------------------------------------------
_PHONE_PATTERNS = [
    # international: +CC or 00CC, then groups (optionally a "(0)" trunk or an area code in parentheses)
    r"(?:\+|\b00)[1-9]\d{0,2}(?:[ .-]?\(0\))?(?:[ .-]?\(?\d{1,4}\)?){1,5}",
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, optional 1- in front
    r"(?:\b1[ .-]?)?(?:\(\d{3}\)\s?|\b\d{3}[.-])\d{3}[.-]\d{4}",
    # European national numbers with a trunk 0: 030 12345678, 089/1234567, 020 7946 0958, 06 12 34 56 78
    r"\b0[1-9]\d{1,4}[ /-]\d{5,8}",
    r"\b0[1-9]\d{0,3} \d{3,4} \d{4}",
    r"\b0[1-9](?:[ .]\d{2}){4}",
]
_PHONE = re.compile(r"(?<![\w+./:@-])(?<!\d[ .-])(?:" + "|".join(_PHONE_PATTERNS) + r")(?![\w@]|[./:-]\d| \d)")


def _phones(text: str) -> Iterator[Match]:
    for m in _PHONE.finditer(text):
        digits = sum(c.isdigit() for c in m.group())
        if 8 <= digits <= 15:
            yield Match(m.start(), m.end(), "PHONE")


_DETECTORS: dict[str, Callable[[str], Iterable[Match]]] = {
    "SECRET": _secrets,
    "EMAIL": _emails,
    "CREDIT_CARD": _cards,
    "IP_ADDRESS": _ips,
    "PHONE": _phones,
}


def find(text: str, kinds: Iterable[str] | str = KINDS, private_ips: bool = False) -> list[Match]:
    """Non-overlapping matches in text order; on overlap the higher-priority kind (then the longer span) wins.

    `kinds` may also be a comma-separated string, as in `IngestConfig.pii_kinds`; `private_ips` also
    replaces private, link-local and documentation addresses (see the module docstring).
    """
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    wanted = set(kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown PII kind(s) {sorted(unknown)}; kinds are {', '.join(KINDS)}")
    detectors = {**_DETECTORS, "IP_ADDRESS": partial(_ips, private=private_ips)}
    candidates = [m for kind in KINDS if kind in wanted for m in detectors[kind](text)]
    candidates.sort(key=lambda m: (KINDS.index(m.kind), -(m.end - m.start), m.start))
    taken: list[Match] = []
    for m in candidates:
        if all(m.end <= t.start or m.start >= t.end for t in taken):
            taken.append(m)
    return sorted(taken, key=lambda m: m.start)


def scrub(text: str, kinds: Iterable[str] | str = KINDS, private_ips: bool = False) -> tuple[str, Counter[str]]:
    """Replace every match by its placeholder (`<EMAIL>` …); return the new text and the count per kind."""
    matches = find(text, kinds, private_ips)
    counts: Counter[str] = Counter(m.kind for m in matches)
    if not matches:
        return text, counts
    parts: list[str] = []
    pos = 0
    for m in matches:
        parts += [text[pos : m.start], PLACEHOLDERS[m.kind]]
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts), counts


@dataclass
class Score:
    """Span-level counts for one kind: a prediction is right when its kind, start and end all match."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def evaluate(cases: Iterable[dict], private_ips: bool = False) -> tuple[dict[str, Score], list[str]]:
    """Score `find` on labelled cases ``{"text", "pii": [{"kind", "value"}]}``; also return the mistakes.

    Expected spans are located by searching each value in the text (first occurrence). Every IP address
    is labelled; unless `private_ips`, the non-global ones are expected to be *kept*, so replacing one
    counts as a false positive. Scores are per kind plus "ALL" (micro-averaged). Shared by
    tests/data/test_pii.py and benchmarks/pii_eval.py so the test and the printed table measure the same thing.
    """
    scores = {kind: Score() for kind in (*KINDS, "ALL")}
    mistakes: list[str] = []
    for case in cases:
        text = case["text"]
        expected = set()
        for item in case["pii"]:
            if item["kind"] == "IP_ADDRESS" and not private_ips and not is_global_ip(item["value"]):
                continue
            start = text.index(item["value"])
            expected.add(Match(start, start + len(item["value"]), item["kind"]))
        predicted = set(find(text, private_ips=private_ips))
        for m in predicted | expected:
            hit = m in predicted and m in expected
            for key in (m.kind, "ALL"):
                score = scores[key]
                if hit:
                    score.tp += 1
                elif m in predicted:
                    score.fp += 1
                else:
                    score.fn += 1
            if not hit:
                what = "false positive" if m in predicted else "missed"
                mistakes.append(f"{what} {m.kind} {text[m.start : m.end]!r} in {text!r}")
    return scores, mistakes
