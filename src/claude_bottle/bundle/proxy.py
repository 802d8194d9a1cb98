"""HTTP/1.1 forward proxy: absolute-form requests with keep-alive, and CONNECT tunnels.

Layers, one concern each: `http1` parses and frames HTTP (llhttp; we never
hand-parse it); `connection` reads and serves a client connection (shared with the
API gateway); `admission` decides, stage by stage, whether and where a request may
go; this module moves bytes and records one audit event per decision. Everything
arriving here comes from the bottle and is treated as hostile: header sizes are
bounded by `http1`, every read has a timeout, and a parse error closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import time
from typing import TYPE_CHECKING

from claude_bottle.bundle import http1
from claude_bottle.bundle.admission import (
    EgressAdmission,
    Recorder,
    allow_decision,
    record_refusal,
    refused_where,
)
from claude_bottle.bundle.connection import (
    CONNECT_TIMEOUT,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_HEADER_BYTES,
    READ_SIZE,
    ClientConnection,
    ConnectionEnded,
    KeptAlive,
    drain,
    forwarded_headers,
    pull,
    response,
)
from claude_bottle.bundle.control import Stats
from claude_bottle.bundle.gate import Destination, EgressGate
from claude_bottle.bundle.held import REQUEST_LINE
from claude_bottle.bundle.pool import PoolKey, UpstreamPool
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.tls_refusal import answer_inside_tls, answerable
from claude_bottle.bundle.tls_stream import open_connection, start_tls
from claude_bottle.bundle.tunnel import reading_transport, relay

if TYPE_CHECKING:  # cryptography and the DLP engine are imported only when enabled
    from claude_bottle.bundle.injection import InjectedHead, Injector, ResponseGuard
    from claude_bottle.bundle.interception import Interception
    from claude_bottle.bundle.l7 import RuleBook
    from claude_bottle.bundle.scanning import DlpInspector

TLS_PORT = 443  # CONNECTs to it are TLS-intercepted; other ports must carry plain HTTP
# Sent again, on a new connection, when a reused one turns out to have been closed by the
# server before it answered (the usual keep-alive race): safe, and only without a body.
REPLAYABLE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
# A response body piece this large is written on its own; smaller ones are gathered (with
# the head) into one write, so a small response leaves in one TLS record.
DIRECT_WRITE = 16 * 1024
SEND_BUFFER = 1 << 20  # an intercepted connection's send buffer towards the bottle


def block_body(bottle: str, host: str, refusal: Refusal) -> bytes:
    """The one-line body of a refusal: what, why, and the command that would allow it."""
    line = f"claude-bottle: blocked {host}: {refusal.message} (rule {refusal.rule})."
    hint = refusal.hint
    if not hint and refusal.rule == "deny:not-allowlisted":
        hint = f"claude-bottle allow {bottle} {host}"
    if hint:
        line += f" To allow it: {hint}"
    return (line.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8", "replace")


class _StaleUpstream(Exception):
    """A reused upstream connection was closed before it answered a replayable request."""


def _larger_send_buffer(writer: asyncio.StreamWriter) -> None:
    """Let the kernel hold more of what goes to the bottle: a bulk response then leaves in
    fewer, larger writes (the kernel caps the size at wmem_max)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def _pool_key(dest: Destination) -> PoolKey:
    return (dest.address, dest.connect_port, dest.tls, dest.host)


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


