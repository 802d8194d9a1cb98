"""What the API gateway forwards: request-head admission and header rewriting, no I/O.

Only clean origin-form paths under `/v1/` pass, with the methods the API uses; every
credential and hop-by-hop header the bottle sent is dropped and the real credential
injected. A request that may not pass raises `Refusal`; `error_body` words the answer in
the Messages API's own error shape, so a client shows it as is.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from claude_bottle.bundle.body_budget import HeldBytes, Hold
from claude_bottle.bundle.connection import HOP_BY_HOP, connection_tokens, forwarded_headers
from claude_bottle.bundle.credentials import Credential
from claude_bottle.bundle.refusal import Refusal

if TYPE_CHECKING:  # the DLP engine is imported only when enabled
    from claude_bottle.bundle.scanning import BodyWatch

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
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
}


def error_body(status: int, reason: str, hint: str = "") -> bytes:
    """A one-line error in the Messages API's own shape, so clients show `reason` as is."""
    if hint:
        reason += f" (to allow it: {hint})"
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


# --- what Claude Code uses: the one list ---------------------------------------------
#
# The gateway forwards these and nothing else. Recorded from Claude Code 2.1.197 and 2.1.332
# (the host's and the docker agent image's; sessions
# against tests/fakes/fake_anthropic.py; tests/integration/test_claude_code.py checks that
# a real session stays covered) and read from its client. Anything an agent could add
# besides — the Agents, Sessions, Skills, Vaults, Batches APIs, an MCP connector that makes
# Anthropic's servers call a URL of the agent's choosing — has no use in a bottle.

FEATURES = ("mcp_servers", "web_fetch", "web_search", "files")
"""`[gateway]` switches for API features that carry data out through Anthropic's servers."""
DEFAULT_FEATURES = frozenset({"web_search"})  # Claude Code's WebSearch tool uses it


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    method: bytes
    path: str  # "*" stands for exactly one path segment
    json_body: bool = False  # a JSON request body the gateway reads and checks first
    feature: str = ""  # the [gateway] switch that must be on, "" when always forwarded


CLAUDE_CODE_ROUTES = (
    Route(b"POST", "/v1/messages", json_body=True),
    Route(b"POST", "/v1/messages/count_tokens", json_body=True),
    Route(b"GET", "/v1/models"),
    Route(b"GET", "/v1/models/*"),
    Route(b"GET", "/v1/files"),  # files Claude Code downloads (`--file file_id:path`)
    Route(b"GET", "/v1/files/*"),
    Route(b"GET", "/v1/files/*/content"),
    Route(b"POST", "/v1/files", feature="files"),  # an upload: the workspace could leave
)

