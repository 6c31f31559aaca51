"""The one parser for a non-negative integer read from outside the process.

HTTP paths and headers, Kafka headers and keys, file names and file contents, settings: every
number that arrives as text is parsed here. Python's own digit test is no guard for ``int()``: it
accepts superscripts (``"²"``), which ``int()`` refuses with a ValueError (a 5xx, a topic-read
failure), and ``int()`` itself accepts Arabic-Indic (``"٣"``) and fullwidth (``"３"``) digits,
spaces, signs and underscores. Only ``[0-9]+`` is a number on our wire, and it is bounded, so a
megabyte of digits costs nothing. The module imports nothing of streamtrain, so any layer may
use it.

>>> parse_ascii_int("42"), parse_ascii_int("²"), parse_ascii_int("٣"), parse_ascii_int(" 1")
(42, None, None, None)
>>> parse_ascii_int(b"007")
7
>>> ASCII_DIGITS.pattern
'[0-9]{1,19}'
"""

from __future__ import annotations

import re

MAX_DIGITS = 19
"""Longest accepted number: 19 digits hold every int64 and every Kafka offset or port."""

ASCII_DIGITS = re.compile(f"[0-9]{{1,{MAX_DIGITS}}}")
"""The accepted form, for regular expressions that embed it (``\\d`` matches any script)."""


def parse_ascii_int(text: str | bytes, max_digits: int = MAX_DIGITS) -> int | None:
    """``text`` as an int when it is 1 to ``max_digits`` ASCII digits and nothing else; else
    None (never an exception, whatever the input)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def is_ascii_int(text: str | bytes, max_digits: int = MAX_DIGITS) -> bool:
    """True when :func:`parse_ascii_int` accepts ``text``."""
    return parse_ascii_int(text, max_digits) is not None
