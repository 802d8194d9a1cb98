"""Live audit events for the control socket's subscribers (`claude-bottle supervise`).

Every record the bundle makes is also offered, as one JSON line, to each subscriber's
own bounded queue. Publishing never waits: a subscriber whose queue is full (a viewer
that stopped reading, or reads slower than the bottle makes requests) is dropped on the
spot and its connection aborted, so no viewer can slow the proxy or grow the bundle's
memory. The audit log stays the record; this stream is a best-effort view of it.

Sans-IO but for `serve`, which pumps one subscriber's queue into its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

from claude_bottle.bundle.audit_text import redact_path

QUEUE_LINES = 1024  # events a subscriber may lag behind before it is dropped
MAX_SUBSCRIBERS = 16
MAX_EVENT_BYTES = 8 * 1024  # a bigger event loses its detail; the audit log keeps it
WRITE_TIMEOUT = 10.0  # a subscriber whose socket stays full this long is dropped too
_TEXT_FIELDS = ("kind", "decision", "rule", "method", "host")


class Subscriber:
    """One viewer's queue of encoded event lines; `dropped` once it fell behind."""

    def __init__(self, capacity: int) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(capacity)
        self.dropped = False
        self.on_drop: list[Any] = []  # callables run once, when it is dropped

    def offer(self, line: bytes) -> bool:
        """Queue `line`; False (and dropped) when the queue is full."""
        if self.dropped:
            return False
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            self.drop()
            return False
        return True

    def drop(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(b"")  # wakes `serve` if it waits for a line
        for callback in self.on_drop:
            callback()


class EventStream:
    """Fans the bundle's records out to at most `max_subscribers` bounded queues."""

    def __init__(
        self,
        bottle: str,
        *,
        capacity: int = QUEUE_LINES,
        max_subscribers: int = MAX_SUBSCRIBERS,
    ) -> None:
        self.bottle = bottle
        self.capacity = capacity
        self._max = max_subscribers
        self.subscribers: list[Subscriber] = []
        self.dropped = 0  # subscribers dropped for falling behind, for `stats`

    def subscribe(self) -> Subscriber | None:
        """A new subscriber, or None when there are already too many."""
        if len(self.subscribers) >= self._max:
            return None
        subscriber = Subscriber(self.capacity)
        self.subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with contextlib.suppress(ValueError):
            self.subscribers.remove(subscriber)

    def publish(self, kind: str, decision: str, fields: Mapping[str, Any]) -> None:
        """Offer one record to every subscriber; never blocks, never raises."""
        if not self.subscribers:
            return  # the usual case: nobody watches, nothing is encoded
        line = encode_event(self.bottle, kind, decision, fields)
        for subscriber in list(self.subscribers):
            if not subscriber.offer(line):
                self.dropped += 1
                self.unsubscribe(subscriber)

    def close(self) -> None:
        for subscriber in list(self.subscribers):
            subscriber.drop()
        self.subscribers.clear()


def encode_event(bottle: str, kind: str, decision: str, fields: Mapping[str, Any]) -> bytes:
    """One JSON line: the record's fields as the audit log would hold them (the path
    redacted, text bounded), ASCII-only so control characters travel escaped."""
    event: dict[str, Any] = {"ts": round(time.time(), 3), "bottle": bottle}
    event["kind"], event["decision"] = str(kind)[:64], str(decision)[:64]
    for name in _TEXT_FIELDS[2:]:
        event[name] = str(fields.get(name, ""))[:512]
    event["port"] = _int(fields.get("port"))
    event["path"] = redact_path(str(fields.get("path", "")))
    event["bytes_up"] = _int(fields.get("bytes_up"))
    event["bytes_down"] = _int(fields.get("bytes_down"))
    detail = fields.get("detail")
    if isinstance(detail, Mapping):
        event["detail"] = dict(detail)
    line = json.dumps(event, ensure_ascii=True, default=str).encode()
    if len(line) > MAX_EVENT_BYTES:
        event["detail"] = {"cut": True}
        line = json.dumps(event, ensure_ascii=True, default=str).encode()[:MAX_EVENT_BYTES]
    return line + b"\n"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def serve(
    stream: EventStream,
    subscriber: Subscriber,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Write the subscriber's events to its socket until it goes or is dropped."""

    def abort() -> None:
        # A viewer that stopped reading: its socket buffer is full and a pending drain
        # would wait forever. Aborting ends that drain at once.
        writer.transport.abort()

    async def until_gone() -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):  # a subscriber has nothing more to say
                pass
        subscriber.drop()

    subscriber.on_drop.append(abort)
    watcher = asyncio.create_task(until_gone())
    try:
        while not subscriber.dropped:
            line = await subscriber.queue.get()
            if subscriber.dropped:
                break
            writer.write(line)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
    except ConnectionError:
        pass
    except TimeoutError:
        stream.dropped += 1
    finally:
        watcher.cancel()
        subscriber.drop()
        stream.unsubscribe(subscriber)
