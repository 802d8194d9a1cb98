"""HTTP/1.1 forward proxy: absolute-form requests with keep-alive, and CONNECT tunnels.

Layers, one concern each: h11 parses and frames HTTP (we never hand-parse
it); `EgressGate` decides where a request may go; this module moves bytes
and records one audit event per decision. Everything arriving here comes
from the bottle and is treated as hostile: header sizes are bounded by h11,
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

import h11

from claude_bottle.bundle.control import Stats
from claude_bottle.bundle.gate import Blocked, Destination, EgressGate, parse_authority
from claude_bottle.bundle.h11io import READ_SIZE, idle_and_open, next_event, send_event
from claude_bottle.bundle.pool import PoolKey, UpstreamPool
from claude_bottle.bundle.tunnel import reading_transport, relay

if TYPE_CHECKING:  # cryptography and the DLP engine are imported only when enabled
    from claude_bottle.bundle.scanning import DlpInspector
    from claude_bottle.bundle.tls import Interception

MAX_HEADER_BYTES = 64 * 1024
HEADER_TIMEOUT = 30.0  # a request's head must arrive within this
IDLE_TIMEOUT = 120.0  # keep-alive / tunnel inactivity
CONNECT_TIMEOUT = 10.0
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


def _filtered_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers; keep chunked framing, which h11 re-applies on the next hop."""
    connection_tokens = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    kept = [
        (name, value)
        for name, value in headers
        if name not in HOP_BY_HOP and name not in connection_tokens
    ]
    if any(name == b"transfer-encoding" for name, _ in headers):
        kept.append((b"transfer-encoding", b"chunked"))  # h11 accepts no other coding
    return kept


class _StaleUpstream(Exception):
    """A reused upstream connection was closed before it answered a replayable request."""


def _pool_key(dest: Destination) -> PoolKey:
    return (dest.address, dest.connect_port, dest.tls, dest.host)