CLAUDE_CODE_BETAS = frozenset(
    {
        b"claude-code-20250219",
        b"oauth-2025-04-20",
        b"interleaved-thinking-2025-05-14",
        b"fine-grained-tool-streaming-2025-05-14",
        b"token-efficient-tools-2025-02-19",
        b"context-1m-2025-08-07",
        b"context-management-2025-06-27",
        b"prompt-caching-scope-2026-01-05",
        b"extended-cache-ttl-2025-04-11",
        b"effort-2025-11-24",
        b"thinking-token-count-2026-05-13",
        b"mid-conversation-system-2026-04-07",
        b"mid-conversation-tool-changes-2026-07-01",
        b"mid-conversation-system-clear-at-2026-08-21",
        b"per-turn-control-2026-07-01",
        b"thinking-resumption-2026-07-17",
        b"thinking-binding-controls-2026-08-01",
        b"thinking-display-updates-2026-08-18",
        b"prompt-caching-evict-2026-05-12",
        b"cache-keepalive-2026-09-03",
        b"request-tags-2026-08-21",
        b"timing-2026-09-09",
        b"inline-tools-2026-09-15",
        b"program-use-case-ids-2026-09-17",
        b"claude-code-side-query-2026-09-29",
        b"resumption-2026-10-08",
        b"tool-provenance-2026-10-26",
        b"auto-mode-classifier-2026-07-16",
        b"server-side-fallback-2026-06-01",
        b"server-side-fallback-2026-07-01",
        b"web-search-results-only-2026-11-15",
        b"structured-outputs-2025-11-13",
        b"structured-outputs-2025-12-15",
        b"tool-search-tool-2025-10-19",
        b"advanced-tool-use-2025-11-20",
        b"redact-thinking-2026-02-12",
        b"fast-mode-2026-02-01",
        b"task-budgets-2026-03-13",
        b"compact-2026-01-12",
        b"context-hint-2026-04-09",
        b"cache-diagnosis-2026-04-07",
        b"afk-mode-2026-01-31",
        b"token-counting-2024-11-01",
        b"files-api-2025-04-14",
        b"web-search-2025-03-05",
    }
)
FEATURE_BETAS = {
    "mcp_servers": frozenset({b"mcp-client-2025-04-04", b"mcp-client-2025-11-20"}),
    "web_fetch": frozenset({b"web-fetch-2025-09-10"}),
}
MAX_DROPPED_SHOWN = 8  # beta values named in one audit record
_BETA_SHOWN = re.compile(rb"[a-z0-9][a-z0-9.-]{0,63}")
MAX_JSON_BODY = 32 * 1024 * 1024  # the Messages API's own request limit
MAX_JSON_VALUES = 1_000_000
"""Values (counted as separators and containers outside strings) a JSON body may have to
be parsed: 32 MiB of `[],` parses to ~11 million lists, 770 MiB. A long session's request
has a few tens of thousands."""
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _segments_match(pattern: str, path: str) -> bool:
    wanted, got = pattern.split("/"), path.split("/")
    return len(wanted) == len(got) and all(
        w == g or (w == "*" and g != "") for w, g in zip(wanted, got, strict=True)
    )


