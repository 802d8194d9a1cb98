"""What the API gateway forwards: request-head admission and header rewriting, no I/O.

Only clean origin-form paths under `/v1/` pass, with the methods the API uses; every
credential and hop-by-hop header the bottle sent is dropped and the real credential
injected. A request that may not pass raises `Refusal`; `error_body` words the answer in
the Messages API's own error shape, so a client shows it as is.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

from claude_bottle.bundle.connection import HOP_BY_HOP, connection_tokens, forwarded_headers
from claude_bottle.bundle.credentials import Credential
from claude_bottle.bundle.refusal import Refusal

OAUTH_BETA = b"oauth-2025-04-20"
"""The `anthropic-beta` flag Claude Code sends with an OAuth (Claude.ai login) bearer token."""

ALLOWED_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"DELETE"})
CREDENTIAL_HEADERS = frozenset(
    {
        b"x-api-key",
        b"authorization",
        b"anthropic-api-key",
        b"proxy-authorization",
        b"cookie",
        b"cookie2",
    }
)
# Not credentials, but nothing the API needs from the bottle either; accept-encoding is
# dropped so responses come back uncompressed and their usage can be read.
DROPPED_REQUEST = frozenset(
    {b"accept-encoding", b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-real-ip"}
)
DROPPED_RESPONSE = frozenset({b"set-cookie", b"set-cookie2"})

_PATH_CHARS = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")
_QUERY_CHARS = re.compile(r"[\x21-\x7e]*")
_ENCODED_FORBIDDEN = ("%2e", "%2f", "%5c", "%00", "%25")

_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
}


def error_body(status: int, reason: str) -> bytes:
    """A one-line error in the Messages API's own shape, so clients show `reason` as is."""
    message = "claude-bottle gateway: " + reason.replace("\r", " ").replace("\n", " ")
    payload = {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
    }
    return json.dumps(payload).encode() + b"\n"


def api_target(target: bytes) -> str:
    """The origin-form target to forward, or `Refusal`: only clean paths under /v1/ pass.

    Percent-encoded `.`, `/`, `\\`, NUL and `%` are refused outright, so decoding cannot
    change how the path splits into segments; the raw (validated) target is forwarded.
    """
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise Refusal(400, "gateway:bad-target", "request target is not ASCII") from None
    if not text.startswith("/"):
        raise Refusal(
            400,
            "gateway:bad-target",
            "only origin-form targets (/v1/...) are accepted; this is not a proxy",
        )
    if text.startswith("//"):
        raise Refusal(400, "gateway:bad-target", "target must not start with //")
    if "#" in text:
        raise Refusal(400, "gateway:bad-target", "target must not carry a fragment")
    path, question, query = text.partition("?")
    if not _PATH_CHARS.fullmatch(path) or not _QUERY_CHARS.fullmatch(query):
        raise Refusal(400, "gateway:bad-target", "target has characters a path may not hold")
    lowered = path.lower()
    if any(code in lowered for code in _ENCODED_FORBIDDEN):
        raise Refusal(400, "gateway:bad-target", "encoded '.', '/', '\\', '%' or NUL in path")
    segments = unquote(path).split("/")[1:]
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            raise Refusal(400, "gateway:bad-target", "'.' and '..' segments are not allowed")
        if segment == "" and index != len(segments) - 1:
            raise Refusal(400, "gateway:bad-target", "empty path segments are not allowed")
    if not path.startswith("/v1/"):
        raise Refusal(404, "gateway:not-api", f"only /v1/ API paths are forwarded, not {path[:80]}")
    return path + question + query


def upstream_headers(
    headers: list[tuple[bytes, bytes]], credential: Credential, host_header: str
) -> list[tuple[bytes, bytes]]:
    """The request headers to send upstream: the bottle's credentials and hop-by-hop headers
    gone, Host from configuration, the real credential injected."""
    dropped = HOP_BY_HOP | CREDENTIAL_HEADERS | DROPPED_REQUEST | connection_tokens(headers)
    betas: list[bytes] = []
    kept: list[tuple[bytes, bytes]] = [(b"host", host_header.encode("ascii"))]
    for name, value in headers:
        if name in dropped:
            continue
        if name == b"anthropic-beta":
            betas += [b.strip() for b in value.split(b",") if b.strip()]
            continue
        kept.append((name, value))
    if any(name == b"transfer-encoding" for name, _ in headers):
        kept.append((b"transfer-encoding", b"chunked"))  # http1 accepts no other coding
    kept.append(credential.header())
    if credential.kind == "oauth" and OAUTH_BETA not in betas:
        betas.append(OAUTH_BETA)
    if betas:
        kept.append((b"anthropic-beta", b",".join(betas)))
    return kept


def downstream_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return forwarded_headers(headers, DROPPED_RESPONSE)
