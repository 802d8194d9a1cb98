"""The Anthropic API gateway: the bottle's `ANTHROPIC_BASE_URL`, holding the real credential.

One `AnthropicGateway` serves one client connection (HTTP/1.1 via `http1`, keep-alive), the
same shape as `ProxyConnection`. For every request it:

1. answers Claude Code's connectivity probe (`HEAD /`, `GET /`) itself;
2. refuses any target that is not a plain origin-form path under `/v1/` — absolute-form,
   `//host`, `.`/`..` segments (raw or percent-encoded), encoded `/` or `\\`, NUL — and any
   method the API does not use (no TRACE: it would echo the injected key back);
3. strips every credential and hop-by-hop header the bottle sent and injects the real one
   (`x-api-key`, or `Authorization: Bearer` plus the `oauth-2025-04-20` beta);
4. sends it to the upstream named by configuration — host, port and scheme come only from
   `GatewayUpstream`, never from the request — streaming the body both ways as it arrives;
5. records one audit event per call with model, status, latency and token counts read from
   the response (JSON `usage`, or the SSE `message_start`/`message_delta` events), never the
   prompt or the key.

A client that goes away mid-response (EOF on its side) closes the upstream connection, so
the API stops generating. Half-closing the request side therefore aborts too (as nginx does).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http
import inspect
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from claude_bottle.bundle import http1
from claude_bottle.bundle.credentials import Credential
from claude_bottle.bundle.proxy import (
    CONNECT_TIMEOUT,
    HOP_BY_HOP,
    IDLE_TIMEOUT,
    MAX_HEADER_BYTES,
    READ_SIZE,
    KeptAlive,
    connection_tokens,
    discard_body,
    forwarded_headers,
    pull,
)

DEFAULT_UPSTREAM = "https://api.anthropic.com"
OAUTH_BETA = b"oauth-2025-04-20"
"""The `anthropic-beta` flag Claude Code sends with an OAuth (Claude.ai login) bearer token."""

UPSTREAM_TIMEOUT = 600.0  # longest silence from the API (non-streaming calls can think long)
MODEL_SCAN_BYTES = 64 * 1024  # how much of a request body is looked at for "model"
MAX_JSON_ACCOUNTING = 4 * 1024 * 1024  # JSON responses larger than this are not parsed
MAX_SSE_EVENT = 1024 * 1024  # an SSE event larger than this is skipped, not buffered
MAX_PIPELINED = MAX_HEADER_BYTES  # bytes of a next request buffered while a response streams
UPSTREAM_REUSE_IDLE = 30.0  # reuse a keep-alive upstream connection idle at most this long

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
_MODEL_NAME = re.compile(r"[A-Za-z0-9._:@/\[\]\-]{1,128}")
_MODEL_FALLBACK = re.compile(rb'(?<!\\)"model"\s*:\s*"([A-Za-z0-9._:@/\[\]\-]{1,128})"')

Recorder = Callable[..., Any]
CredentialSource = Callable[[], "Credential | Awaitable[Credential]"]


class Refused(Exception):
    """A request the gateway answers itself with an error."""

    def __init__(self, status: int, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.rule = rule
        self.reason = reason


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


# --- configuration ----------------------------------------------------------------


class GatewayUpstream:
    """Where API calls go: scheme, host and port from configuration only.

    `connect_to` (address, port) overrides where the TCP connection goes while the Host
    header and TLS name stay those of `base_url` (the `[egress.resolve]` mechanism);
    `ca_file` adds a CA bundle for TLS verification (tests, corporate proxies).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_UPSTREAM,
        *,
        ca_file: str | None = None,
        connect_to: tuple[str, int] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"gateway upstream must be an http(s):// URL, got {base_url!r}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("gateway upstream must not carry userinfo, query or fragment")
        self.base_url = base_url
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        self.ca_file = ca_file
        self.connect_to = connect_to
        name = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.tls else 80
        self.host_header = name if self.port == default_port else f"{name}:{self.port}"
        self._ssl: ssl.SSLContext | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if self._ssl is None:
            context = ssl.create_default_context()
            if self.ca_file:
                context.load_verify_locations(cafile=self.ca_file)
            self._ssl = context
        return self._ssl

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        address, port = self.connect_to or (self.host, self.port)
        context = self.ssl_context()
        return await asyncio.wait_for(
            asyncio.open_connection(
                address,
                port,
                ssl=context,
                server_hostname=self.host if context is not None else None,
                limit=READ_SIZE,
            ),
            CONNECT_TIMEOUT,
        )


