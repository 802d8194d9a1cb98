"""The Anthropic API gateway: the bottle's `ANTHROPIC_BASE_URL`, holding the real credential.

One `AnthropicGateway` serves one client connection (HTTP/1.1 via `http1`, keep-alive), a
`connection.ClientConnection` like `ProxyConnection`. For every request it (steps 2 and 3
are `api_policy`'s):

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
import inspect
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from claude_bottle.bundle import http1
from claude_bottle.bundle.admission import record_refusal
from claude_bottle.bundle.api_policy import (
    BodyCheck,
    GatewayPolicy,
    Route,
    downstream_headers,
    error_body,
    upstream_headers,
)
from claude_bottle.bundle.body_budget import HeldBytes
from claude_bottle.bundle.connection import (
    CONNECT_TIMEOUT,
    MAX_HEADER_BYTES,
    READ_SIZE,
    ClientConnection,
    ConnectionEnded,
    KeptAlive,
    pull,
    response,
)
from claude_bottle.bundle.credentials import Credential
from claude_bottle.bundle.refusal import Refusal

if TYPE_CHECKING:  # the DLP engine is imported only when enabled
    from claude_bottle.bundle.scanning import DlpInspector
from claude_bottle.bundle.usage import MODEL_SCAN_BYTES, UsageMeter, model_of

DEFAULT_UPSTREAM = "https://api.anthropic.com"
UPSTREAM_TIMEOUT = 600.0  # longest silence from the API (non-streaming calls can think long)
MAX_PIPELINED = MAX_HEADER_BYTES  # bytes of a next request buffered while a response streams
DEFAULT_POLICY = GatewayPolicy()
UPSTREAM_REUSE_IDLE = 30.0  # reuse a keep-alive upstream connection idle at most this long

Recorder = Callable[..., Any]
CredentialSource = Callable[[], "Credential | Awaitable[Credential]"]


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


# --- the connection handler ------------------------------------------------------------


class _UpstreamGone(ConnectionEnded):
    """The API connection failed, closed or went silent; `status` is what the client gets."""

    def __init__(self, reason: str, status: int = 502) -> None:
        super().__init__(reason)
        self.status = status


class _ClientGone(ConnectionEnded):
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
    refused: bool = False  # the gateway refused its body: recorded as a refusal, not a call
    betas_dropped: list[str] = dataclasses.field(default_factory=list)
    failed: bool = False  # the gateway answered 502/503/504 itself
    rule: str = "anthropic"
    reason: str = ""


class AnthropicGateway(ClientConnection):
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
        policy: GatewayPolicy = DEFAULT_POLICY,
        inspector: DlpInspector | None = None,
        dlp_block: bool = False,
        held: HeldBytes | None = None,
    ) -> None:
        super().__init__(reader, writer)
        self.held = held  # the bundle's budget for held bytes (None: this connection's own)
        self.upstream = upstream
        self.credentials = credentials
        self.record = record
        self.budget = budget
        self.policy = policy
        self.inspector = inspector
        self.dlp_block = dlp_block
        self._up: _Upstream | None = None

    def release(self) -> None:
        self._drop_upstream()

    # --- client side -------------------------------------------------------------

    async def bad_request(self, exc: http1.ProtocolError) -> None:
        body = error_body(exc.status, "malformed HTTP request")
        with contextlib.suppress(Exception):
            await self._respond(exc.status, body, rule="gateway:bad-request", close=True)
        self.record("gateway", "deny", rule="gateway:bad-request")

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
        await self.send(response(status, headers, b"" if head_only else body))

    async def _drain_body(self, request: http1.RequestHead) -> bool:
        """Read and discard the request body (bounded); True if it ended."""
        if request.expects_continue:
            return False  # they wait to send it; answering is enough (we close)
        return await self.discard_body(CONNECT_TIMEOUT)

    async def _refuse(
        self, request: http1.RequestHead, exc: Refusal, *, drained: bool = False
    ) -> bool:
        ended = drained or await self._drain_body(request)
        record_refusal(
            self.record,
            "gateway",
            exc,
            decision="deny",
            method=request.method.decode("ascii", "replace"),
            host=self.upstream.host,
            port=self.upstream.port,
            path=request.target.decode("ascii", "replace"),
        )
        # After a CONNECT the client's bytes are a tunnel's, not HTTP: nothing follows it.
        close = not ended or request.method == b"CONNECT"
        await self._respond(
            exc.status,
            error_body(exc.status, exc.message, exc.hint),
            rule=exc.rule,
            head_only=request.method == b"HEAD",
            close=close,
        )
        return not close

    async def handle(self, request: http1.RequestHead) -> bool:
        """Answer one request; False when the connection must close."""
        return await self._handle(request) and request.keep_alive

    async def _handle(self, request: http1.RequestHead) -> bool:
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
            target, route = self.policy.admit(request.method, request.target)
            if self.budget is not None and self.budget.exhausted():
                raise Refusal(
                    429,
                    "gateway:token-budget",
                    f"this bottle used {self.budget.total} tokens, its budget is "
                    f"{self.budget.limit} ([gateway] max_tokens_total); raise it or start "
                    "a new bottle",
                )
        except Refusal as exc:
            return await self._refuse(request, exc)
        return await self._forward(request, target, route)

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

    def _body_check(self, request: http1.RequestHead, route: Route, target: str) -> BodyCheck:
        """Body admission: API features the bottle may not use, then DLP (an audit event,
        or a refusal with `[gateway] dlp = "block"`)."""
        encoding = _header(request.headers, b"content-encoding").strip().lower()
        if encoding not in (b"", b"identity"):
            raise Refusal(415, "gateway:encoded-body", "send the request body uncompressed")
        watch = None
        if self.inspector is not None:
            watch = self.inspector.watch(
                request.method.decode("ascii", "replace"),
                self.upstream.host,
                self.upstream.port,
                target,
                block=self.dlp_block,
            )
        return BodyCheck(self.policy, route, watch, self.held)

    async def _forward(self, request: http1.RequestHead, target: str, route: Route) -> bool:
        call = _Call(
            method=request.method.decode("ascii", "replace"),
            path=target,
            started=time.monotonic(),
        )
        meter: UsageMeter | None = None
        check = None
        try:
            if request.method == b"POST":
                check = self._body_check(request, route, target)
        except Refusal as exc:
            return await self._refuse(request, exc)
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
            headers, dropped = self.policy.filter_betas(request.headers)
            call.betas_dropped = dropped  # a newer Claude Code keeps working; audited
            headers = upstream_headers(headers, credential, self.upstream.host_header)
            up = await self._upstream_conn()
            head = http1.request_head(
                request.method, (self.upstream.prefix + target).encode("ascii"), headers
            )
            await up.send(head)
            if request.expects_continue:
                await self.send(http1.CONTINUE)
            await self._stream_request(up, call, request.chunked, check)
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
            await self.send(head)
            await self._relay_response(up, messages, call, meter, chunk_out)
        except _UpstreamGone as exc:
            call.aborted = True
            self._drop_upstream()
            if meter is not None:
                raise  # the response head is out: all we can do is cut it short
            await self._upstream_failed(request, call, str(exc), exc.status)
            return False
        except Refusal as exc:
            # The API holds a request whose body never ends: it never acts on it.
            call.refused = True
            self._drop_upstream()
            return await self._refuse(request, exc, drained=check is not None and check.ended)
        except BaseException:
            call.aborted = True
            self._drop_upstream()
            raise
        finally:
            if check is not None:
                check.release()
            self._account(call, meter)
        if messages.reusable:
            up.idle = True
            up.idle_since = time.monotonic()
        else:
            self._drop_upstream()
        return keep_client

    async def _stream_request(
        self, up: _Upstream, call: _Call, chunked: bool, check: BodyCheck | None
    ) -> None:
        scanned = bytearray()
        while True:
            event = await self.body_event()
            if isinstance(event, bytes):
                call.bytes_up += len(event)
                if len(scanned) < MODEL_SCAN_BYTES:
                    scanned += event[: MODEL_SCAN_BYTES - len(scanned)]
                data = event if check is None else check.feed(event)
                if data:
                    await up.send(http1.frame(data, chunked))
            elif event is http1.END:
                rest = b"" if check is None else check.finish()
                # a body framed by its length ends with its last byte
                await up.send(http1.frame(rest, chunked) + http1.end_of_body(chunked))
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
                    await self.send(http1.frame(event, chunk_out))
                elif event is http1.END:
                    if chunk_out:
                        await self.send(http1.LAST_CHUNK)
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
        if call.refused:
            return
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
        if call.betas_dropped:
            detail["betas_dropped"] = call.betas_dropped
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
