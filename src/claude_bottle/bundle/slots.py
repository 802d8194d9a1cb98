"""How many connections from the bottle a bundle serves at once, and what the rest cost.

Each socket the bottle reaches (the egress proxy, the API gateway) has its own `Slots`:
so many connections served at once, so many more waiting for a turn, each for at most
`SLOT_WAIT` seconds. A connection reads nothing until it has a slot (its transport is
gated from the moment it is accepted), so a waiting connection holds almost no
buffered bytes; past the waiting cap a connection is answered 503 at once and closed. The
proxy and the gateway do not share slots: connections to one cannot lock the other out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast

from claude_bottle.bundle.connection import CLIENT_BUFFER, HEADER_TIMEOUT, StreamReader, response

PROXY_SLOTS = 1024  # every process of the bottle may hold a connection at once
PROXY_WAITING = 512
GATEWAY_SLOTS = 128  # Claude Code holds a few; subagents a few more each
GATEWAY_WAITING = 128
SLOT_WAIT = HEADER_TIMEOUT  # a connection waits this long for a slot, then is closed
SLOTS_RULE = "limit:connections"
_BUSY_BODY = b"claude-bottle: the bundle serves as many connections as it may (rule %s).\n" % (
    SLOTS_RULE.encode()
)
BUSY = response(
    503,
    [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(_BUSY_BODY)),
        (b"x-claude-bottle-block", SLOTS_RULE.encode()),
        (b"connection", b"close"),
    ],
    _BUSY_BODY,
)

ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Slots:
    """Connections served at once, and a bounded, timed queue for the rest."""

    def __init__(
        self,
        serving: int,
        waiting: int,
        on_full: Callable[[int], None],
        wait: float = SLOT_WAIT,
    ) -> None:
        self.free = asyncio.Semaphore(serving)
        self.max_waiting = waiting
        self.waiting = 0
        self.wait = wait
        self.turned_away = 0  # connections refused since the bundle started
        self.on_full = on_full  # told the count, at most once per `wait` (the audit log)
        self._told_at: float | None = None

    async def serve(
        self, handler: ClientHandler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Run `handler` once the connection has a slot; refuse it (503, closed) if none
        comes free in time or too many already wait. The connection was gated when it
        was accepted (`paused_server`); it reads at full size once it has its slot."""
        if not await self._acquire():
            self._turn_away(writer)
            return
        try:
            protocol = writer.transport.get_protocol()
            if isinstance(protocol, _Gated):
                protocol.open()
            await handler(reader, writer)
        finally:
            self.free.release()

    def _turn_away(self, writer: asyncio.StreamWriter) -> None:
        self.turned_away += 1
        writer.write(BUSY)
        writer.close()
        now = asyncio.get_running_loop().time()
        if self._told_at is None or now - self._told_at >= self.wait:
            self._told_at = now  # one audit record per burst, not one per connection
            self.on_full(self.turned_away)

    async def _acquire(self) -> bool:
        if not self.free.locked():
            await self.free.acquire()  # does not wait: a slot is free
            return True
        if self.waiting >= self.max_waiting:
            return False
        self.waiting += 1
        try:
            async with asyncio.timeout(self.wait):
                await self.free.acquire()
            return True
        except TimeoutError:
            return False
        finally:
            self.waiting -= 1


WAITING_READ = 1024  # bytes a connection waiting for its slot may have read
_READ_BUFFER = bytearray(CLIENT_BUFFER)  # shared: emptied into the stream as each read ends


class _Gated(asyncio.BufferedProtocol):
    """A stream's protocol that reads almost nothing until its connection has a slot.

    The event loop starts reading as soon as a connection is accepted (uvloop ignores a
    pause in `connection_made`), so until `open` the reads go into a small buffer and
    the first one pauses the transport: a waiting connection holds at most WAITING_READ
    bytes. Reads land in one buffer all connections share, copied into the stream at
    once. Everything else is the wrapped stream protocol's (a buffered protocol cannot
    be one: uvloop reads into those only when they are no `asyncio.Protocol`).
    """

    def __init__(self, stream: asyncio.StreamReaderProtocol) -> None:
        self.stream = stream
        self.gated = True
        self.transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.ReadTransport, transport)
        self.stream.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self.stream.pause_writing()

    def resume_writing(self) -> None:
        self.stream.resume_writing()

    def eof_received(self) -> bool | None:
        return self.stream.eof_received()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(_READ_BUFFER)[: WAITING_READ if self.gated else CLIENT_BUFFER]

    def buffer_updated(self, nbytes: int) -> None:
        self.stream.data_received(bytes(_READ_BUFFER[:nbytes]))
        if self.gated and self.transport is not None:
            self.transport.pause_reading()

    def open(self) -> None:
        """The connection has its slot: read at full size."""
        self.gated = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


async def paused_server(
    handler: ClientHandler, sock: object, backlog: int
) -> asyncio.AbstractServer:
    """`asyncio.start_unix_server` on `sock`, except that each connection is gated until
    it has a slot (see `Slots.serve`) and its stream buffers CLIENT_BUFFER."""
    loop = asyncio.get_running_loop()

    def protocol() -> _Gated:
        reader = StreamReader(limit=CLIENT_BUFFER, loop=loop)
        return _Gated(asyncio.StreamReaderProtocol(reader, handler, loop=loop))

    return await loop.create_unix_server(protocol, sock=sock, backlog=backlog)  # type: ignore[arg-type]
