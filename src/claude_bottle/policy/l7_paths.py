"""Request paths as `[[egress.rules]]` match them: normalised, or refused as ambiguous.

A rule allows `/repos/acme/*`; the server decides what `/repos/acme/x/..%2F..%2Fother`
means. So the path a rule sees must be the one every server would see, and a path that
servers could read two ways is refused instead of guessed:

- escapes of unreserved characters (`%41`, `%2e`, `%7E`) are decoded; every other escape
  stays, with upper-case hex, so `*` cannot cross it as a separator;
- a `.` or `..` segment, an empty segment (`//`), a `;` (path parameters, which some
  servers strip) or a backslash is refused, whether written or encoded, also under a
  second round of decoding (`%252e`);
- an encoded `/` is refused, except in npm's scoped package names (`/@scope%2Fname`,
  one segment that starts with `@`), which the npm client sends for every scoped install;
- escapes that do not decode to UTF-8 (`%C0%AE`, an overlong `.`) and any control
  character (NUL above all) are refused.

The query is not part of the path and is not matched. Globs: `*` matches within one
segment, `**` across segments (`/a/**` also matches `/a`). Pure functions.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

MAX_PATH = 8192  # longer paths are refused, not matched
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_NPM_SCOPE = re.compile(r"@[^/%.][^/%]*%2F[^/%]+")
_AMBIGUOUS_BYTES = re.compile(rb"[\x00-\x1f\x7f\\;]")
# A path of plain characters only: no escape to decode, nothing to refuse but its segments.
_PLAIN = re.compile(r"/[A-Za-z0-9._~!$&'()*+,=:@/-]*")


class AmbiguousPath(ValueError):
    """A path servers could read in more than one way; the request is refused."""


class _Decoded(NamedTuple):
    text: str  # the normalised path: unreserved escapes decoded, others upper-case
    decoded: bytes  # every escape decoded once (what a decoding server sees)


def _decode_once(raw: bytes) -> _Decoded:
    if _BAD_ESCAPE.search(raw):
        raise AmbiguousPath("a '%' that starts no escape")

    def normal(match: re.Match[bytes]) -> bytes:
        byte = int(match.group(1), 16)
        return bytes([byte]) if byte in _UNRESERVED else b"%" + match.group(1).upper()

    text = _ESCAPE.sub(normal, raw)
    decoded = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    return _Decoded(text.decode("ascii"), decoded)


def _check_segments(path: bytes, what: str) -> None:
    if _AMBIGUOUS_BYTES.search(path):
        raise AmbiguousPath(f"{what} holds a control character, a backslash or a ';'")
    try:
        path.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AmbiguousPath(f"{what} is not UTF-8 (an overlong or broken sequence)") from exc
    segments = path.split(b"/")[1:]
    for index, segment in enumerate(segments):
        if segment in (b".", b".."):
            raise AmbiguousPath(f"{what} has a '.' or '..' segment")
        if not segment and index != len(segments) - 1:
            raise AmbiguousPath(f"{what} has an empty segment ('//')")


def normalise_path(target: str) -> str:
    """The origin-form `target`'s path as rules match it; AmbiguousPath when refused."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        raise AmbiguousPath("the target is not an absolute path")
    if len(path) > MAX_PATH:
        raise AmbiguousPath("the path is too long to match")
    if _PLAIN.fullmatch(path):  # the common case, checked the same way without decoding
        _check_segments(path.encode("ascii"), "the path")
        return path
    try:
        raw = path.encode("ascii")
    except UnicodeEncodeError as exc:
        raise AmbiguousPath("the path holds bytes that are not ASCII") from exc
    _check_segments(raw, "the path")
    once = _decode_once(raw)
    for segment in once.text.split("/"):
        if ("%2F" in segment or "%5C" in segment) and not _NPM_SCOPE.fullmatch(segment):
            raise AmbiguousPath("the path has an encoded '/' or '\\'")
    # What a server that decodes every escape sees, and one that decodes twice (an npm
    # scope's slash splits its segment in two there, neither of them empty or dots).
    _check_segments(once.decoded, "the decoded path")
    twice = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), once.decoded)
    _check_segments(twice, "the twice-decoded path")
    return once.text


@functools.lru_cache(maxsize=1024)
def compile_glob(glob: str) -> re.Pattern[str]:
    """A path glob as a regex: `*` within a segment, `**` across; `/x/**` matches `/x`."""
    parts: list[str] = []
    index = 0
    while index < len(glob):
        if glob.startswith("/**", index) and index + 3 == len(glob):
            parts.append("(?:/.*)?")
            break
        if glob.startswith("**", index):
            parts.append(".*")
            index += 2
        elif glob[index] == "*":
            parts.append("[^/]*")
            index += 1
        else:
            parts.append(re.escape(glob[index]))
            index += 1
    return re.compile("".join(parts))


def glob_matches(glob: str, path: str) -> bool:
    return compile_glob(glob).fullmatch(path) is not None
