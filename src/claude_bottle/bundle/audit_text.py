"""Text that goes into the audit log and out to a terminal: bounded in length, with
control, separator, bidi and surrogate characters escaped, and the secret-looking parts
of paths redacted (`redact_path`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

MAX_PATH = 2048
"""Longest `path` written, "…" marker included."""

MAX_TEXT = 4096
"""Longest string written in any other field (and inside `detail`)."""

_MAX_PATH_INPUT = 8 * MAX_PATH  # look at no more than this much of a hostile path
_MAX_ITEMS = 1000  # per list/dict inside `detail`
_MAX_DEPTH = 8  # nesting inside `detail`
_ELLIPSIS = "…"
_REDACTED = "REDACTED"
# Characters that must never reach a terminal or a log line raw: C0/C1 controls, DEL,
# lone surrogates (undecodable bytes), line/paragraph separators and bidi overrides.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_URL_HEAD = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*:)?//(?P<authority>[^/?#]*)")
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_\-+=.]{32,}")
_LETTER = re.compile(r"[A-Za-z]")
_DIGIT = re.compile(r"[0-9]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _escape_unsafe(text: str) -> str:
    """Replace control, separator, bidi and surrogate characters by visible escapes."""
    if text.isprintable():  # every character _UNSAFE matches is unprintable
        return text
    return _UNSAFE.sub(_escape, text)


def cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def clean(text: str, limit: int = MAX_TEXT) -> str:
    """A string that is safe to encode as UTF-8 (surrogates escaped) and bounded in length."""
    if not text.isascii():  # the usual host, method and rule are, and cannot hold one
        text = _SURROGATE.sub(_escape, text)
    return cap(text, limit)


def as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    try:
        return str(value)
    except Exception:
        return "<unprintable>"


def jsonable(value: object, depth: int = 0) -> object:
    """`value` as plain JSON data that survives a dump/load round trip unchanged."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 256 else "<integer too large>"
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        return clean(value)
    if depth >= _MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, Mapping):
        return {
            clean(as_text(k), 256): jsonable(v, depth + 1)
            for k, v in list(value.items())[:_MAX_ITEMS]
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
    return clean(as_text(value))


def _redact_token(match: re.Match[str]) -> str:
    run = match.group()
    if _LETTER.search(run) and _DIGIT.search(run):
        return _REDACTED
    return run


def _redact_tokens(text: str) -> str:
    """Replace long opaque runs (>= 32 chars, letters and digits mixed) by REDACTED.

    Runs stop at "/", so ordinary multi-segment paths are kept; each segment (or the
    token-looking part of one, e.g. after "%20") is judged on its own.
    """
    return _TOKEN_RUN.sub(_redact_token, text)


def _redact_query(query: str) -> str:
    params = []
    for param in query.split("&"):
        key, eq, value = param.partition("=")
        key = _redact_tokens(key)
        params.append(f"{key}={_REDACTED}" if eq and value else f"{key}{eq}")
    return "&".join(params)


def redact_path(path: str) -> str:
    """`path` (origin-form or absolute URL) with anything secret-looking removed.

    Every query value becomes REDACTED (keys are kept), the fragment is dropped,
    userinfo of an absolute URL is stripped, long opaque token-looking runs in the
    path become REDACTED, control characters are escaped, and the result is capped
    at MAX_PATH characters (ending in "…" when cut). Never raises.
    """
    try:
        text = as_text(path)[:_MAX_PATH_INPUT]
        text = _escape_unsafe(text).partition("#")[0]
        head = ""
        match = _URL_HEAD.match(text)
        if match:
            authority = match.group("authority").rpartition("@")[2]
            head = f"{match.group('scheme') or ''}//{authority}"
            text = text[match.end() :]
        rest, question, query = text.partition("?")
        redacted = head + _redact_tokens(rest)
        if question:
            redacted += "?" + _redact_query(query)
        return cap(redacted, MAX_PATH)
    except Exception:  # pragma: no cover - defensive: a log line must never crash the proxy
        return _REDACTED


def printable(text: str) -> str:
    """`text` safe to print on a terminal: control, separator and bidi characters escaped."""
    return _escape_unsafe(text)


def format_record(record: Mapping[str, object]) -> str:
    """One human-readable line, e.g.
    `10:00:00.123  deny         egress     GET evil.test:80/path  rule=deny:not-allowlisted`.

    Tolerates missing or oddly typed fields; control characters are escaped so a
    hostile host name or path cannot drive the terminal.
    """

    def text(key: str) -> str:
        value = record.get(key)
        return "" if value is None else _escape_unsafe(cap(as_text(value), MAX_TEXT))

    ts = text("ts")
    when = ts[11:23] if len(ts) >= 23 and ts[10:11] == "T" else ts
    parts = [f"{when:<12}", f"{text('decision'):<11}", f"{text('kind'):<9}"]
    target = text("host")
    port = text("port")
    if target and port not in ("", "0"):
        target = f"{target}:{port}"
    path = text("path")
    if path:
        # Host and port always come first: a path the bottle chose ("//other.host/…")
        # must not read as the destination.
        target = f"{target}{path}" if target and path.startswith("/") else f"{target} {path}"
        target = target.strip()
    method = text("method")
    if method:
        target = f"{method} {target}" if target else method
    if target:
        parts.append(target)
    rule = text("rule")
    if rule:
        parts.append(f"rule={rule}")
    up, down = text("bytes_up"), text("bytes_down")
    if up not in ("", "0") or down not in ("", "0"):
        parts.append(f"up={up or 0} down={down or 0}")
    detail = record.get("detail")
    if isinstance(detail, Mapping) and detail:
        shown = " ".join(
            f"{as_text(k)}={json.dumps(v, ensure_ascii=False, default=str)}"
            for k, v in detail.items()
        )
        parts.append(_escape_unsafe(cap(shown, 300)))
    return "  ".join(parts).rstrip()