class Upstream:
    """One keep-alive connection to an origin server, reused while the destination is the
    same, and parked in the bundle's pool when its client goes."""

    def __init__(
        self, dest: Destination, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.dest = dest
        self.key = _pool_key(dest)
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.reused = False  # it has carried a whole exchange before

    def alive(self) -> bool:
        return idle_and_open(self.conn, self.reader, self.writer)

    def close(self) -> None:
        self.writer.close()

    async def next_event(self) -> Any:
        return await next_event(self.conn, self.reader, IDLE_TIMEOUT)

    async def send(self, event: Any) -> None:
        await send_event(self.conn, self.writer, event)


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
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
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
                if not await self._forward(request):
                    return
                if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                    return
                self.conn.start_next_cycle()
        except (
            ConnectionError,
            TimeoutError,
            OSError,
            h11.ProtocolError,
            asyncio.IncompleteReadError,
        ):
            pass
        finally:
            if self.upstream is not None:
                self._release(self.upstream)
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _client_event(self, timeout: float) -> Any:
        return await next_event(self.conn, self.reader, timeout)

    async def _next_request(self) -> h11.Request | None:
        try:
            event = await self._client_event(IDLE_TIMEOUT)
        except h11.RemoteProtocolError as exc:
            await self._refuse_raw(exc.error_status_hint, "error:bad-request", str(exc))
            return None
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed or garbage after a response

    async def _send(self, event: Any) -> None:
        await send_event(self.conn, self.writer, event)

    async def _write(self, out: bytearray) -> None:
        """Write and empty `out` (bytes h11 framed for the client)."""
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
        await self._send(h11.Response(status_code=status, headers=headers, reason=phrase))
        await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def _refuse_raw(self, status: int, rule: str, reason: str) -> None:
        """Answer a request h11 could not parse, then close."""
        body = block_body(self.bottle, "-", rule, reason[:200])
        with contextlib.suppress(Exception):
            self.writer.write(
                b"HTTP/1.1 %d Bad Request\r\nconnection: close\r\ncontent-length: %d\r\n"
                b"x-claude-bottle-block: %s\r\n\r\n%s" % (status, len(body), rule.encode(), body)
            )
            await self.writer.drain()
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

    async def _drain_request_body(self) -> None:
        """Read and discard the rest of a refused request, bounded, so the reply is seen."""
        budget = 1024 * 1024
        while budget > 0:
            event = await self._client_event(HEADER_TIMEOUT)
            if isinstance(event, h11.Data):
                budget -= len(event.data)
            else:
                return

    # --- CONNECT -------------------------------------------------------------

    async def _tunnel(self, request: h11.Request) -> bool:
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
        await self._send(
            h11.Response(status_code=200, headers=[], reason=b"Connection established")
        )
        leftover, _ = self.conn.trailing_data
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
        if dest.port != TLS_PORT:
            leftover, _ = self.conn.trailing_data
            await self._send(
                h11.Response(status_code=200, headers=[], reason=b"Connection established")
            )
            self.intercepted = dest
            self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
            if leftover:  # receive_data(b"") would mean end of stream to h11
                self.conn.receive_data(leftover)
            self._record_intercepted(dest)
            return True
        # Mint the leaf first: once the client reads our 200 it sends its ClientHello, which
        # must reach the TLS layer, not the plain-text reader.
        context = await asyncio.get_running_loop().run_in_executor(
            None, self.interception.authority.server_context, dest.host
        )
        leftover, _ = self.conn.trailing_data
        if leftover:
            return False  # a client that does not wait for our answer cannot be intercepted
        established = h11.Response(status_code=200, headers=[], reason=b"Connection established")
        # The ClientHello may follow our 200 within microseconds. Read nothing more in plain
        # text: a byte the stream reader took would never reach the TLS layer, and the
        # handshake would hang. start_tls resumes reading once TLS is in place.
        reading_transport(self.writer).pause_reading()
        self.writer.write(self.conn.send(established) or b"")
        async with asyncio.timeout(HEADER_TIMEOUT):
            await self.writer.start_tls(context)
        self.intercepted = dataclasses.replace(dest, tls=True)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._record_intercepted(dest)
        return True

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

    async def _forward(self, request: h11.Request) -> bool:
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
            await self._drain_request_body()
            await self._deny(method, host, 0, target, exc)
            return False
        try:
            upstream = await self._upstream_for(dest)
            try:
                status, up_bytes, down_bytes = await self._exchange(
                    request, upstream, origin_target
                )
            except _StaleUpstream:
                upstream = await self._upstream_for(dest, fresh=True)
                status, up_bytes, down_bytes = await self._exchange(
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
        return True

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
        self, request: h11.Request, upstream: Upstream, origin_target: str, *, replay: bool = False
    ) -> tuple[int, int, int]:
        """Send the request upstream and its response back. With `replay`, the request's
        (empty) body was already read from the client, for an upstream that failed it."""
        dest = upstream.dest
        default_port = 443 if dest.tls else 80
        host_header = dest.host if dest.port == default_port else f"{dest.host}:{dest.port}"
        headers = [(b"host", host_header.encode("ascii"))]
        headers += _filtered_headers(list(request.headers))
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        head = h11.Request(
            method=request.method, target=origin_target.encode("ascii"), headers=headers
        )
        head_sent = False

        async def send_upstream(event: Any) -> None:
            # The head goes out with the first scanned body bytes (or at the end), so a
            # request whose body is refused never reaches the upstream at all.
            nonlocal head_sent
            if not head_sent:
                head_sent = True
                await upstream.send(head)
            await upstream.send(event)

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
                if isinstance(event, h11.Data):
                    up_bytes += len(event.data)
                    data = event.data if guard is None else guard.feed(event.data)
                    if data:
                        await send_upstream(h11.Data(data=data))
                elif isinstance(event, h11.EndOfMessage):
                    rest = b"" if guard is None else guard.finish()
                    if rest:
                        await send_upstream(h11.Data(data=rest))
                    await send_upstream(h11.EndOfMessage(headers=event.headers))
                    break
                else:
                    raise ConnectionError("client went away mid-request")
            if replay:
                await send_upstream(h11.EndOfMessage())
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
        try:
            response = await upstream.next_event()
            while isinstance(response, h11.InformationalResponse):
                response = await upstream.next_event()
        except h11.RemoteProtocolError:
            response, problem = None, "sent an invalid response"
        except ConnectionError:
            response = None
        if not isinstance(response, h11.Response):
            upstream.close()
            self.upstream = None
            if replayable:
                raise _StaleUpstream
            # Nothing went to the client yet: it gets an answer, not a dropped connection.
            raise Blocked("error:upstream", f"{dest.host} {problem}", 502)
        # What the upstream already sent goes to the client in one write (a small response
        # is one send, not three); we flush before waiting for more, and every READ_SIZE.
        out = bytearray(
            self.conn.send(
                h11.Response(
                    status_code=response.status_code,
                    headers=_filtered_headers(list(response.headers)),
                    reason=response.reason,
                )
            )
            or b""
        )
        down_bytes = 0
        while True:
            event = upstream.conn.next_event()
            if event is h11.NEED_DATA:
                await self._write(out)
                event = await upstream.next_event()
            if isinstance(event, h11.Data):
                down_bytes += len(event.data)
                out += self.conn.send(event) or b""
                if len(out) >= READ_SIZE:
                    await self._write(out)
            elif isinstance(event, h11.EndOfMessage):
                out += self.conn.send(h11.EndOfMessage(headers=event.headers)) or b""
                await self._write(out)
                break
            else:
                raise ConnectionError("upstream went away mid-response")
        if upstream.conn.our_state is h11.DONE and upstream.conn.their_state is h11.DONE:
            upstream.conn.start_next_cycle()
            upstream.reused = True
        else:
            upstream.close()
            self.upstream = None
        return response.status_code, up_bytes, down_bytes
