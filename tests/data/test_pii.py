"""PII scrubbing: a table of positive and negative cases, and counts in the report."""

import json

import pytest

from pretrain.data.clean import clean_corpus, read_cleaned
from pretrain.data.config import CleanConfig, PiiConfig
from pretrain.data.pii import luhn_valid, scrub

KINDS = ["email", "card", "ip_address", "phone"]


@pytest.mark.parametrize("text, expected", [
    ("mail john.doe+news@example.co.uk today", "mail <EMAIL> today"),
    ("a.b@sub.example.org.", "<EMAIL>."),
    ("card 4111 1111 1111 1111 ok", "card <CARD> ok"),
    ("card 5500-0000-0000-0004", "card <CARD>"),
    ("amex 378282246310005", "amex <CARD>"),
    ("server 8.8.8.8 answered", "server <IP_ADDRESS> answered"),
    ("v6 2001:4860:4860::8888 up", "v6 <IP_ADDRESS> up"),
    ("call +1 415 555 0132 now", "call <PHONE> now"),
    ("(415) 555-0132", "<PHONE>"),
    ("415-555-0132", "<PHONE>"),
    ("+44 20 7946 0958", "<PHONE>"),
    ("+49 30 12345678", "<PHONE>"),
])
def test_positives_become_typed_placeholders(text, expected):
    assert scrub(text, KINDS)[0] == expected


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 fails Luhn",
    "private 192.168.1.1, loopback 127.0.0.1, unspecified 0.0.0.0",
    "loopback ::1 and a slice a[::2] and b[1::3]",
    "not an address 999.1.1.1",
    "date 2024-01-15 and time 12:30:45",
    "numbers 1000 2000 3000 in a table",
    "pi 3.14159265358979",
    "isbn 978-3-16-148410-0",
    "@decorator and user@localhost",
    "hex 0x1234567812345678",
    "mac 00:1A:2B:3C:4D:5E",
    "short 555-0132",
])
def test_negatives_are_left_alone(text):
    assert scrub(text, KINDS) == (text, {kind: 0 for kind in KINDS})


def test_only_the_configured_kinds_are_scrubbed():
    text = "x@example.com 8.8.8.8"
    assert scrub(text, ["email"]) == ("<EMAIL> 8.8.8.8", {"email": 1})


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("79927398710")


def test_counts_in_report_and_card(tmp_path):
    docs = [f"Write to person{n}@example.com or call +1 415 555 01{n:02d}. " * 2 for n in range(3)]
    path = tmp_path / "pii.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    report = clean_corpus(CleanConfig(inputs=[str(path)], pii=PiiConfig(enabled=True), min_chars=0, progress=False),
                          tmp_path / "out")
    assert report["pii"] == {"email": 6, "phone": 6}
    texts = [d["text"] for d in read_cleaned(sorted((tmp_path / "out").glob("cleaned-*.jsonl")))]
    assert texts[0] == "Write to <EMAIL> or call <PHONE>. Write to <EMAIL> or call <PHONE>."
    assert json.loads((tmp_path / "out" / "card.json").read_text())["pii"] == {"email": 6, "phone": 6}
