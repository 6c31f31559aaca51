"""The one parser for numbers read from outside: only ASCII ``[0-9]+``, bounded, never raising;
and no other module parses numbers with ``str.isdigit()`` or ``\\d`` (which accept any script)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamtrain.ascii_int import ASCII_DIGITS, MAX_DIGITS, is_ascii_int, parse_ascii_int

PACKAGE = Path(__file__).resolve().parents[2] / "streamtrain"

# Digits of other scripts and forms: str.isdigit() says True to every one; int() refuses the
# superscripts (a ValueError where a 4xx was due) and silently accepts the rest.
NON_ASCII_DIGITS = [
    "\u00b9",  # superscript one
    "\u00b2",  # superscript two
    "\u00b3",  # superscript three
    "\u2074",  # superscript four
    "\u2081",  # subscript one
    "\u0663",  # Arabic-Indic three
    "\u06f3",  # extended Arabic-Indic three
    "\u0969",  # Devanagari three
    "\uff13",  # fullwidth three
    "\U0001d7d1",  # mathematical bold three
    "\u2460",  # circled one
]
NOT_NUMBERS = ["", " 1", "1 ", "+1", "-1", "1_000", "0x1", "1.0", "1e3", "١٢", "1\u00b2", "\n1"]


@pytest.mark.parametrize("text", NON_ASCII_DIGITS + NOT_NUMBERS)
def test_only_ascii_digits_are_numbers(text: str) -> None:
    assert parse_ascii_int(text) is None
    assert parse_ascii_int(text.encode()) is None
    assert not is_ascii_int(text)
    assert ASCII_DIGITS.fullmatch(text) is None


def test_ascii_numbers_parse_up_to_the_bound() -> None:
    assert parse_ascii_int("0") == 0
    assert parse_ascii_int("0042") == 42
    assert parse_ascii_int(b"65535") == 65535
    assert parse_ascii_int("9" * MAX_DIGITS) == int("9" * MAX_DIGITS)
    assert parse_ascii_int("9" * (MAX_DIGITS + 1)) is None
    assert parse_ascii_int("1" * 1_000_000) is None  # bounded before int() sees it
    assert parse_ascii_int("123", max_digits=2) is None
    assert parse_ascii_int(b"\xff1") is None


def test_no_module_parses_numbers_with_isdigit_or_unicode_digit_classes() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "ascii_int.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\.(isdigit|isdecimal|isnumeric)\(|\\d", code):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, "parse with streamtrain.ascii_int instead:\n" + "\n".join(offenders)
