"""Relaying the bytes of an uninspected tunnel between two sockets, as cheaply as possible.

A CONNECT tunnel that is not intercepted carries opaque bytes: nothing is parsed or
scanned, so the proxy only has to move them. On Linux they go socket → pipe → socket
with `splice(2)` and never enter Python; elsewhere (or when the streams already hold
bytes that must go first) a buffered copy loop does the same job. Both directions
half-close like TCP (EOF one way shuts down writing the other way), an error on
either side ends the whole tunnel, and one idle timer per tunnel, not one per chunk,
ends a tunnel nothing moved through for `idle_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable
from typing import cast

from claude_bottle.bundle.connection import drain

PIPE_SIZE = 1 << 20  # bytes in flight per direction; the kernel may grant less
COPY_SIZE = 256 * 1024

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def splice_available() -> bool:
    return hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK")


def reading_transport(writer: asyncio.StreamWriter) -> asyncio.Transport:
    """A stream's transport, which reads too though typed write-only (uvloop's transports
    do not derive from asyncio.Transport, so this is a cast, not a check)."""
    return cast(asyncio.Transport, writer.transport)


def _fast_path_ready(*streams: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
    """Whether splice can take over: each stream has a socket, nothing queued to write,
    and its unread bytes sit where `_take_buffered` can find them."""
    return splice_available() and all(
        isinstance(getattr(reader, "_buffer", None), bytearray)
        and writer.get_extra_info("socket") is not None
        and not writer.transport.get_write_buffer_size()
        for reader, writer in streams
    )


def _take_over(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> tuple[socket.socket, bytes]:
    """Stop the stream's transport and return a non-blocking duplicate of its socket,
    with the bytes the stream had read but nobody consumed (asyncio has no public call
    for those, hence the private buffer, checked by `_fast_path_ready`)."""
    reader, writer = stream
    reading_transport(writer).pause_reading()
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    unread = bytes(buffer)
    buffer.clear()
    sock = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
    sock.setblocking(False)
    with contextlib.suppress(OSError):  # fewer, larger splices; the kernel caps it (wmem_max)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIPE_SIZE)
    return sock, unread


class _Direction:
    """src → pipe → dst with splice(2); reads only while the pipe is empty."""

    def __init__(self, tunnel: _SpliceTunnel, src: socket.socket, dst: socket.socket) -> None:
        self.tunnel, self.loop, self.src, self.dst = tunnel, tunnel.loop, src, dst
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, PIPE_SIZE)
        self.pending = 0
        self.total = 0
        self.reading = False
        self.writing = False

    def _read_on(self) -> None:
        if not self.reading:
            self.loop.add_reader(self.src.fileno(), self._readable)
            self.reading = True

    def _read_off(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src.fileno())
            self.reading = False

    def _write_off(self) -> None:
        if self.writing:
            self.loop.remove_writer(self.dst.fileno())
            self.writing = False

    def start(self) -> None:
        self._read_on()

    def _readable(self) -> None:
        try:
            moved = os.splice(self.src.fileno(), self.pipe_w, PIPE_SIZE, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self.tunnel.end()
            return
        if moved == 0:  # EOF: the pipe is empty (we read only then), so say so downstream
            self._read_off()
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)
            self.tunnel.direction_done()
            return
        self.tunnel.touch()
        self.pending += moved
        self.total += moved
        self._flush()

    def _flush(self) -> None:
        while self.pending:
            try:
                sent = os.splice(self.pipe_r, self.dst.fileno(), self.pending, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                self._read_off()  # backpressure: the far side is slower than this one
                if not self.writing:
                    self.loop.add_writer(self.dst.fileno(), self._flush)
                    self.writing = True
                return
            except OSError:
                self.tunnel.end()
                return
            self.pending -= sent
            self.tunnel.touch()
        self._write_off()
        self._read_on()

    def close(self) -> None:
        self._read_off()
        self._write_off()
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class _SpliceTunnel:
    """Both directions between sockets `a` (client) and `b` (upstream), and the idle timer."""

    def __init__(self, a: socket.socket, b: socket.socket, idle_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle_timeout = idle_timeout
        self.last_activity = self.loop.time()
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.open_directions = 2
        self.up = _Direction(self, a, b)
        self.down = _Direction(self, b, a)
        self.timer = self.loop.call_later(idle_timeout, self._check_idle)

    def touch(self) -> None:
        self.last_activity = self.loop.time()

    def end(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def direction_done(self) -> None:
        self.open_directions -= 1
        if self.open_directions == 0:
            self.end()

    def _check_idle(self) -> None:
        idle_for = self.loop.time() - self.last_activity
        if idle_for >= self.idle_timeout:
            self.end()
        else:
            self.timer = self.loop.call_later(self.idle_timeout - idle_for, self._check_idle)

    async def run(self) -> tuple[int, int]:
        try:
            self.up.start()
            self.down.start()
            await self.finished
        finally:
            self.timer.cancel()
            self.up.close()
            self.down.close()
        return self.up.total, self.down.total


async def _copy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    counts: list[int],
    index: int,
    touch: Callable[[], None],
) -> None:
    while data := await reader.read(COPY_SIZE):
        counts[index] += len(data)
        writer.write(data)
        await drain(writer)
        touch()
    if writer.can_write_eof():
        writer.write_eof()


async def _stream_relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    idle_timeout: float,
) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    last_activity = loop.time()
    counts = [0, 0]

    def touch() -> None:
        nonlocal last_activity
        last_activity = loop.time()

    copies = [
        asyncio.ensure_future(_copy(client[0], upstream[1], counts, 0, touch)),
        asyncio.ensure_future(_copy(upstream[0], client[1], counts, 1, touch)),
    ]
    try:
        while not all(copy.done() for copy in copies):
            remaining = last_activity + idle_timeout - loop.time()
            if remaining <= 0:
                break
            await asyncio.wait(copies, timeout=remaining, return_when=asyncio.FIRST_EXCEPTION)
            if any(copy.done() and copy.exception() for copy in copies):
                break  # an error on either side ends the whole tunnel
    finally:
        # Both copies end with the tunnel, and their errors are collected here (a reset
        # is how many tunnels end); a gather's cancel would not stop the surviving one.
        for copy in copies:
            copy.cancel()
        await asyncio.gather(*copies, return_exceptions=True)
    return counts[0], counts[1]


async def relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    idle_timeout: float,
    first_up: bytes = b"",
) -> tuple[int, int]:
    """Move bytes both ways until both sides are done, one fails, or the tunnel idles.

    `first_up` (bytes the client sent behind its request head) goes upstream first.
    Returns (bytes up, bytes down) moved; the caller closes both streams afterwards.
    """
    if not _fast_path_ready(client, upstream):
        if first_up:
            upstream[1].write(first_up)
        up, down = await _stream_relay(client, upstream, idle_timeout)
        return up + len(first_up), down
    loop = asyncio.get_running_loop()
    (a, unread_up), (b, unread_down) = _take_over(client), _take_over(upstream)
    head_up, up, down = first_up + unread_up, 0, 0
    try:
        if head_up:
            await asyncio.wait_for(loop.sock_sendall(b, head_up), idle_timeout)
        up = len(head_up)
        if unread_down:
            await asyncio.wait_for(loop.sock_sendall(a, unread_down), idle_timeout)
        down = len(unread_down)
        spliced_up, spliced_down = await _SpliceTunnel(a, b, idle_timeout).run()
        return up + spliced_up, down + spliced_down
    except (OSError, TimeoutError):
        return up, down
    finally:
        a.close()
        b.close()
