"""HTTP/1.1 forward proxy: absolute-form requests with keep-alive, and CONNECT tunnels.

Layers, one concern each: `http1` parses and frames HTTP (llhttp; we never
hand-parse it); `EgressGate` decides where a request may go; this module moves
bytes and records one audit event per decision. Everything arriving here comes
from the bottle and is treated as hostile: header sizes are bounded by `http1`,
every read has a timeout, and a parse error closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from claude_bottle.bundle import http1
from claude_bottle.bundle.control import Stats
from claude_bottle.bundle.gate import Blocked, Destination, EgressGate, parse_authority
from claude_bottle.bundle.pool import PoolKey, UpstreamPool
from claude_bottle.bundle.tunnel import reading_transport, relay

if TYPE_CHECKING:  # cryptography and the DLP engine are imported only when enabled
    from claude_bottle.bundle.scanning import DlpInspector
    from claude_bottle.bundle.tls import Interception

MAX_HEADER_BYTES = 64 * 1024
READ_SIZE = 256 * 1024  # bytes asked of a socket per read
HEADER_TIMEOUT = 30.0  # a request's head must arrive within this
IDLE_TIMEOUT = 120.0  # keep-alive / tunnel inactivity
CONNECT_TIMEOUT = 10.0
MAX_DRAIN = 1024 * 1024  # body of a refused request read and discarded before answering
TLS_PORT = 443  # CONNECTs to it are TLS-intercepted; other ports must carry plain HTTP
# Sent again, on a new connection, when a reused one turns out to have been closed by the
# server before it answered (the usual keep-alive race): safe, and only without a body.
REPLAYABLE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"expect",
    }
)

Recorder = Callable[..., Any]


ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class ProxyError(Exception):
    def __init__(self, status: int, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.rule = rule
        self.reason = reason


def block_body(bottle: str, host: str, rule: str, reason: str) -> bytes:
    """The one-line body of a refusal: what, why, and the command that would allow it."""
    line = f"claude-bottle: blocked {host}: {reason} (rule {rule})."
    if rule == "deny:not-allowlisted":
        line += f" To allow it: claude-bottle allow {bottle} {host}"
    return (line.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8", "replace")


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """The header names the Connection header makes hop-by-hop for this message."""
    return {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }


def forwarded_headers(
    headers: list[tuple[bytes, bytes]], dropped: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers and `dropped`; keep chunked framing, which we re-apply on
    the next hop."""
    gone = HOP_BY_HOP | dropped | connection_tokens(headers)
    kept = [(name, value) for name, value in headers if name not in gone]
    if any(name == b"transfer-encoding" for name, _ in headers):
        kept.append((b"transfer-encoding", b"chunked"))  # http1 accepts no other coding
    return kept


async def pull(
    messages: http1.RequestReader | http1.ResponseReader,
    reader: asyncio.StreamReader,
    timeout: float,
) -> http1.Event:
    """The next event of `messages`, reading as needed; each read must arrive in `timeout`."""
    while True:
        event = messages.next_event()
        if event is not http1.NEED_DATA:
            return event
        async with asyncio.timeout(timeout):  # a timer, not a task per read as wait_for costs
            data = await reader.read(READ_SIZE)
        messages.receive(data)


async def discard_body(
    messages: http1.RequestReader, reader: asyncio.StreamReader, timeout: float
) -> bool:
    """Read and discard the rest of the current request, at most about MAX_DRAIN bytes, so
    the client sees the answer to it; True if it ended."""
    budget = MAX_DRAIN
    while budget > 0:
        event = await pull(messages, reader, timeout)
        if not isinstance(event, bytes):
            return event is http1.END
        budget -= len(event)
    return False


class _StaleUpstream(Exception):
    """A reused upstream connection was closed before it answered a replayable request."""


def _pool_key(dest: Destination) -> PoolKey:
    return (dest.address, dest.connect_port, dest.tls, dest.host)