@dataclasses.dataclass
class TokenBudget:
    """Tokens used by one bottle across all its connections; `limit` None = unlimited."""

    limit: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def exhausted(self) -> bool:
        return self.limit is not None and self.total >= self.limit

    def add(self, input_tokens: int | None, output_tokens: int | None) -> None:
        self.calls += 1
        self.input_tokens += input_tokens or 0
        self.output_tokens += output_tokens or 0


# --- pure helpers --------------------------------------------------------------------


def api_target(target: bytes) -> str:
    """The origin-form target to forward, or `Refused`: only clean paths under /v1/ pass.

    Percent-encoded `.`, `/`, `\\`, NUL and `%` are refused outright, so decoding cannot
    change how the path splits into segments; the raw (validated) target is forwarded.
    """
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise Refused(400, "gateway:bad-target", "request target is not ASCII") from None
    if not text.startswith("/"):
        raise Refused(
            400,
            "gateway:bad-target",
            "only origin-form targets (/v1/...) are accepted; this is not a proxy",
        )
    if text.startswith("//"):
        raise Refused(400, "gateway:bad-target", "target must not start with //")
    if "#" in text:
        raise Refused(400, "gateway:bad-target", "target must not carry a fragment")
    path, question, query = text.partition("?")
    if not _PATH_CHARS.fullmatch(path) or not _QUERY_CHARS.fullmatch(query):
        raise Refused(400, "gateway:bad-target", "target has characters a path may not hold")
    lowered = path.lower()
    if any(code in lowered for code in _ENCODED_FORBIDDEN):
        raise Refused(400, "gateway:bad-target", "encoded '.', '/', '\\', '%' or NUL in path")
    segments = unquote(path).split("/")[1:]
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            raise Refused(400, "gateway:bad-target", "'.' and '..' segments are not allowed")
        if segment == "" and index != len(segments) - 1:
            raise Refused(400, "gateway:bad-target", "empty path segments are not allowed")
    if not path.startswith("/v1/"):
        raise Refused(404, "gateway:not-api", f"only /v1/ API paths are forwarded, not {path[:80]}")
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


def _clean_model(value: object) -> str | None:
    if isinstance(value, str) and _MODEL_NAME.fullmatch(value):
        return value
    return None


def model_of(prefix: bytes, complete: bool) -> str | None:
    """The top-level "model" of a JSON request body from its first bytes, or None.

    `complete` says `prefix` is the whole body. Otherwise the top-level keys are walked in
    order until a value runs past the prefix, then a conservative pattern is tried.
    Only model-name characters are accepted, so no prompt text can come back from here.
    """
    if complete:
        try:
            data = json.loads(prefix)
        except (ValueError, UnicodeDecodeError):
            return None
        return _clean_model(data.get("model")) if isinstance(data, dict) else None
    text = prefix.decode("utf-8", "ignore")
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")

    def skip(i: int) -> int:
        match = ws.match(text, i)
        return match.end() if match else i

    i = skip(0)
    if text[i : i + 1] == "{":
        i += 1
        try:
            while True:
                i = skip(i)
                key, i = decoder.raw_decode(text, i)
                i = skip(i)
                if text[i : i + 1] != ":":
                    break
                value, i = decoder.raw_decode(text, skip(i + 1))
                if key == "model":
                    return _clean_model(value)
                i = skip(i)
                if text[i : i + 1] != ",":
                    break
                i += 1
        except (ValueError, IndexError):
            pass
    match = _MODEL_FALLBACK.search(prefix)
    return match.group(1).decode("ascii") if match else None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


