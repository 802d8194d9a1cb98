"""Fuzz targets for what decides where a request may go and what DLP sees in it.

* CONNECT authorities (`bundle.gate.parse_authority`): a (host, port) or a Refusal with
  status 400, nothing else; what it accepts, written back, parses the same.
* Host names (`policy.allowlist.normalize_host`, `parse_ip_literal`, `validate_pattern`):
  HostError/PatternError or a name that is its own normal form; a name the allowlist
  treats as a host name is no IP literal to the C library either (getaddrinfo with
  AI_NUMERICHOST, inet_aton), so no notation smuggles an address past the IP rules;
  `Allowlist.check` never raises and decides the same for a host and its normal form.
* Credential decoders (`policy.dlp_http`): no exception for any header, and a token put
  in any carrier a server decodes (Basic, Bearer, token, cookies, URL userinfo; base64 in
  either alphabet, padded or not, with junk; percent-encoding) is in what DLP scans.
"""

from __future__ import annotations

import base64
import socket
from urllib.parse import quote_from_bytes

from claude_bottle.bundle.gate import parse_authority
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.policy.allowlist import (
    Allowlist,
    HostError,
    PatternError,
    normalize_host,
    validate_pattern,
)
from claude_bottle.policy.dlp_http import CREDENTIAL_HEADERS, credential_views, userinfo_views
from claude_bottle.policy.netguard import parse_ip_literal
from tests.fuzz.source import Source

# -- host-like text ------------------------------------------------------------------

HOST_PIECES = [
    "a",
    "example",
    "com",
    "test",
    "xn--",
    "xn--bcher-kva",
    "0x7f",
    "0X7F",
    "0177",
    "127",
    "1",
    "0",
    "255",
    "256",
    "4294967295",
    "4294967296",
    "00",
    "08",
    "::",
    "::1",
    "::ffff:",
    "fe80::1",
    "%25",
    "%eth0",
    "[",
    "]",
    ".",
    ".",
    ".",
    ":",
    "@",
    "*",
    "*.",
    "/",
    "/8",
    "/32",
    "-",
    "_",
    "ß",
    "ς",
    "bücher",
    "Ⅷ",
    "ａ",
    "．",
    "。",
    "\u200b",
    "\u00ad",
    " ",
    "\t",
    "\x00",
    "\ud800",
    "İ",
    "K",
]


def host_text(source: Source) -> str:
    """Host-like text: mostly pieces of names and IP notations, sometimes any text."""
    if source.chance(20):
        return source.text(40)
    return "".join(source.pick(HOST_PIECES) for _ in range(source.below(12)))


def _numeric_to_libc(name: str) -> bool:
    try:
        socket.getaddrinfo(name, None, flags=socket.AI_NUMERICHOST)
        return True
    except (OSError, UnicodeError, ValueError):
        pass
    try:
        socket.inet_aton(name)
        return True
    except (OSError, ValueError, UnicodeError):
        return False


ALLOWLIST = Allowlist(
    ["a.test", "*.example.com", "10.0.0.0/8", "xn--bcher-kva.test", "::1/128"],
    ["bad.example.com", "10.9.0.0/16"],
)


def host_normalisation(data: bytes) -> None:
    source = Source(data)
    host = host_text(source)
    decision = ALLOWLIST.check(host)
    try:
        name = normalize_host(host)
    except HostError:
        assert not decision.allowed and decision.rule == "deny:bad-host", decision
        return
    assert normalize_host(name) == name, (host, name)
    again = ALLOWLIST.check(name)
    assert (again.allowed, again.rule) == (decision.allowed, decision.rule), (host, name)
    ip = parse_ip_literal(name)
    if ip is None:
        assert name.isascii() and name == name.lower(), name
        assert not _numeric_to_libc(name), f"{name!r} is an address to the C library"
    else:
        assert name == str(ip), (host, name, ip)
        written = parse_ip_literal(host)
        assert written is not None and str(written) == name, (host, name, written)


def allowlist_pattern(data: bytes) -> None:
    pattern = host_text(Source(data))
    try:
        normalised = validate_pattern(pattern)
    except PatternError:
        return
    assert validate_pattern(normalised) == normalised, (pattern, normalised)
    Allowlist([normalised]).check(normalised.removeprefix("*.").partition("/")[0])


