"""Where HTTP carries credentials, decoded so the DLP scanner sees them as a server would.

A token inside `Authorization: Basic base64("x-access-token:ghp_…")` is invisible to a
scan of the raw header: the scanner sees only base64 text. `credential_views` returns the
decoded forms of a header's credentials (the `Basic` user and password, the credentials of
`Bearer`, `token` and any other scheme, cookie values; the raw header is scanned as any
other), and `userinfo_views` those of a URL authority's userinfo. Scheme words are matched
case-insensitively, as servers do, and base64 is decoded as leniently as the most lenient
server would (characters outside the alphabet skipped, padding optional, either alphabet),
so no spelling slips past.

Pure functions on bytes: no I/O, bounded by the header sizes the HTTP layer allows.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote_to_bytes

AUTHORIZATION_HEADERS = frozenset({b"authorization", b"proxy-authorization"})
COOKIE_HEADERS = frozenset({b"cookie", b"cookie2"})
CREDENTIAL_HEADERS = AUTHORIZATION_HEADERS | COOKIE_HEADERS

_BLANKS = re.compile(rb"[ \t]+")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=_-]")
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/_-]{8,}={0,2}")
_MIN_PRINTABLE = 0.9  # share of printable bytes for a base64 decoding to be worth scanning


def lenient_base64(text: bytes) -> bytes | None:
    """`text` decoded as base64 or base64url the way a lenient server decodes it, or None."""
    cleaned = _NOT_BASE64.sub(b"", text).rstrip(b"=")
    if not cleaned:
        return None
    cleaned = cleaned.replace(b"-", b"+").replace(b"_", b"/")
    cleaned += b"=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned)
    except (binascii.Error, ValueError):
        return None


def _printable(data: bytes) -> bool:
    if not data:
        return False
    printable = sum(1 for byte in data if 32 <= byte < 127)
    return printable / len(data) >= _MIN_PRINTABLE


def _decodings(label: str, token: bytes) -> list[tuple[str, bytes]]:
    """A credential percent-decoded, and base64-decoded when that reads as text."""
    views: list[tuple[str, bytes]] = []
    unquoted = unquote_to_bytes(token)
    if unquoted != token:
        views.append((f"{label}, percent-decoded", unquoted))
    if _BASE64_TEXT.fullmatch(token.strip()):
        decoded = lenient_base64(token)
        if decoded is not None and _printable(decoded):
            views.append((f"{label}, base64-decoded", decoded))
    return views


def _basic_views(label: str, credentials: bytes) -> list[tuple[str, bytes]]:
    decoded = lenient_base64(credentials)
    if decoded is None:
        return []  # nothing a server could decode either; the raw header is scanned
    user, _, password = decoded.partition(b":")
    views = [
        (f"{label} (Basic user)", user),
        (f"{label} (Basic password)", password),
    ]
    views += _decodings(f"{label} (Basic user)", user)
    views += _decodings(f"{label} (Basic password)", password)
    return views


def credential_views(name: bytes, value: bytes) -> list[tuple[str, bytes]]:
    """(location, bytes) for each decoded credential in one request header; [] for a
    header that carries none. `name` is lower-case, as `http1` gives it."""
    label = name.decode("latin-1")[:64] + " header"
    if name in AUTHORIZATION_HEADERS:
        words = _BLANKS.split(value.strip(), maxsplit=1)
        if len(words) == 1:  # a bare token, no scheme word
            return _decodings(label, words[0])
        scheme, credentials = words
        if scheme.lower() == b"basic":
            return _basic_views(label, credentials)
        word = scheme.decode("latin-1")[:32]
        return _decodings(f"{label} ({word})", credentials)
    if name in COOKIE_HEADERS:
        views: list[tuple[str, bytes]] = []
        for pair in value.split(b";"):
            _, _, cookie = pair.strip().partition(b"=")
            views += _decodings(f"{label} (cookie value)", cookie.strip().strip(b'"'))
        return views
    return []


def userinfo_views(authority: str) -> list[tuple[str, bytes]]:
    """The decoded user and password of an authority's userinfo (`user:pass@host`)."""
    userinfo, at, _ = authority.rpartition("@")
    if not at:
        return []
    user, _, password = userinfo.encode("latin-1", "replace").partition(b":")
    views = [("URL userinfo (user)", user), ("URL userinfo (password)", password)]
    return (
        views
        + _decodings("URL userinfo (user)", user)
        + _decodings("URL userinfo (password)", password)
    )