class UsageMeter:
    """Reads token usage out of a response body as it streams by, in bounded memory."""

    def __init__(self, content_type: bytes, content_encoding: bytes) -> None:
        mime = content_type.split(b";")[0].strip().lower()
        encoded = content_encoding.strip().lower() not in (b"", b"identity")
        self.mode = (
            "none"
            if encoded
            else "sse"
            if mime == b"text/event-stream"
            else "json"
            if mime == b"application/json"
            else "none"
        )
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cache_read: int | None = None
        self.cache_creation: int | None = None
        self._buf = bytearray()
        self._skipping = False  # inside an oversized SSE event
        self._overflow = False  # JSON body too large

    def feed(self, data: bytes) -> None:
        if self.mode == "json":
            if not self._overflow:
                self._buf += data
                if len(self._buf) > MAX_JSON_ACCOUNTING:
                    self._overflow = True
                    self._buf.clear()
        elif self.mode == "sse":
            self._feed_sse(data)

    def finish(self) -> None:
        if self.mode == "json" and not self._overflow and self._buf:
            try:
                data = json.loads(bytes(self._buf))
            except (ValueError, UnicodeDecodeError):
                data = None
            if isinstance(data, dict):
                self._usage(data.get("usage"))
        elif self.mode == "sse" and self._buf and not self._skipping:
            self._event(bytes(self._buf))
        self._buf.clear()

    def _feed_sse(self, data: bytes) -> None:
        self._buf += data
        if b"\r" in self._buf:
            # normalise CRLF; a lone trailing CR waits for its LF
            tail = self._buf.endswith(b"\r")
            body = bytes(self._buf[:-1] if tail else self._buf).replace(b"\r\n", b"\n")
            self._buf = bytearray(body + (b"\r" if tail else b""))
        while True:
            cut = self._buf.find(b"\n\n")
            if cut < 0:
                break
            block = bytes(self._buf[:cut])
            del self._buf[: cut + 2]
            if self._skipping:
                self._skipping = False
            else:
                self._event(block)
        if len(self._buf) > MAX_SSE_EVENT:
            self._skipping = True
            self._buf.clear()

    def _event(self, block: bytes) -> None:
        name = b""
        data_lines: list[bytes] = []
        for line in block.split(b"\n"):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"event":
                name = value.strip()
            elif field == b"data":
                data_lines.append(value)
        data = b"\n".join(data_lines)
        wanted = name in (b"message_start", b"message_delta") or (not name and b'"message_' in data)
        if not wanted or not data:
            return
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._usage(message.get("usage"))
        elif event.get("type") == "message_delta":
            self._usage(event.get("usage"))

    def _usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        for key, attr in (
            ("input_tokens", "input_tokens"),
            ("output_tokens", "output_tokens"),
            ("cache_read_input_tokens", "cache_read"),
            ("cache_creation_input_tokens", "cache_creation"),
        ):
            value = _int_or_none(usage.get(key))
            if value is not None:
                setattr(self, attr, value)  # later events carry cumulative totals


# --- the connection handler ------------------------------------------------------------


class _UpstreamGone(Exception):
    """The API connection failed, closed or went silent; `status` is what the client gets."""

    def __init__(self, reason: str, status: int = 502) -> None:
        super().__init__(reason)
        self.status = status


class _ClientGone(Exception):
    pass