# -- CONNECT authorities ---------------------------------------------------------------

PORT_PIECES = ["", "1", "80", "443", "65535", "65536", "0", "99999", "123456", "-1", "+1"]
PORT_PIECES += ["²", "١٢", "٣", "８０", " 80", "80 ", "0x50", "1_0", ":", "@"]


def connect_authority(data: bytes) -> None:
    source = Source(data)
    if source.chance(64):  # as the proxy gets it: bytes decoded as ASCII, errors replaced
        authority = source.raw(64).decode("ascii", "replace")
    else:
        authority = host_text(source)
        if source.chance(200):
            authority += ":" + "".join(source.pick(PORT_PIECES) for _ in range(source.below(3)))
    default = source.pick([80, 443])
    try:
        host, port = parse_authority(authority, default)
    except Refusal as exc:
        assert exc.status == 400 and exc.rule.startswith("deny:"), exc.rule
        return
    assert host and isinstance(port, int) and 0 <= port <= 99999, (host, port)
    assert "@" not in host
    ALLOWLIST.check(host)
    if "[" in host or "]" in host:
        return  # "[[]" or a "bare IPv6 literal" with junk in it: normalize_host refuses it
    written = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert parse_authority(written, default) == (host, port), (authority, written)


# -- credential decoders ------------------------------------------------------------------

TOKEN_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
JUNK = b" \t.!*~\x00\xff"


def _base64(source: Source, data: bytes, *, junk: bool = True) -> bytes:
    encoded = base64.b64encode(data)
    if source.chance(128):
        encoded = base64.urlsafe_b64encode(data)
    if source.chance(128):
        encoded = encoded.rstrip(b"=")
    if junk and source.chance(40):  # junk a lenient Basic decoder skips
        at = source.below(len(encoded) + 1)
        encoded = encoded[:at] + source.pick([b".", b"!", b"*", b"\\", b"~"]) + encoded[at:]
    return encoded


def _maybe_percent(source: Source, token: bytes) -> bytes:
    return quote_from_bytes(token, safe=b"").encode() if source.chance(40) else token


def _scheme(source: Source, word: bytes) -> bytes:
    return bytes(c ^ 0x20 if c >= 0x61 and source.chance(100) else c for c in word)


def credential_decoders(data: bytes) -> None:
    source = Source(data)
    name = source.pick(sorted(CREDENTIAL_HEADERS))
    # Any header value at all: views are (str, bytes) and nothing raises.
    for label, view in credential_views(name, source.raw(200)):
        assert isinstance(label, str) and isinstance(view, bytes)
    token = b"tk" + source.chars(TOKEN_ALPHABET, 56, minimum=20)
    user = source.chars(TOKEN_ALPHABET, 12)
    blank = source.pick([b" ", b" ", b"  ", b"\t"])
    kind = source.below(5)
    if kind == 0:
        secret = _maybe_percent(source, token)
        credentials = (token + b":" + user) if source.chance(60) else (user + b":" + secret)
        value = _scheme(source, b"basic") + blank + _base64(source, credentials)
        header = source.pick(sorted({b"authorization", b"proxy-authorization"}))
    elif kind in (1, 2):
        word = source.pick([b"bearer", b"token", b"negotiate", b"x"])
        carried = _base64(source, token, junk=False) if kind == 2 else _maybe_percent(source, token)
        value = _scheme(source, word) + blank + carried
        header = source.pick(sorted({b"authorization", b"proxy-authorization"}))
    elif kind == 3:
        carried = (
            _base64(source, token, junk=False)
            if source.chance(128)
            else _maybe_percent(source, token)
        )
        if source.chance(60):
            carried = b'"' + carried + b'"'
        value = b"a=1; sid=" + carried + source.pick([b"", b"; b=2", b";"])
        header = source.pick(sorted({b"cookie", b"cookie2"}))
    else:
        secret = _maybe_percent(source, token).decode("ascii")
        authority = f"{user.decode()}:{secret}@a.test:443"
        seen = [view for _, view in userinfo_views(authority)]
        assert any(token in view for view in seen), (authority, seen)
        return
    seen = [value] + [view for _, view in credential_views(header, value)]
    assert any(token in view for view in seen), (header, value, seen)