def _duplicate_keys_refused(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object with a key twice is ambiguous (parsers keep the first or the last):
    refused, so what we check is what the API reads."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise Refusal(400, "gateway:bad-body", "a JSON object in the body repeats a key")
    return obj


class GatewayPolicy:
    """Which API calls the gateway forwards, with which betas and bodies; no I/O."""

    def __init__(self, features: frozenset[str] = DEFAULT_FEATURES) -> None:
        self.features = features
        betas = set(CLAUDE_CODE_BETAS)
        for feature, extra in FEATURE_BETAS.items():
            if feature in features:
                betas |= extra
        self.betas = frozenset(betas)

    def admit(self, method: bytes, raw_target: bytes) -> tuple[str, Route]:
        """Request-head admission: a clean API target, a method the API uses, and a route
        Claude Code uses with its feature on; the target to forward and its route."""
        target = api_target(raw_target)
        if method not in ALLOWED_METHODS:
            raise Refusal(405, "gateway:method", "method not used by the API")
        return target, self.route(method, target)

    def route_of(self, method: bytes, target: str) -> Route | None:
        """The listed route a request matches, whether or not its feature is on."""
        path = target.split("?", 1)[0]
        for route in CLAUDE_CODE_ROUTES:
            if route.method == method and _segments_match(route.path, path):
                return route
        return None

    def route(self, method: bytes, target: str) -> Route:
        """The route to forward `target` on, or `Refusal`: 404 for a path Claude Code does
        not use, 405 for a method it does not use there, 403 for a feature turned off."""
        route = self.route_of(method, target)
        if route is None:
            path = target.split("?", 1)[0]
            if any(_segments_match(r.path, path) for r in CLAUDE_CODE_ROUTES):
                raise Refusal(405, "gateway:method", "method not used by Claude Code here")
            raise Refusal(404, "gateway:path", f"{path[:80]} is not an API path Claude Code uses")
        if route.feature and route.feature not in self.features:
            raise _feature_off(route.feature, f"{method.decode()} {route.path}")
        return route

    def filter_betas(
        self, headers: list[tuple[bytes, bytes]]
    ) -> tuple[list[tuple[bytes, bytes]], list[str]]:
        """`headers` with only the known `anthropic-beta` values, and the dropped ones (as
        far as they can be shown: bounded, and only beta-name characters)."""
        if not any(name == b"anthropic-beta" for name, _ in headers):
            return headers, []
        kept: list[tuple[bytes, bytes]] = []
        dropped: list[str] = []
        for name, value in headers:
            if name != b"anthropic-beta":
                kept.append((name, value))
                continue
            known = []
            for beta in (b.strip() for b in value.split(b",")):
                if beta in self.betas:
                    known.append(beta)
                elif beta:
                    shown = beta if _BETA_SHOWN.fullmatch(beta) else b"(unprintable)"
                    if len(dropped) < MAX_DROPPED_SHOWN:
                        dropped.append(shown.decode("ascii"))
            if known:
                kept.append((name, b",".join(known)))
        return kept, dropped

    def check_body(self, body: bytes | bytearray) -> None:
        """Refuse a JSON request body that names an API feature turned off."""
        structure = _JSON_STRING.sub(b"", body)  # what parsing makes objects of
        if sum(structure.count(mark) for mark in (b",", b"[", b"{")) > MAX_JSON_VALUES:
            raise Refusal(
                413, "gateway:body-too-complex", "the request body has too many JSON values"
            )
        del structure
        try:
            data = json.loads(body, object_pairs_hook=_duplicate_keys_refused)
        except (ValueError, RecursionError):
            raise Refusal(400, "gateway:bad-body", "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise Refusal(400, "gateway:bad-body", "the request body is not a JSON object")
        if data.get("mcp_servers") and "mcp_servers" not in self.features:
            raise _feature_off("mcp_servers", "MCP servers called by the API (mcp_servers)")
        tools = data.get("tools")
        for tool in tools if isinstance(tools, list) else ():
            kind = tool.get("type") if isinstance(tool, dict) else None
            if not isinstance(kind, str):
                continue
            if kind.startswith("mcp_toolset") and "mcp_servers" not in self.features:
                raise _feature_off("mcp_servers", f"the {kind[:40]} tool")
            if kind.startswith("web_fetch") and "web_fetch" not in self.features:
                raise _feature_off("web_fetch", f"the {kind[:40]} server tool")
            if kind.startswith("web_search") and "web_search" not in self.features:
                raise _feature_off("web_search", f"the {kind[:40]} server tool")


class BodyCheck:
    """Body admission for one request: releases the bytes that may go upstream so far.

    The last bytes are held until the whole body has passed: the API acts on nothing
    before its body is complete, so a JSON body naming a feature that is off, or (with
    `[gateway] dlp = "block"`) a secret, is refused before the API could act on it. The
    JSON body is kept (bounded by MAX_JSON_BODY) to be parsed once it has ended.
    """

    def __init__(
        self,
        policy: GatewayPolicy,
        route: Route,
        watch: BodyWatch | None,
        held: HeldBytes | None = None,
    ) -> None:
        self.policy = policy
        self.watch = watch
        self.body: bytearray | None = bytearray() if route.json_body else None
        # The kept JSON body counts toward the bundle's budget for held bytes.
        self.hold = Hold(
            HeldBytes() if held is None else held,
            MAX_JSON_BODY,
            "gateway:body-too-large",
            "the request body is over the API's limit",
        )
        self.window = watch.overlap if watch is not None else 1
        self.held = b""
        self.ended = False

    def feed(self, chunk: bytes) -> bytes:
        if self.body is not None:
            self.hold.add(len(chunk))
            self.body += chunk
        if self.watch is not None:
            self.watch.feed(chunk)
        self.held += chunk
        cut = max(0, len(self.held) - self.window)
        ready, self.held = self.held[:cut], self.held[cut:]
        return ready

    def finish(self) -> bytes:
        self.ended = True
        if self.body is not None:
            self.policy.check_body(self.body)  # parsed in place: no second copy
        if self.watch is not None:
            self.watch.finish()
        ready, self.held = self.held, b""
        self.release()
        return ready

    def release(self) -> None:
        """Let go of the kept body, however the request ended (idempotent)."""
        self.body = None
        self.hold.release()


def _feature_off(feature: str, what: str) -> Refusal:
    rule = "gateway:" + feature.replace("_", "-")
    return Refusal(
        403,
        rule,
        f"{what} would carry data out through Anthropic's servers; turned off for this bottle",
        hint=f"[gateway] {feature} = true",
    )