class _Upstream(KeptAlive):
    """One keep-alive connection to the API; every failure surfaces as `_UpstreamGone`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.idle_since = time.monotonic()

    def reusable(self) -> bool:
        return self.alive() and time.monotonic() - self.idle_since < UPSTREAM_REUSE_IDLE

    async def next_event(self, messages: http1.ResponseReader) -> http1.Event:
        try:
            return await pull(messages, self.reader, UPSTREAM_TIMEOUT)
        except TimeoutError:
            raise _UpstreamGone(f"the API sent nothing for {UPSTREAM_TIMEOUT:.0f} s", 504) from None
        except (OSError, http1.ProtocolError) as exc:
            raise _UpstreamGone(f"the API connection failed ({type(exc).__name__})") from None

    async def send(self, data: bytes) -> None:
        try:
            await super().send(data)
        except OSError as exc:
            raise _UpstreamGone(f"the API connection failed ({type(exc).__name__})") from None


@dataclasses.dataclass
class _Call:
    method: str
    path: str
    started: float
    model: str | None = None
    status: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    aborted: bool = False  # the exchange did not complete
    failed: bool = False  # the gateway answered 502/503/504 itself
    rule: str = "anthropic"
    reason: str = ""


class AnthropicGateway:
    """Serves one client connection from the bottle until it closes."""

    def __init__(
        self,
        upstream: GatewayUpstream,
        credentials: CredentialSource,
        record: Recorder,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        budget: TokenBudget | None = None,
    ) -> None:
        self.upstream = upstream
        self.credentials = credentials
        self.record = record
        self.reader = reader
        self.writer = writer
        self.budget = budget
        self.requests = http1.RequestReader(MAX_HEADER_BYTES)
        self._up: _Upstream | None = None

    async def serve(self) -> None:
        try:
            while True:
                request = await self._next_request()
                if request is None:
                    return
                if not await self._handle(request) or not request.keep_alive:
                    return
        except (
            ConnectionError,
            TimeoutError,
            OSError,
            http1.ProtocolError,
            asyncio.IncompleteReadError,
            _ClientGone,
            _UpstreamGone,
        ):
            pass
        finally:
            self._drop_upstream()
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    # --- client side -------------------------------------------------------------

    async def _client_event(self, timeout: float) -> http1.Event:
        return await pull(self.requests, self.reader, timeout)

    async def _next_request(self) -> http1.RequestHead | None:
        try:
            event = await self._client_event(IDLE_TIMEOUT)
        except http1.ProtocolError as exc:
            body = error_body(exc.status, "malformed HTTP request")
            with contextlib.suppress(Exception):
                await self._respond(exc.status, body, rule="gateway:bad-request", close=True)
            self.record("gateway", "deny", rule="gateway:bad-request")
            return None
        return event if isinstance(event, http1.RequestHead) else None  # None: it closed

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _respond(
        self,
        status: int,
        body: bytes,
        *,
        rule: str | None = None,
        content_type: bytes = b"application/json",
        head_only: bool = False,
        close: bool = False,
    ) -> None:
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        if rule is not None:
            headers.append((b"x-claude-bottle-block", rule.encode("ascii", "replace")))
            headers.append((b"x-should-retry", b"false"))
        if close:
            headers.append((b"connection", b"close"))
        phrase = http.HTTPStatus(status).phrase.encode()
        head = http1.response_head(status, phrase, headers)
        await self._send(head if head_only else head + body)

    async def _drain_body(self, request: http1.RequestHead) -> bool:
        """Read and discard the request body (bounded); True if it ended."""
        if request.expects_continue:
            return False  # they wait to send it; answering is enough (we close)
        return await discard_body(self.requests, self.reader, CONNECT_TIMEOUT)

    async def _refuse(self, request: http1.RequestHead, exc: Refused) -> bool:
        method = request.method.decode("ascii", "replace")
        ended = await self._drain_body(request)
        self.record(
            "gateway",
            "deny",
            rule=exc.rule,
            method=method,
            host=self.upstream.host,
            port=self.upstream.port,
            path=request.target.decode("ascii", "replace"),
            detail={"status": exc.status, "reason": exc.reason},
        )
        # After a CONNECT the client's bytes are a tunnel's, not HTTP: nothing follows it.
        close = not ended or request.method == b"CONNECT"
        await self._respond(
            exc.status,
            error_body(exc.status, exc.reason),
            rule=exc.rule,
            head_only=request.method == b"HEAD",
            close=close,
        )
        return not close

    async def _handle(self, request: http1.RequestHead) -> bool:
        """Answer one request; False when the connection must close."""
        path_only = request.target.split(b"?", 1)[0]
        if request.method in (b"HEAD", b"GET") and path_only == b"/":
            ended = await self._drain_body(request)
            await self._respond(
                200,
                b"claude-bottle api gateway\n",
                content_type=b"text/plain; charset=utf-8",
                head_only=request.method == b"HEAD",
                close=not ended,
            )
            return ended
        try:
            target = api_target(request.target)
            if request.method not in ALLOWED_METHODS:
                raise Refused(405, "gateway:method", "method not used by the API")
            if self.budget is not None and self.budget.exhausted():
                raise Refused(
                    429,
                    "gateway:token-budget",
                    f"this bottle used {self.budget.total} tokens, its budget is "
                    f"{self.budget.limit} ([gateway] max_tokens_total); raise it or start "
                    "a new bottle",
                )
        except Refused as exc:
            return await self._refuse(request, exc)
        return await self._forward(request, target)

    # --- forwarding ----------------------------------------------------------------

    async def _credential(self) -> Credential:
        result = self.credentials()
        if inspect.isawaitable(result):
            return await result
        return result

    def _drop_upstream(self) -> None:
        if self._up is not None:
            self._up.close()
            self._up = None

    async def _upstream_conn(self) -> _Upstream:
        if self._up is not None:
            if self._up.reusable():
                return self._up
            self._drop_upstream()
        try:
            reader, writer = await self.upstream.open()
        except TimeoutError:
            raise _UpstreamGone(f"{self.upstream.host_header} did not answer", 504) from None
        except OSError as exc:
            raise _UpstreamGone(
                f"cannot connect to {self.upstream.host_header} ({exc.strerror or exc})"
            ) from None
        self._up = _Upstream(reader, writer)
        return self._up

    async def _forward(self, request: http1.RequestHead, target: str) -> bool:
        call = _Call(
            method=request.method.decode("ascii", "replace"),
            path=target,
            started=time.monotonic(),
        )
        meter: UsageMeter | None = None
        try:
            try:
                credential = await self._credential()
            except Exception as exc:
                # The provider's message names where it looked, never the value.
                reason = getattr(exc, "message", None) or type(exc).__name__
                await self._upstream_failed(
                    request, call, f"no usable credential: {reason}", 503, "gateway:credential"
                )
                return False
            headers = upstream_headers(request.headers, credential, self.upstream.host_header)
            up = await self._upstream_conn()
            await up.send(
                http1.request_head(
                    request.method, (self.upstream.prefix + target).encode("ascii"), headers
                )
            )
            if request.expects_continue:
                await self._send(http1.CONTINUE)
            await self._stream_request(up, call, request.chunked)
            messages = http1.ResponseReader(request.method, MAX_HEADER_BYTES)
            response = await up.next_event(messages)
            if not isinstance(response, http1.ResponseHead):
                raise _UpstreamGone("the API closed the connection without answering")
            call.status = response.status
            meter = UsageMeter(
                _header(response.headers, b"content-type"),
                _header(response.headers, b"content-encoding"),
            )
            head, chunk_out, keep_client = http1.relay_head(
                request, response, downstream_headers(response.headers)
            )
            await self._send(head)
            await self._relay_response(up, messages, call, meter, chunk_out)
        except _UpstreamGone as exc:
            call.aborted = True
            self._drop_upstream()
            if meter is not None:
                raise  # the response head is out: all we can do is cut it short
            await self._upstream_failed(request, call, str(exc), exc.status)
            return False
        except BaseException:
            call.aborted = True
            self._drop_upstream()
            raise
        finally:
            self._account(call, meter)
        if messages.reusable:
            up.idle = True
            up.idle_since = time.monotonic()
        else:
            self._drop_upstream()
        return keep_client

    async def _stream_request(self, up: _Upstream, call: _Call, chunked: bool) -> None:
        scanned = bytearray()
        while True:
            event = await self._client_event(IDLE_TIMEOUT)
            if isinstance(event, bytes):
                call.bytes_up += len(event)
                if len(scanned) < MODEL_SCAN_BYTES:
                    scanned += event[: MODEL_SCAN_BYTES - len(scanned)]
                await up.send(http1.frame(event, chunked))
            elif event is http1.END:
                if chunked:  # a body framed by its length ends with its last byte
                    await up.send(http1.LAST_CHUNK)
                break
            else:
                raise _ClientGone("client went away mid-request")
        if scanned:
            call.model = model_of(bytes(scanned), complete=call.bytes_up == len(scanned))

    async def _relay_response(
        self,
        up: _Upstream,
        messages: http1.ResponseReader,
        call: _Call,
        meter: UsageMeter,
        chunk_out: bool,
    ) -> None:
        """Copy the response body to the client as it arrives; abort if the client leaves."""

        async def relay() -> None:
            while True:
                event = await up.next_event(messages)
                if isinstance(event, bytes):
                    call.bytes_down += len(event)
                    meter.feed(event)
                    await self._send(http1.frame(event, chunk_out))
                elif event is http1.END:
                    if chunk_out:
                        await self._send(http1.LAST_CHUNK)
                    return
                else:
                    raise ConnectionError("the API went away mid-response")

        relay_task = asyncio.ensure_future(relay())
        watch_task = asyncio.ensure_future(self._watch_client())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {relay_task, watch_task}, return_when=asyncio.FIRST_COMPLETED
                )
                if relay_task in done:
                    relay_task.result()
                    return
                if watch_task.result():  # EOF from the client: it is gone
                    raise _ClientGone("client closed the connection mid-response")
                await relay_task  # pipelining limit reached; just finish
                return
        finally:
            for task in (relay_task, watch_task):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def _watch_client(self) -> bool:
        """Wait for the client to close; True on EOF, False once enough pipelined bytes
        are buffered (they wait in the request reader for the next request)."""
        received = 0
        while received < MAX_PIPELINED:
            data = await self.reader.read(READ_SIZE)
            if not data:
                return True
            received += len(data)
            self.requests.receive(data)
        return False

    async def _upstream_failed(
        self,
        request: http1.RequestHead,
        call: _Call,
        reason: str,
        status: int,
        rule: str = "gateway:upstream",
    ) -> None:
        call.status = status
        call.failed = True
        call.rule = rule
        call.reason = reason
        with contextlib.suppress(OSError):
            await self._respond(
                status,
                error_body(status, reason),
                rule=rule,
                head_only=request.method == b"HEAD",
                close=True,
            )

    def _account(self, call: _Call, meter: UsageMeter | None) -> None:
        if meter is not None:
            meter.finish()
        input_tokens = meter.input_tokens if meter else None
        output_tokens = meter.output_tokens if meter else None
        if self.budget is not None:
            self.budget.add(input_tokens, output_tokens)
        detail: dict[str, object] = {
            "status": call.status,
            "model": call.model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "ms": round((time.monotonic() - call.started) * 1000),
        }
        if meter is not None and meter.cache_read is not None:
            detail["cache_read_input_tokens"] = meter.cache_read
        if meter is not None and meter.cache_creation is not None:
            detail["cache_creation_input_tokens"] = meter.cache_creation
        if call.aborted:
            detail["aborted"] = True
        if call.reason:
            detail["reason"] = call.reason
        ok = call.status != 0 and not call.failed
        self.record(
            "gateway",
            "allow" if ok else "error",
            rule=call.rule if ok or call.failed else "gateway:upstream",
            method=call.method,
            host=self.upstream.host,
            port=self.upstream.port,
            path=call.path,
            bytes_up=call.bytes_up,
            bytes_down=call.bytes_down,
            detail=detail,
        )


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""
