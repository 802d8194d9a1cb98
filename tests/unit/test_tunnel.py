"""The tunnel relay over real sockets: a unix-socket client side (as from the bottle) and
a TCP upstream on loopback, through both the splice(2) path and the stream fallback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvloop

from claude_bottle.bundle import tunnel

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(params=["splice", "streams"])
def splice_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Runs the test over each path; counts the splice(2) calls it made."""
    if request.param == "splice" and not tunnel.splice_available():
        pytest.skip("os.splice is Linux-only")
    if request.param == "streams":
        monkeypatch.setattr(tunnel, "splice_available", lambda: False)
    calls = [0]
    real = getattr(os, "splice", None)

    def counting(*args: object, **kwargs: object) -> int:
        calls[0] += 1
        assert real is not None
        return int(real(*args, **kwargs))

    monkeypatch.setattr(os, "splice", counting, raising=False)
    return calls


@asynccontextmanager
async def connected(tmp_path: Path) -> AsyncIterator[tuple[Streams, Streams, Streams, Streams]]:
    """(bottle side, proxy's client streams, proxy's upstream streams, upstream side)."""
    accepted: asyncio.Queue[Streams] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))
        await asyncio.sleep(3600)

    unix_server = await asyncio.start_unix_server(on_client, path=str(tmp_path / "p.sock"))
    tcp_server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = tcp_server.sockets[0].getsockname()[1]
    bottle = await asyncio.open_unix_connection(str(tmp_path / "p.sock"))
    proxy_client = await accepted.get()
    proxy_upstream = await asyncio.open_connection("127.0.0.1", port)
    far = await accepted.get()
    try:
        yield bottle, proxy_client, proxy_upstream, far
    finally:
        for _, writer in (bottle, proxy_client, proxy_upstream, far):
            writer.close()
        unix_server.close()
        tcp_server.close()


Runner = Callable[[Callable[[], Awaitable[None]]], None]


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Runs the test on the bundle's event loop (uvloop) and on asyncio's own, whose
    transports differ (uvloop's do not derive from asyncio.Transport)."""
    start = uvloop.run if request.param == "uvloop" else asyncio.run

    def go(test: Callable[[], Awaitable[None]]) -> None:
        start(asyncio.wait_for(test(), 60))

    return go


def relay_task(
    client: Streams, upstream: Streams, **kwargs: object
) -> asyncio.Task[tuple[int, int]]:
    async def go() -> tuple[int, int]:
        try:
            return await tunnel.relay(client, upstream, **kwargs)  # type: ignore[arg-type]
        finally:
            client[1].close()
            upstream[1].close()

    return asyncio.ensure_future(go())


async def send_all(writer: asyncio.StreamWriter, data: bytes) -> None:
    for start in range(0, len(data), 100_000):
        writer.write(data[start : start + 100_000])
        await writer.drain()
    writer.write_eof()


def test_bulk_both_ways_at_once_arrives_intact(
    tmp_path: Path, splice_calls: list[int], run: Runner
) -> None:
    up_data, down_data = os.urandom(6 << 20), os.urandom(5 << 20)

    async def test() -> None:
        async with connected(tmp_path) as (bottle, client, upstream, far):
            relaying = relay_task(client, upstream, idle_timeout=30)
            got_up, got_down, _, _ = await asyncio.gather(
                far[0].read(),
                bottle[0].read(),
                send_all(bottle[1], up_data),
                send_all(far[1], down_data),
            )
            assert hashlib.sha256(got_up).digest() == hashlib.sha256(up_data).digest()
            assert hashlib.sha256(got_down).digest() == hashlib.sha256(down_data).digest()
            assert await relaying == (len(up_data), len(down_data))

    run(test)
    assert (splice_calls[0] > 0) == tunnel.splice_available()  # the path under test was taken


def test_half_close_lets_the_answer_come_back(
    tmp_path: Path, splice_calls: list[int], run: Runner
) -> None:
    async def test() -> None:
        async with connected(tmp_path) as (bottle, client, upstream, far):
            relaying = relay_task(client, upstream, idle_timeout=30)
            bottle[1].write(b"question")
            bottle[1].write_eof()
            assert await far[0].read() == b"question"  # EOF reached the upstream
            far[1].write(b"answer after the client's EOF")
            far[1].write_eof()
            assert await bottle[0].read() == b"answer after the client's EOF"
            assert await relaying == (8, 29)

    run(test)


def test_bytes_already_read_go_first_and_in_order(
    tmp_path: Path, splice_calls: list[int], run: Runner
) -> None:
    async def test() -> None:
        async with connected(tmp_path) as (bottle, client, upstream, far):
            bottle[1].write(b"2-buffered-up|")
            far[1].write(b"banner-from-server|")
            await asyncio.sleep(0.1)  # both streams' transports read these into their buffers
            relaying = relay_task(client, upstream, idle_timeout=30, first_up=b"1-behind-head|")
            bottle[1].write(b"3-later-up")
            bottle[1].write_eof()
            far[1].write(b"later-down")
            far[1].write_eof()
            assert await far[0].read() == b"1-behind-head|2-buffered-up|3-later-up"
            assert await bottle[0].read() == b"banner-from-server|later-down"
            assert await relaying == (38, 29)

    run(test)


def test_idle_tunnel_is_closed(tmp_path: Path, splice_calls: list[int], run: Runner) -> None:
    async def test() -> None:
        async with connected(tmp_path) as (bottle, client, upstream, far):
            started = time.monotonic()
            relaying = relay_task(client, upstream, idle_timeout=0.3)
            bottle[1].write(b"one")
            assert await far[0].readexactly(3) == b"one"
            assert await relaying == (3, 0)
            assert 0.3 <= time.monotonic() - started < 5
            assert await bottle[0].read() == b""  # the bottle side sees the tunnel end

    run(test)


def test_reset_upstream_ends_the_tunnel(
    tmp_path: Path, splice_calls: list[int], run: Runner
) -> None:
    async def test() -> None:
        async with connected(tmp_path) as (bottle, client, upstream, far):
            relaying = relay_task(client, upstream, idle_timeout=30)
            raw = far[1].get_extra_info("socket")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            far[1].transport.abort()  # RST, not FIN
            for _ in range(50):  # the bottle keeps sending into a dead tunnel
                if relaying.done():
                    break
                bottle[1].write(b"x" * 65536)
                await asyncio.sleep(0.02)
            await asyncio.wait_for(relaying, 5)
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await bottle[0].readexactly(1)

    run(test)
