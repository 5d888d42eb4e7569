"""PII scrubbing: precision and recall on the labelled set, placeholders and counts, hard negatives kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homegrown.config import IngestConfig
from homegrown.data.pii import KINDS, PLACEHOLDERS, evaluate, find, scrub

CASES = Path(__file__).with_name("pii_cases.jsonl")


def _cases() -> list[dict]:
    return [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_labelled_set_is_large_and_covers_every_kind() -> None:
    cases = _cases()
    assert len(cases) >= 150
    assert sum(1 for c in cases if not c["pii"]) >= 60  # hard negatives: numbers, dates, versions, hashes …
    kinds = {item["kind"] for c in cases for item in c["pii"]}
    assert kinds == set(KINDS)


@pytest.mark.parametrize("private_ips", [False, True], ids=["public-ips", "all-ips"])
def test_precision_and_recall_on_the_labelled_set(private_ips: bool) -> None:
    scores, mistakes = evaluate(_cases(), private_ips=private_ips)
    table = "\n".join(f"{k}: P={s.precision:.3f} R={s.recall:.3f}" for k, s in scores.items())
    assert scores["ALL"].recall >= 0.95, table + "\n" + "\n".join(mistakes)
    assert scores["ALL"].precision >= 0.95, table + "\n" + "\n".join(mistakes)
    for kind in KINDS:
        assert scores[kind].recall >= 0.9, table + "\n" + "\n".join(mistakes)
        assert scores[kind].precision >= 0.9, table + "\n" + "\n".join(mistakes)


def test_scrub_replaces_with_typed_placeholders_and_counts() -> None:
    text = (
        "Mail ana@example.org or bob@example.net, call +44 20 7946 0958, server 81.2.69.160, "
        "card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE. Python 3.11.7 was released on 2023-12-04."
    )
    out, counts = scrub(text)
    assert counts == {"EMAIL": 2, "PHONE": 1, "IP_ADDRESS": 1, "CREDIT_CARD": 1, "SECRET": 1}
    assert out == (
        "Mail <EMAIL> or <EMAIL>, call <PHONE>, server <IP_ADDRESS>, "
        "card <CREDIT_CARD>, key <SECRET>. Python 3.11.7 was released on 2023-12-04."
    )
    assert set(PLACEHOLDERS.values()) == {f"<{k}>" for k in KINDS}


def test_scrub_is_idempotent_and_leaves_clean_text_alone() -> None:
    text = "Reach me at x.y@example.com from 45.33.32.156"
    once, _ = scrub(text)
    twice, counts = scrub(once)
    assert twice == once and not counts
    clean = ">>> datetime.date(2024, 3, 15)\nlisten on 127.0.0.1:8080, sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709"
    assert scrub(clean) == (clean, {})


def test_private_key_block_is_replaced_whole_and_certificates_are_kept() -> None:
    key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yBy\n-----END EC PRIVATE KEY-----"
    cert = "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTAN\n-----END CERTIFICATE-----"
    out, counts = scrub(f"key:\n{key}\ncert:\n{cert}\n")
    assert out == f"key:\n<SECRET>\ncert:\n{cert}\n"
    assert counts == {"SECRET": 1}


def test_luhn_decides_credit_cards() -> None:
    assert [m.kind for m in find("4111 1111 1111 1111")] == ["CREDIT_CARD"]
    assert find("4111 1111 1111 1112") == []


def test_kinds_can_be_selected() -> None:
    out, counts = scrub("a@example.com 81.2.69.160", kinds=["EMAIL"])
    assert out == "<EMAIL> 81.2.69.160" and counts == {"EMAIL": 1}
    assert scrub("a@example.com 81.2.69.160", kinds=IngestConfig().pii_kinds)[0] == "<EMAIL> <IP_ADDRESS>"
    assert scrub("a@example.com", kinds="")[0] == "a@example.com"
    with pytest.raises(ValueError, match="unknown PII kind"):
        scrub("x", kinds=["SSN"])


def test_only_globally_reachable_addresses_are_replaced_unless_asked() -> None:
    text = "docs use 192.0.2.1 and 2001:db8::1, the LAN 192.168.1.10 and 10.1.2.0/24; the host is 151.101.1.69"
    out, counts = scrub(text)
    assert out == text.replace("151.101.1.69", "<IP_ADDRESS>") and counts == {"IP_ADDRESS": 1}
    out, counts = scrub(text, private_ips=True)
    assert counts == {"IP_ADDRESS": 5}
    assert "192.0.2.1" not in out and "2001:db8::1" not in out and "10.1.2.0/24" not in out
