"""Connection plumbing the egress proxy and the API gateway share.

Reading events off a socket with a timeout per read (a deadline for a request's head,
and a pace its body must keep), writes with a deadline, framing limits, hop-by-hop headers,
discarding the body of a refused request, keep-alive connections to servers, and the
loop that serves one client connection from the bottle request after request. Nothing
here decides whether a request may pass: that is `admission`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import http

from claude_bottle.bundle import http1
from claude_bottle.bundle.refusal import Refusal

MAX_HEADER_BYTES = 64 * 1024
READ_SIZE = 256 * 1024  # bytes asked of a socket per read
HEADER_TIMEOUT = 30.0  # a request's head must arrive within this, from its first byte
IDLE_TIMEOUT = 120.0  # keep-alive / tunnel inactivity
WRITE_TIMEOUT = 60.0  # a write must drain within this: a reader that stalls is let go
CLIENT_BUFFER = 64 * 1024  # a client connection's read buffer (asyncio pauses at twice it)
CONNECT_TIMEOUT = 10.0
BODY_GRACE = 30.0  # seconds any request body may take to arrive, however small
BODY_MIN_RATE = 1024  # bytes a second a body must average past that (waiting on the client)
BODY_RULE = "limit:body-rate"
MAX_DRAIN = 1024 * 1024  # body of a refused request read and discarded before answering

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


class StreamReader(asyncio.StreamReader):
    """asyncio's stream reader, whose `read` copies what it returns once.

    Python 3.11's slices its buffer into a new bytearray, then copies that into bytes;
    on a bulk transfer through the proxy that was one needless copy of every byte.
    """

    async def read(self, n: int = -1) -> bytes:
        if n <= 0 or self._exception is not None:  # type: ignore[attr-defined]
            return await super().read(n)
        buffer: bytearray = self._buffer  # type: ignore[attr-defined]
        if not buffer and not self._eof:  # type: ignore[attr-defined]
            await self._wait_for_data("read")  # type: ignore[attr-defined]
        if len(buffer) <= n:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(memoryview(buffer)[:n])  # the view is gone before the resize
            del buffer[:n]
        self._maybe_resume_transport()  # type: ignore[attr-defined]
        return data


class ConnectionEnded(Exception):
    """One side of an exchange went away or broke it: the client connection ends."""


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
    messages: http1.RequestReader, reader: asyncio.StreamReader, timeout: float, pace: BodyPace
) -> bool:
    """Read and discard the rest of the current request, at most about MAX_DRAIN bytes
    and at its `pace`, so the client sees the answer to it; True if it ended (False: the
    connection must close)."""
    budget = MAX_DRAIN
    while budget > 0:
        try:
            event = await pace.pull(messages, reader, timeout)
        except Refusal:
            return False  # too slow: answered without the rest, and closed
        if not isinstance(event, bytes):
            return event is http1.END
        budget -= len(event)
    return False


class BodyPace:
    """How long the bundle still waits for the client to send the rest of a request's
    body: BODY_GRACE, plus a second for each BODY_MIN_RATE bytes that came, less the time
    spent waiting. A body trickled a byte a minute (each read within any per-read
    timeout) holds its connection, and the slot it takes, for BODY_GRACE, not forever.
    Time spent waiting on the upstream is not the client's and does not count."""

    def __init__(self) -> None:
        self.left = BODY_GRACE

    async def pull(
        self,
        messages: http1.RequestReader,
        reader: asyncio.StreamReader,
        timeout: float,
    ) -> http1.Event:
        """`pull` within what is left; a Refusal (408) when it runs out."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        paced = asyncio.timeout(max(self.left, 0.0))
        try:
            async with paced:
                event = await pull(messages, reader, timeout)
        except TimeoutError:
            if paced.expired():
                raise self.too_slow() from None
            raise
        finally:
            self.left -= loop.time() - started
        if isinstance(event, bytes):
            self.left += len(event) / BODY_MIN_RATE
        return event

    @staticmethod
    def too_slow() -> Refusal:
        return Refusal(
            408,
            BODY_RULE,
            f"the request body came slower than {BODY_MIN_RATE} bytes a second "
            f"(after {BODY_GRACE:g} s); send it at once",
        )


async def pull_head(
    messages: http1.RequestReader,
    reader: asyncio.StreamReader,
    wait: float,
) -> http1.Event:
    """The next request head (or end) of `messages`: its first byte must arrive within
    `wait`, and the whole head within HEADER_TIMEOUT of that, however it trickles in (one
    byte a minute renews nothing)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(wait) as deadline:
        started = False
        while True:
            event = messages.next_event()
            if event is not http1.NEED_DATA:
                return event
            data = await reader.read(READ_SIZE)
            if data and not started:
                started = True
                when = deadline.when()
                head_by = loop.time() + HEADER_TIMEOUT
                deadline.reschedule(head_by if when is None else min(when, head_by))
            messages.receive(data)


async def drain(writer: asyncio.StreamWriter) -> None:
    """Wait until `writer` has taken what was written, within WRITE_TIMEOUT (TimeoutError):
    a peer that stops reading would otherwise hold the connection, and its bytes, forever."""
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()


def response(status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    """A whole response the bundle answers itself, with the status's standard phrase."""
    phrase = http.HTTPStatus(status).phrase.encode()
    return http1.response_head(status, phrase, headers) + body


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
            await drain(self.writer)


class ClientConnection:
    """Serves one client connection from the bottle, request after request, until it closes.

    Subclasses answer one request in `handle` (False: the connection must close), answer
    a request that could not be parsed in `bad_request`, and let go of what they hold
    upstream in `release`. Every read from the client has a timeout, a parse error ends
    the connection after its answer, and so does any failure of either side.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.requests = http1.RequestReader(MAX_HEADER_BYTES)
        self.pace = BodyPace()  # the current request's body's, anew for each request

    async def serve(self) -> None:
        wait = HEADER_TIMEOUT  # a new connection owes its first request at once
        try:
            while True:
                try:
                    event = await pull_head(self.requests, self.reader, wait)
                    wait = IDLE_TIMEOUT  # between requests on a kept-alive connection
                except http1.ProtocolError as exc:
                    await self.bad_request(exc)
                    return
                if not isinstance(event, http1.RequestHead):
                    return  # the client closed
                self.pace = BodyPace()
                if not await self.handle(event):
                    return
        except (
            ConnectionError,
            TimeoutError,
            OSError,
            http1.ProtocolError,
            asyncio.IncompleteReadError,
            ConnectionEnded,
        ):
            pass
        finally:
            self.release()
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def handle(self, request: http1.RequestHead) -> bool:
        raise NotImplementedError

    async def bad_request(self, exc: http1.ProtocolError) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Let go of upstream connections as the client connection ends."""

    async def body_event(self) -> http1.Event:
        """The next event of the current request's body: each read within IDLE_TIMEOUT,
        the whole body at its pace (a Refusal, 408, when it falls behind)."""
        return await self.pace.pull(self.requests, self.reader, IDLE_TIMEOUT)

    async def discard_body(self, timeout: float) -> bool:
        """`discard_body` of the current request, at its pace."""
        return await discard_body(self.requests, self.reader, timeout, self.pace)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await drain(self.writer)
