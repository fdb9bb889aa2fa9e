"""PII scrubbing: e-mail addresses, payment cards, IP addresses and phone numbers → typed placeholders.

Regexes find candidates; each candidate is then checked (Luhn for cards, `ipaddress` for IPs,
digit counts for phones) so that version strings, dates and long numbers are left alone.
Measured (FACTS.md): regex + checks find every planted item at ~5 MB/s; presidio needs a spaCy
model that is not on PyPI and ran at 0.02 MB/s, so this is our own.
"""

import ipaddress
import re

PLACEHOLDERS = {"email": "<EMAIL>", "card": "<CARD>", "ip_address": "<IP_ADDRESS>", "phone": "<PHONE>"}

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# A phone needs a country code, an area code in parentheses, or US-style dashes/dots: plain runs of
# space-separated numbers are too common in code and tables.
_PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\d{2,4}){2,3}"
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}"
    r"|\d{3}[.-]\d{3,4}[.-]\d{4}"
    r")(?![\w-])"
)


def scrub(text: str, kinds) -> tuple[str, dict[str, int]]:
    """Text with each PII kind in `kinds` replaced by its placeholder, and counts per kind."""
    counts = {}
    for kind in ("email", "card", "ip_address", "phone"):
        if kind in kinds:
            text, counts[kind] = _SCRUBBERS[kind](text)
    return text, counts


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of payment-card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        d = int(char)
        if position % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _replace(pattern: re.Pattern, placeholder: str, check, text: str) -> tuple[str, int]:
    count = 0

    def substitute(match):
        nonlocal count
        if not check(match.group()):
            return match.group()
        count += 1
        return placeholder

    return pattern.sub(substitute, text), count


def _is_card(candidate: str) -> bool:
    digits = re.sub(r"[ -]", "", candidate)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _is_public_ipv6(candidate: str) -> bool:
    # Slices like a[::2] parse as IPv6 too: a real address shows at least three groups.
    return sum(1 for group in candidate.split(":") if group) >= 3 and _is_public_ip(candidate)


def _is_public_ip(candidate: str) -> bool:
    # Private, loopback, link-local and reserved addresses identify no one and fill docs and configs.
    try:
        return ipaddress.ip_address(candidate).is_global
    except ValueError:
        return False


def _is_phone(candidate: str) -> bool:
    return 9 <= sum(c.isdigit() for c in candidate) <= 15


_SCRUBBERS = {
    "email": lambda text: _replace(_EMAIL, PLACEHOLDERS["email"], lambda m: True, text),
    "card": lambda text: _replace(_CARD, PLACEHOLDERS["card"], _is_card, text),
    "ip_address": lambda text: _ip_scrub(text),
    "phone": lambda text: _replace(_PHONE, PLACEHOLDERS["phone"], _is_phone, text),
}


def _ip_scrub(text: str) -> tuple[str, int]:
    # The cheap tests keep the common case (no dot-quad, no double colon group) free of regex work.
    count4 = count6 = 0
    if "." in text:
        text, count4 = _replace(_IPV4, PLACEHOLDERS["ip_address"], _is_public_ip, text)
    if "::" in text or text.count(":") >= 7:
        text, count6 = _replace(_IPV6, PLACEHOLDERS["ip_address"], _is_public_ipv6, text)
    return text, count4 + count6