class ProxyConnection(ClientConnection):
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
        rules: RuleBook | None = None,
        injector: Injector | None = None,
    ) -> None:
        super().__init__(reader, writer)
        self.pool = pool
        self.admission = EgressAdmission(gate, inspector, rules, injector)
        self.interception = interception
        self.intercepted: Destination | None = None  # set once a CONNECT is intercepted
        self.record = record
        self.bottle = bottle
        self.stats = stats
        self.upstream: Upstream | None = None

    async def serve(self) -> None:
        self.stats.connections += 1
        await super().serve()

    async def handle(self, request: http1.RequestHead) -> bool:
        self.stats.requests += 1
        if request.method == b"CONNECT":
            # False ends the connection; True: now serving requests inside intercepted TLS
            return self.intercepted is None and await self._tunnel(request)
        return await self._forward(request) and request.keep_alive

    def release(self) -> None:
        if self.upstream is not None:
            self._release(self.upstream)

    async def _write(self, out: bytearray) -> None:
        """Write and empty `out` (bytes framed for the client)."""
        if out:
            self.writer.write(bytes(out))
            out.clear()
            await drain(self.writer)

    async def _respond(self, status: int, rule: str, body: bytes, close: bool = False) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"x-claude-bottle-block", rule.encode("ascii", "replace")),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await self.send(response(status, headers, body))

    async def bad_request(self, exc: http1.ProtocolError) -> None:
        """Answer a request that could not be parsed, then close."""
        rule = "error:bad-request"
        refusal = Refusal(exc.status, rule, str(exc)[:200])
        with contextlib.suppress(Exception):
            await self._respond(exc.status, rule, block_body(self.bottle, "-", refusal), True)
        self.record("egress", "deny", rule=rule)

    async def _deny(self, method: str, host: str, port: int, path: str, exc: Refusal) -> None:
        self.stats.blocked += 1
        record_refusal(
            self.record,
            "egress",
            exc,
            decision=exc.decision,
            method=method,
            host=host,
            port=port,
            path=path,
        )
        await self._respond(exc.status, exc.rule, block_body(self.bottle, host, exc), close=True)

    async def _deny_inside_tls(self, host: str, port: int, exc: Refusal) -> None:
        """Record the refusal, then say it inside TLS, where the client shows it."""
        assert self.interception is not None
        self.stats.blocked += 1
        record_refusal(
            self.record,
            "egress",
            exc,
            decision=exc.decision,
            method="CONNECT",
            host=host,
            port=port,
            path="",
        )
        body = block_body(self.bottle, host, exc)
        await answer_inside_tls(self.reader, self.writer, self.interception, host, exc, body)

    # --- CONNECT -------------------------------------------------------------

    async def _tunnel(self, request: http1.RequestHead) -> bool:
        """Open a tunnel; True when it was intercepted and requests follow inside TLS."""
        authority = request.target.decode("ascii", "replace")
        started = time.monotonic()
        REQUEST_LINE.set(("CONNECT", authority))  # what `pending` shows if it is held
        try:
            dest = await self.admission.destination("CONNECT", authority, 443)
            if self.interception is not None and (
                self.interception.applies_to(dest.host) or self.admission.must_intercept(dest.host)
            ):
                return await self._intercept(dest)
            self.admission.opaque_tunnel(dest)
            up_reader, up_writer = await self._open(dest)
        except Refusal as exc:
            host, port, path = refused_where(authority, 443)
            if answerable(self.interception, host, port, exc) and not self._connect_trailing():
                await self._deny_inside_tls(host, port, exc)
            else:
                await self._deny("CONNECT", host, port, path, exc)
            return False
        self.stats.tunnels += 1
        await self.send(ESTABLISHED)
        leftover = self._connect_trailing()
        try:
            up, down = await relay(
                (self.reader, self.writer), (up_reader, up_writer), IDLE_TIMEOUT, leftover
            )
        finally:
            up_writer.close()
        self.record(
            "egress",
            allow_decision(dest),
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
            await self.send(ESTABLISHED)
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
        _larger_send_buffer(self.writer)
        self.writer.write(ESTABLISHED)
        async with asyncio.timeout(HEADER_TIMEOUT):
            await start_tls(self.writer, context)
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
            allow_decision(dest),
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
                opening = open_connection(
                    dest.address,
                    dest.connect_port,
                    limit=READ_SIZE,
                    ssl=self.interception.upstream,
                    server_hostname=dest.host,
                )
            else:
                opening = open_connection(dest.address, dest.connect_port, limit=READ_SIZE)
            return await asyncio.wait_for(opening, CONNECT_TIMEOUT)
        except TimeoutError as exc:
            raise Refusal(
                504, "error:connect-timeout", f"{dest.host}:{dest.port} did not answer"
            ) from exc
        except ssl.SSLError as exc:
            raise Refusal(
                502,
                "error:upstream-tls",
                f"{dest.host}:{dest.port} failed TLS verification: {exc.reason or exc}",
            ) from exc
        except OSError as exc:
            raise Refusal(
                502, "error:connect", f"cannot connect to {dest.host}:{dest.port}: {exc.strerror}"
            ) from exc

    # --- absolute-form forwarding -------------------------------------------

    async def _forward(self, request: http1.RequestHead) -> bool:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        started = time.monotonic()
        REQUEST_LINE.set((method, target))
        try:
            dest, origin_target = await self.admission.route(target, self.intercepted)
            injected = self.admission.head(method, dest, origin_target, request.headers)
        except Refusal as exc:
            if self.intercepted is not None:
                where = (self.intercepted.host, self.intercepted.port, target)
            else:
                where = refused_where(target, 80)
            await self.discard_body(HEADER_TIMEOUT)
            await self._deny(method, *where, exc)
            return False
        try:
            upstream = await self._upstream_for(dest)
            try:
                status, up_bytes, down_bytes, keep_client = await self._exchange(
                    request, upstream, origin_target, injected
                )
            except _StaleUpstream:
                upstream = await self._upstream_for(dest, fresh=True)
                status, up_bytes, down_bytes, keep_client = await self._exchange(
                    request, upstream, origin_target, injected, replay=True
                )
        except Refusal as exc:
            await self._deny(method, dest.host, dest.port, origin_target, exc)
            return False
        self.record(
            "egress",
            allow_decision(dest),
            rule=dest.rule,
            method=method,
            host=dest.host,
            port=dest.port,
            path=origin_target,
            bytes_up=up_bytes,
            bytes_down=down_bytes,
            detail={
                "status": status,
                "ms": round((time.monotonic() - started) * 1000),
                **({"injected": list(injected.injected)} if injected is not None else {}),
            },
        )
        return keep_client

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
        injected: InjectedHead | None = None,
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
        headers += forwarded_headers(request.headers if injected is None else injected.forward)
        if request.expects_continue and not replay:
            await self.send(http1.CONTINUE)
        # The head goes out with the first scanned body bytes (or at the end), so a
        # request whose body is refused never reaches the upstream at all.
        head = http1.request_head(request.method, origin_target.encode("ascii"), headers)
        upstream.idle = False
        guard = None
        if not replay:  # a replay has no body left to scan
            guard = self.admission.body(
                request.method.decode("ascii", "replace"), dest, origin_target, request.headers
            )
        up_bytes = 0
        try:
            while not replay:
                event = await self.body_event()
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
        except Refusal:
            # The upstream saw a request that never completes; it must not be reused.
            upstream.close()
            self.upstream = None
            raise
        finally:
            if guard is not None:
                guard.release()  # however the body ended: its held bytes go back
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
            raise Refusal(502, "error:upstream", f"{dest.host} {problem}")
        reflected = None
        if injected is not None:
            from claude_bottle.bundle.injection import ResponseGuard

            reflected = ResponseGuard(injected.secrets)
            try:
                reflected.check_head(response.headers)
            except Refusal:
                upstream.close()  # its body was not read: it cannot carry another exchange
                self.upstream = None
                raise
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
                if reflected is not None:
                    event = self._unreflected(reflected, event, request, dest, origin_target)
                framed = http1.frame(event, chunk_out)
                if len(framed) >= DIRECT_WRITE:  # a bulk piece goes as it is, not copied
                    await self._write(out)  # what came before it, in order
                    self.writer.write(framed)
                    await drain(self.writer)
                    continue
                out += framed
                if len(out) >= READ_SIZE:
                    await self._write(out)
            elif event is http1.END:
                if reflected is not None:
                    out += http1.frame(reflected.finish(), chunk_out)
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

    def _unreflected(
        self,
        guard: ResponseGuard,
        chunk: bytes,
        request: http1.RequestHead,
        dest: Destination,
        path: str,
    ) -> bytes:
        """What of a response body chunk may go to the client; a body that carries the
        injected credential back ends both connections (its head has gone out already)."""
        try:
            return guard.feed(chunk)
        except Refusal as exc:
            if self.upstream is not None:
                self.upstream.close()
                self.upstream = None
            self.stats.blocked += 1
            record_refusal(
                self.record,
                "egress",
                exc,
                decision="deny",
                method=request.method.decode("ascii", "replace"),
                host=dest.host,
                port=dest.port,
                path=path,
            )
            raise ConnectionEnded(exc.message) from exc
