"""The contract's token rule, in Python and as a regular expression for SQL engines.

A token is a maximal run of characters for which ``str.isalpha()`` or ``str.isdigit()``
is true, taken from the lower-cased text. The character class is generated from
Python's own ``str`` methods, so the SQL tokenizer (DuckDB's RE2) and the Python one
agree by construction rather than by a hand-written approximation.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Iterable
from functools import cache
from importlib import resources


@cache
def _token_char_ranges() -> tuple[tuple[int, int], ...]:
    """Ranges of code points that are token characters, as this Python sees them.

    Read from ``token_ranges.json`` when it was generated for this Python's Unicode version (saves
    ~1 s per process); otherwise computed. A test checks the file against the computation.
    """
    with resources.files("persona_assets.contract").joinpath("token_ranges.json").open(encoding="utf-8") as f:
        cached = json.load(f)
    if cached["unicode_version"] == unicodedata.unidata_version:
        return tuple((lo, hi) for lo, hi in cached["ranges"])
    return compute_token_char_ranges()


def compute_token_char_ranges() -> tuple[tuple[int, int], ...]:
    """Scan every code point with ``str.isalpha`` / ``str.isdigit``."""
    ranges: list[tuple[int, int]] = []
    start = None
    for code in range(sys.maxunicode + 2):
        is_token_char = code <= sys.maxunicode and (chr(code).isalpha() or chr(code).isdigit())
        if is_token_char and start is None:
            start = code
        elif not is_token_char and start is not None:
            ranges.append((start, code - 1))
            start = None
    return tuple(ranges)


@cache
def token_regex_re2() -> str:
    """The token pattern in RE2 syntax (DuckDB's ``regexp_extract_all``)."""
    parts = [f"\\x{{{lo:x}}}" if lo == hi else f"\\x{{{lo:x}}}-\\x{{{hi:x}}}" for lo, hi in _token_char_ranges()]
    return "[" + "".join(parts) + "]+"


@cache
def _token_regex_python() -> re.Pattern[str]:
    parts = [f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in _token_char_ranges()]
    return re.compile("[" + "".join(parts) + "]+")


def tokenize(text: str) -> list[str]:
    """Tokens of ``text`` under the contract's rule (lower-case first, then split)."""
    return _token_regex_python().findall(text.lower())


def token_key(text: str) -> str:
    """Tokens joined by one space: two names match a query span iff their keys are equal.

    A space can never occur inside a token, so the join is unambiguous.
    """
    return " ".join(tokenize(text))


def contains_name(text_tokens: list[str], name_tokens: list[str]) -> bool:
    """True when ``name_tokens`` occur contiguously in ``text_tokens`` (an empty name never does)."""
    n = len(name_tokens)
    if n == 0:
        return False
    return any(text_tokens[i : i + n] == name_tokens for i in range(len(text_tokens) - n + 1))


def names_found(text: str, names: Iterable[str]) -> set[str]:
    """Every name of ``names`` found in ``text`` (reference implementation for tests and small inputs)."""
    text_tokens = tokenize(text)
    return {name for name in names if contains_name(text_tokens, tokenize(name))}
