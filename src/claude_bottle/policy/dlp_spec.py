"""The shape of a DLP rule and the validators the rule tables share.

A rule (`PatternSpec`) is a stable id, a regex in the subset Hyperscan,
RE2 and Python `re` share, an optional validator that decides on each
candidate match, and a one-line description. The tables live in
`dlp_patterns` (prefix tokens and structured secrets), `dlp_providers`
(more prefix tokens) and `dlp_keywords` (a provider keyword close to a
high-entropy value).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from claude_bottle.policy.validators import looks_random

Validator = Callable[[bytes, int, int], bool]

# Longest match any pattern may produce; the streaming overlap window is derived from it.
MAX_PATTERN_WIDTH = 3900  # RE2 also caps a single repetition at {,1000}


@dataclasses.dataclass(frozen=True)
class PatternSpec:
    name: str
    regex: str
    validator: Validator | None = None
    description: str = ""
    # What the multi-pattern engine searches for instead of `regex` (default:
    # a prefix of `regex`). Contract: every match of `regex` starting at s
    # has a prefilter match ending at some e with e - max_width(prefilter) <= s <= e.
    prefilter: str | None = None


def random_token(min_distinct: int, skip: int = 0, tail: int = 0) -> Validator:
    """The token part (after `skip` prefix bytes, or the last `tail` bytes) looks random."""

    def check(data: bytes, start: int, end: int) -> bool:
        begin = max(start, end - tail) if tail else start + skip
        return looks_random(data[begin:end], min_distinct)

    return check


def all_of(*checks: Validator) -> Validator:
    def check(data: bytes, start: int, end: int) -> bool:
        return all(one(data, start, end) for one in checks)

    return check


def not_example(data: bytes, start: int, end: int) -> bool:
    """AWS documentation keys contain EXAMPLE (AKIAIOSFODNN7EXAMPLE, ...EXAMPLEKEY)."""
    return b"EXAMPLE" not in data[start : end + 12]


_BASE64_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def ends_token(data: bytes, start: int, end: int) -> bool:
    """Nothing base64-like follows: an AWS secret key is exactly 40 characters."""
    return end >= len(data) or data[end] not in _BASE64_BYTES


def mixed_case(skip: int) -> Validator:
    def check(data: bytes, start: int, end: int) -> bool:
        token = data[start + skip : end]
        return token.lower() != token and token.upper() != token

    return check


# Building blocks shared by the tables. A quote may arrive raw, backslash-escaped once
# or more (a JSON string inside a JSON string), as a \u escape, an HTML entity or
# URL-encoded: API bodies carry config files and code as escaped strings.
QUOTE = r"(?:\\{0,3}[\"'\x60]|\\u00(?:22|27)|&quot;|&#39;|%2[27])"
# Space between a name and its value: blanks, real newlines or escaped ones (\n in JSON).
GAP = r"(?:[ \t]|\r?\n|\\[nrt]){0,6}"
# key = value, "key": "value", key := value, key ?= value, key => value, <key>value,
# f("KEY", "value"), key%3Dvalue (URL-encoded).
OPERATOR = r"(?:=|:{1,3}=|\?=|\.=|=>|:|\|\||,|>|%3[Dd]|%3[Aa])"
ASSIGN = rf"{QUOTE}?{GAP}{OPERATOR}{GAP}{QUOTE}?"
