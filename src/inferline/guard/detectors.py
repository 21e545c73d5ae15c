"""PII-like and secret-like strings, found by pattern and (where the format has one) its
checksum, so an order number is not taken for a card number.

Our own (Presidio, the usual library, needs spaCy models, which no reachable registry
serves, and answers in milliseconds where these take microseconds); each detector is a
regular expression and an optional validator of the match.
"""

from __future__ import annotations

import re
from collections.abc import Callable


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    numbers = [int(d) for d in digits if d.isdecimal()]
    if not 13 <= len(numbers) <= 19:
        return False
    total = 0
    for i, n in enumerate(reversed(numbers)):
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: the country code and check digits moved to the end, letters as numbers,
    the whole is 1 modulo 97."""
    compact = re.sub(r"\s", "", text).upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def _ssn_valid(text: str) -> bool:
    area, group, serial = text.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


Validator = Callable[[str], bool]
DETECTORS: dict[str, tuple[re.Pattern[str], Validator | None]] = {
    "email": (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"), None),
    "phone": (
        re.compile(
            r"(?<![\w+])(?<!\d[ .-])\+?\d{1,3}?[ .-]?\(?\d{2,4}\)?[ .-]\d{3,4}[ .-]\d{3,4}"
            r"(?![ .-]?\d)"
        ),
        lambda text: 9 <= sum(ch.isdigit() for ch in text) <= 15,
    ),
    "credit_card": (re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), luhn_valid),
    "iban": (
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        iban_valid,
    ),
    "us_ssn": (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), _ssn_valid),
    "ipv4": (
        re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
        None,
    ),
    "secret": (
        re.compile(
            r"\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}"
            r"|xox[baprs]-[A-Za-z0-9-]{10,}|il-[A-Za-z0-9_-]{20,})\b"
        ),
        None,
    ),
}


def detect(names: tuple[str, ...], text: str) -> str | None:
    """The first of ``names`` found in ``text`` (a validated match), or None."""
    for name in names:
        pattern, valid = DETECTORS[name]
        for match in pattern.finditer(text):
            if valid is None or valid(match.group()):
                return name
    return None