class KeptAlive:
    """A keep-alive connection to a server, which the proxy and the gateway reuse."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle = True  # between exchanges, with nothing owed either way

    def alive(self) -> bool:
        """Idle and not closed by either side as far as we know: a next request may go."""
        return self.idle and not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.idle = False
        self.writer.close()

    async def send(self, data: bytes) -> None:
        """Write `data`; the connection is mid-exchange until its response has ended."""
        self.idle = False
        if data:
            self.writer.write(data)
            await self.writer.drain()


class Upstream(KeptAlive):
    """One keep-alive connection to an origin server, reused while the destination is the
    same, and parked in the bundle's pool when its client goes."""

    def __init__(
        self, dest: Destination, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(reader, writer)
        self.dest = dest
        self.key = _pool_key(dest)
        self.reused = False  # it has carried a whole exchange before


class ProxyConnection:
    """Serves one client connection from the bottle until it closes."""

    def __init__(
        self,
        gate: EgressGate,
        record: Recorder,
        bottle: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stats: Stats,
        interception: Interception | None = None,
        inspector: DlpInspector | None = None,
        pool: UpstreamPool | None = None,
    ) -> None:
        self.pool = pool
        self.inspector = inspector
        self.interception = interception
        self.intercepted: Destination | None = None  # set once a CONNECT is intercepted
        self.gate = gate
        self.record = record
        self.bottle = bottle
        self.reader = reader
        self.writer = writer
        self.stats = stats
        self.requests = http1.RequestReader(MAX_HEADER_BYTES)
        self.upstream: Upstream | None = None

    async def serve(self) -> None:
        self.stats.connections += 1
        try:
            while True:
                request = await self._next_request()
                if request is None:
                    return
                self.stats.requests += 1
                if request.method == b"CONNECT":
                    if self.intercepted is not None or not await self._tunnel(request):
                        return
                    continue  # now serving requests inside the intercepted TLS session
                if not await self._forward(request) or not request.keep_alive:
                    return
        except (
            ConnectionError,
            TimeoutError,
            OSError,
            http1.ProtocolError,
            asyncio.IncompleteReadError,
        ):
            pass
        finally:
            if self.upstream is not None:
                self._release(self.upstream)
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _client_event(self, timeout: float) -> http1.Event:
        return await pull(self.requests, self.reader, timeout)

    async def _next_request(self) -> http1.RequestHead | None:
        try:
            event = await self._client_event(IDLE_TIMEOUT)
        except http1.ProtocolError as exc:
            await self._refuse_raw(exc.status, "error:bad-request", str(exc))
            return None
        if isinstance(event, http1.RequestHead):
            return event
        return None  # the client closed

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _write(self, out: bytearray) -> None:
        """Write and empty `out` (bytes framed for the client)."""
        if out:
            self.writer.write(bytes(out))
            out.clear()
            await self.writer.drain()

    async def _respond(self, status: int, rule: str, body: bytes, close: bool = False) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"x-claude-bottle-block", rule.encode("ascii", "replace")),
        ]
        if close:
            headers.append((b"connection", b"close"))
        phrase = http.HTTPStatus(status).phrase.encode()
        await self._send(http1.response_head(status, phrase, headers) + body)

    async def _refuse_raw(self, status: int, rule: str, reason: str) -> None:
        """Answer a request that could not be parsed, then close."""
        body = block_body(self.bottle, "-", rule, reason[:200])
        with contextlib.suppress(Exception):
            await self._respond(status, rule, body, close=True)
        self.record("egress", "deny", rule=rule)

    async def _deny(self, method: str, host: str, port: int, path: str, exc: Blocked) -> None:
        self.stats.blocked += 1
        decision = "deny" if exc.status == 403 else "error"
        self.record(
            "egress",
            decision,
            rule=exc.rule,
            method=method,
            host=host,
            port=port,
            path=path,
            detail={"status": exc.status, "reason": exc.reason},
        )
        body = block_body(self.bottle, host, exc.rule, exc.reason)
        await self._respond(exc.status, exc.rule, body, close=True)

    # --- CONNECT -------------------------------------------------------------

    async def _tunnel(self, request: http1.RequestHead) -> bool:
        """Open a tunnel; True when it was intercepted and requests follow inside TLS."""
        authority = request.target.decode("ascii", "replace")
        started = time.monotonic()
        try:
            host, port = parse_authority(authority, 443)
            if self.inspector is not None:
                self.inspector.check_host("CONNECT", host[:253], port)
            dest = await self.gate.check(host, port)
            if self.interception is not None and self.interception.applies_to(dest.host):
                return await self._intercept(dest)
            up_reader, up_writer = await self._open(dest)
        except Blocked as exc:
            await self._deny("CONNECT", authority[:253], 0, "", exc)
            return False
        self.stats.tunnels += 1
        await self._send(ESTABLISHED)
        leftover = self._connect_trailing()
        try:
            up, down = await relay(
                (self.reader, self.writer), (up_reader, up_writer), IDLE_TIMEOUT, leftover
            )
        finally:
            up_writer.close()
        self.record(
            "egress",
            "audit-allow" if dest.audited_only else "allow",
            rule=dest.rule,
            method="CONNECT",
            host=dest.host,
            port=dest.port,
            bytes_up=up,
            bytes_down=down,
            detail={"ms": round((time.monotonic() - started) * 1000)},
        )
        return False

    async def _intercept(self, dest: Destination) -> bool:
        """Answer the CONNECT, then serve the requests inside it ourselves.

        On port 443 we are the TLS server for `dest`, with a leaf our CA signed; on any
        other port the tunnel must carry plain HTTP. Either way the destination stays the
        one checked at CONNECT time, and every request inside is seen (and scanned).
        """
        assert self.interception is not None
        self.stats.tunnels += 1
        leftover = self._connect_trailing()
        if dest.port != TLS_PORT:
            await self._send(ESTABLISHED)
            self.intercepted = dest
            self.requests = http1.RequestReader(MAX_HEADER_BYTES)
            if leftover:  # receive(b"") would mean end of stream
                self.requests.receive(leftover)
            self._record_intercepted(dest)
            return True
        # Mint the leaf first: once the client reads our 200 it sends its ClientHello, which
        # must reach the TLS layer, not the plain-text reader.
        context = await asyncio.get_running_loop().run_in_executor(
            None, self.interception.authority.server_context, dest.host
        )
        if leftover:
            return False  # a client that does not wait for our answer cannot be intercepted
        # The ClientHello may follow our 200 within microseconds. Read nothing more in plain
        # text: a byte the stream reader took would never reach the TLS layer, and the
        # handshake would hang. start_tls resumes reading once TLS is in place.
        reading_transport(self.writer).pause_reading()
        self.writer.write(ESTABLISHED)
        async with asyncio.timeout(HEADER_TIMEOUT):
            await self.writer.start_tls(context)
        self.intercepted = dataclasses.replace(dest, tls=True)
        self.requests = http1.RequestReader(MAX_HEADER_BYTES)
        self._record_intercepted(dest)
        return True

    def _connect_trailing(self) -> bytes:
        """The bytes the client sent behind its CONNECT head, which belong to the tunnel."""
        if self.requests.next_event() is not http1.END:  # llhttp ends a CONNECT at its head
            raise http1.ProtocolError("a CONNECT request cannot carry a body")
        return self.requests.trailing

    def _record_intercepted(self, dest: Destination) -> None:
        self.record(
            "egress",
            "audit-allow" if dest.audited_only else "allow",
            rule=dest.rule,
            method="CONNECT",
            host=dest.host,
            port=dest.port,
            detail={"intercepted": True},
        )

    async def _open(self, dest: Destination) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if dest.tls:
                assert self.interception is not None
                opening = asyncio.open_connection(
                    dest.address,
                    dest.connect_port,
                    limit=READ_SIZE,
                    ssl=self.interception.upstream,
                    server_hostname=dest.host,
                )
            else:
                opening = asyncio.open_connection(dest.address, dest.connect_port, limit=READ_SIZE)
            return await asyncio.wait_for(opening, CONNECT_TIMEOUT)
        except TimeoutError as exc:
            raise Blocked(
                "error:connect-timeout", f"{dest.host}:{dest.port} did not answer", 504
            ) from exc
        except ssl.SSLError as exc:
            raise Blocked(
                "error:upstream-tls",
                f"{dest.host}:{dest.port} failed TLS verification: {exc.reason or exc}",
                502,
            ) from exc
        except OSError as exc:
            raise Blocked(
                "error:connect", f"cannot connect to {dest.host}:{dest.port}: {exc.strerror}", 502
            ) from exc

    # --- absolute-form forwarding -------------------------------------------

    async def _forward(self, request: http1.RequestHead) -> bool:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        started = time.monotonic()
        try:
            dest, origin_target = await self._route(target)
            if self.inspector is not None:
                self.inspector.check_head(
                    method, dest.host, dest.port, origin_target, request.headers
                )
        except Blocked as exc:
            host = urlsplit(target).netloc[:253] if "://" in target else "-"
            await discard_body(self.requests, self.reader, HEADER_TIMEOUT)
            await self._deny(method, host, 0, target, exc)
            return False
        try:
            upstream = await self._upstream_for(dest)
            try:
                status, up_bytes, down_bytes, keep_client = await self._exchange(
                    request, upstream, origin_target
                )
            except _StaleUpstream:
                upstream = await self._upstream_for(dest, fresh=True)
                status, up_bytes, down_bytes, keep_client = await self._exchange(
                    request, upstream, origin_target, replay=True
                )
        except Blocked as exc:
            await self._deny(method, dest.host, dest.port, origin_target, exc)
            return False
        self.record(
            "egress",
            "audit-allow" if dest.audited_only else "allow",
            rule=dest.rule,
            method=method,
            host=dest.host,
            port=dest.port,
            path=origin_target,
            bytes_up=up_bytes,
            bytes_down=down_bytes,
            detail={"status": status, "ms": round((time.monotonic() - started) * 1000)},
        )
        return keep_client

    async def _route(self, target: str) -> tuple[Destination, str]:
        if self.intercepted is not None:
            # Inside an intercepted tunnel the destination was checked at CONNECT time and
            # cannot change: only origin-form targets are accepted.
            if not target.startswith("/"):
                raise Blocked("error:not-origin-form", "send origin-form requests in a tunnel", 400)
            return self.intercepted, target
        if not target.startswith("http://"):
            if target.startswith("https://"):
                raise Blocked("error:https-absolute", "use CONNECT for https:// URLs", 400)
            raise Blocked(
                "error:not-a-proxy-request",
                "requests must use an absolute http:// URL (this is a forward proxy)",
                400,
            )
        rest = target[len("http://") :]
        cut = min(
            (i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
            default=len(rest),
        )
        authority, path = rest[:cut], rest[cut:]
        host, port = parse_authority(authority, 80)
        if self.inspector is not None:
            # Before the gate resolves it: resolving an encoded label is itself the leak.
            self.inspector.check_host("HTTP", host[:253], port)
        dest = await self.gate.check(host, port)
        path = path.split("#", 1)[0]
        if not path.startswith("/"):
            path = "/" + path
        return dest, path

    async def _upstream_for(self, dest: Destination, *, fresh: bool = False) -> Upstream:
        """This connection's upstream if it goes to `dest`, else a parked one to `dest`,
        else a new one (always a new one when `fresh`)."""
        key = _pool_key(dest)
        current = self.upstream
        if current is not None:
            if not fresh and current.key == key and current.alive():
                return current
            self._release(current)
            self.upstream = None
        parked = None if fresh or self.pool is None else self.pool.take(key)
        if isinstance(parked, Upstream):
            self.stats.upstreams_reused += 1
            self.upstream = parked
            return parked
        reader, writer = await self._open(dest)
        self.upstream = Upstream(dest, reader, writer)
        return self.upstream

    def _release(self, upstream: Upstream) -> None:
        """Park an idle upstream for the next client going the same way, or close it."""
        if self.pool is not None and upstream.alive():
            self.pool.give(upstream.key, upstream)
        else:
            upstream.close()

    async def _exchange(
        self,
        request: http1.RequestHead,
        upstream: Upstream,
        origin_target: str,
        *,
        replay: bool = False,
    ) -> tuple[int, int, int, bool]:
        """Send the request upstream and its response back: (status, bytes up, bytes down,
        whether the client connection may go on). With `replay`, the request's (empty)
        body was already read from the client, for an upstream that failed it."""
        dest = upstream.dest
        default_port = 443 if dest.tls else 80
        host_header = dest.host if dest.port == default_port else f"{dest.host}:{dest.port}"
        headers = [(b"host", host_header.encode("ascii"))]
        headers += forwarded_headers(request.headers)
        if request.expects_continue and not replay:
            await self._send(http1.CONTINUE)
        # The head goes out with the first scanned body bytes (or at the end), so a
        # request whose body is refused never reaches the upstream at all.
        head = http1.request_head(request.method, origin_target.encode("ascii"), headers)
        upstream.idle = False
        guard = None
        if self.inspector is not None and not replay:  # a replay has no body left to scan
            guard = self.inspector.body(
                request.headers,
                request.method.decode("ascii", "replace"),
                dest.host,
                dest.port,
                origin_target,
            )
        up_bytes = 0
        try:
            while not replay:
                event = await self._client_event(IDLE_TIMEOUT)
                if isinstance(event, bytes):
                    up_bytes += len(event)
                    data = event if guard is None else guard.feed(event)
                    if data:
                        await upstream.send(head + http1.frame(data, request.chunked))
                        head = b""
                elif event is http1.END:
                    rest = b"" if guard is None else guard.finish()
                    await upstream.send(
                        head
                        + http1.frame(rest, request.chunked)
                        + http1.end_of_body(request.chunked)
                    )
                    break
                else:
                    raise ConnectionError("client went away mid-request")
            if replay:
                await upstream.send(head + http1.end_of_body(request.chunked))
        except Blocked:
            # The upstream saw a request that never completes; it must not be reused.
            upstream.close()
            self.upstream = None
            raise
        replayable = (
            upstream.reused
            and not replay
            and up_bytes == 0
            and request.method in REPLAYABLE_METHODS
        )
        problem = "closed the connection before answering"
        messages = http1.ResponseReader(request.method, MAX_HEADER_BYTES)
        try:
            response = await pull(messages, upstream.reader, IDLE_TIMEOUT)
        except http1.ProtocolError:
            response, problem = None, "sent an invalid response"
        except ConnectionError:
            response = None
        if not isinstance(response, http1.ResponseHead):
            upstream.close()
            self.upstream = None
            if replayable:
                raise _StaleUpstream
            # Nothing went to the client yet: it gets an answer, not a dropped connection.
            raise Blocked("error:upstream", f"{dest.host} {problem}", 502)
        # What the upstream already sent goes to the client in one write (a small response
        # is one send, not three); we flush before waiting for more, and every READ_SIZE.
        head, chunk_out, keep_client = http1.relay_head(
            request, response, forwarded_headers(response.headers)
        )
        out = bytearray(head)
        down_bytes = 0
        while True:
            event = messages.next_event()
            if event is http1.NEED_DATA:
                await self._write(out)
                event = await pull(messages, upstream.reader, IDLE_TIMEOUT)
            if isinstance(event, bytes):
                down_bytes += len(event)
                out += http1.frame(event, chunk_out)
                if len(out) >= READ_SIZE:
                    await self._write(out)
            elif event is http1.END:
                out += http1.end_of_body(chunk_out)
                await self._write(out)
                break
            else:
                raise ConnectionError("upstream went away mid-response")
        if messages.reusable:
            upstream.idle = True
            upstream.reused = True
        else:
            upstream.close()
            self.upstream = None
        return response.status, up_bytes, down_bytes, keep_client
