"""The control socket's live event stream: bounded per subscriber, a stuck viewer is
dropped and never slows the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.bundle import control
from claude_bottle.bundle.events import EventStream, encode_event
from claude_bottle.bundle.settings import Pin
from tests.integration.upstream import RecordingHTTPServer
from tests.unit.bundle_settings import bundle_settings
from tests.unit.test_proxy import RunningBundle


def test_every_subscriber_gets_each_event_in_order() -> None:
    async def scenario() -> None:
        stream = EventStream("b")
        first, second = stream.subscribe(), stream.subscribe()
        assert first is not None and second is not None
        for n in range(3):
            stream.publish("egress", "allow", {"host": f"h{n}.test", "port": 80})
        for subscriber in (first, second):
            hosts = [json.loads(subscriber.queue.get_nowait())["host"] for _ in range(3)]
            assert hosts == ["h0.test", "h1.test", "h2.test"]

    asyncio.run(scenario())


def test_a_subscriber_that_falls_behind_is_dropped_and_the_others_keep_theirs() -> None:
    async def scenario() -> None:
        stream = EventStream("b", capacity=4)
        stuck, reading = stream.subscribe(), stream.subscribe()
        assert stuck is not None and reading is not None
        for n in range(10):
            stream.publish("egress", "allow", {"host": "h.test", "port": n})
            reading.queue.get_nowait()  # this one keeps up
        assert stuck.dropped and not reading.dropped
        assert stream.subscribers == [reading]
        assert stream.dropped == 1
        assert stuck.queue.qsize() <= 4  # bounded: nothing more was queued for it

    asyncio.run(scenario())


def test_subscribers_are_capped() -> None:
    stream = EventStream("b", max_subscribers=2)
    assert stream.subscribe() is not None and stream.subscribe() is not None
    assert stream.subscribe() is None


def test_events_are_bounded_ascii_with_redacted_paths() -> None:
    line = encode_event(
        "b",
        "egress",
        "allow",
        {
            "host": "evil\x1b[2J.test",
            "path": "/x?token=s3cr3tvalue",
            "detail": {"blob": "A" * 50_000},
        },
    )
    assert line.endswith(b"\n") and len(line) <= 8 * 1024 + 1
    assert line.isascii() and b"\x1b" not in line
    event = json.loads(line)
    assert "s3cr3tvalue" not in event["path"]
    assert event["detail"] == {"cut": True}


@pytest.fixture
def upstream() -> Iterator[RecordingHTTPServer]:
    server = RecordingHTTPServer()
    yield server
    server.close()


def _subscribe(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(path)
    sock.sendall(b'{"op": "subscribe"}\n')
    return sock


def test_a_real_bundle_streams_events_and_drops_a_viewer_that_never_reads(
    tmp_path: Path, upstream: RecordingHTTPServer
) -> None:
    settings = bundle_settings(
        tmp_path,
        dlp_enabled=False,
        pins=(Pin("allowed.test", "127.0.0.1", upstream.port),),
    )
    bundle = RunningBundle(settings)
    assert bundle.bundle is not None
    bundle.bundle.events.capacity = 64  # a small queue: it fills after fewer requests
    try:
        reader = _subscribe(settings.control_socket)
        stuck = _subscribe(settings.control_socket)  # never reads a byte
        events = reader.makefile("rb")
        assert json.loads(events.readline())["ok"] is True
        reply = bundle.request(
            b"GET http://allowed.test/one HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
        )
        assert reply.startswith(b"HTTP/1.1 200")
        seen = json.loads(events.readline())
        assert (seen["kind"], seen["decision"], seen["host"], seen["path"]) == (
            "egress",
            "allow",
            "allowed.test",
            "/one",
        )
        # Requests keep flowing, each answered, while the stuck viewer's queue fills up
        # (refusals: answered by the bundle itself, so the loop is quick).
        path = "/" + "p" * 200
        for n in range(3000):
            refused = bundle.request(
                f"GET http://denied{n}.test{path} HTTP/1.1\r\nHost: denied{n}.test\r\n\r\n".encode()
            )
            assert refused.startswith(b"HTTP/1.1 403")
            if n % 100 == 0:  # the reading viewer keeps up
                reader.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while reader.recv(1 << 20):
                        pass
                reader.setblocking(True)
        stats = control.call(Path(settings.control_socket), "stats")
        assert stats["subscribers_dropped"] == 1
        stuck.settimeout(5)
        deadline = time.monotonic() + 10
        received = b""
        while True:  # what was in flight, then the end: its connection was aborted
            assert time.monotonic() < deadline
            try:
                chunk = stuck.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        assert len(received) < 3000 * 300  # not everything: it was cut off
        reader.close()
        stuck.close()
    finally:
        bundle.stop()
