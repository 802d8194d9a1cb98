"""What `supervise` shows, gathered off the UI thread: which bottles run, their stats and
held requests (control-socket calls, once a second), and their live events (one
subscription per bottle, pushed as they arrive; no log file is re-read).

Everything here is plain data; the view (`tui.app`) only draws it. Lines from a bundle
are bounded (MAX_EVENT_LINE) and parsed as JSON, never interpreted otherwise.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from claude_bottle import paths
from claude_bottle.backend import records as bottle_records
from claude_bottle.backend.base import StoredBottle
from claude_bottle.cli.supervise_commands import Pending, pending_of, running

MAX_EVENT_LINE = 16 * 1024
LOG_TAIL = 64 * 1024  # bytes of a bottle's audit log read once, when the view finds it
EVENTS_KEPT = 200  # per bottle, for the events pane
WINDOW = 60.0  # seconds the per-bottle counters cover
ALLOWED = frozenset({"allow", "audit-allow"})
REFUSED = frozenset({"deny", "error"})


class Event(NamedTuple):
    ts: float
    kind: str
    decision: str
    rule: str
    method: str
    host: str
    port: int
    path: str
    detail: str  # who decided, a status: short text from the event's detail


class BottleRow(NamedTuple):
    name: str
    backend: str
    age: str
    state: str
    tokens: int | None
    budget: int | None
    allowed: int  # in the last WINDOW seconds
    refused: int
    held: int
    bytes_out: int


def parse_event(line: bytes) -> Event | None:
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict) or "kind" not in raw:
        return None
    detail = raw.get("detail")
    said = ""
    if isinstance(detail, dict):
        said = " ".join(
            f"{key}={detail[key]}"
            for key in ("by", "status", "reason", "tool", "summary")  # tool: a tool call's
            if key in detail
        )
    port = raw.get("port")
    return Event(
        _timestamp(raw.get("ts")),
        str(raw.get("kind", ""))[:64],
        str(raw.get("decision", ""))[:64],
        str(raw.get("rule", ""))[:200],
        str(raw.get("method", ""))[:16],
        str(raw.get("host", ""))[:512],
        port if isinstance(port, int) and not isinstance(port, bool) else 0,
        str(raw.get("path", ""))[:300],
        said[:300],
    )


def _timestamp(ts: object) -> float:
    """A stream event's epoch seconds, or an audit record's ISO time."""
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return float(ts)
    if isinstance(ts, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(ts).timestamp()
    return time.time()


def recent_records(log: Path, before: float, size: int = LOG_TAIL) -> list[Event]:
    """The events a bottle recorded before `before` (its log's last `size` bytes), read
    once when its subscription starts: what happened before the view was watching."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - size))
            tail = handle.read(size)
    except OSError:
        return []
    lines = tail.split(b"\n")[1:-1] if len(tail) == size else tail.split(b"\n")[:-1]
    events = [event for line in lines if (event := parse_event(line)) is not None]
    return [event for event in events if event.ts < before][-EVENTS_KEPT:]


class BottleActivity:
    """The recent events of one bottle and its last-minute counters."""

    def __init__(self) -> None:
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._decisions: deque[tuple[float, str]] = deque(maxlen=100_000)

    def add(self, event: Event) -> None:
        self.events.append(event)
        if event.kind in ("egress", "gateway"):
            self._decisions.append((event.ts, event.decision))

    def counts(self) -> tuple[int, int, int]:
        cutoff = time.time() - WINDOW
        while self._decisions and self._decisions[0][0] < cutoff:
            self._decisions.popleft()
        recent = [decision for ts, decision in self._decisions if ts >= cutoff]
        allowed = sum(1 for d in recent if d in ALLOWED)
        refused = sum(1 for d in recent if d in REFUSED)
        held = sum(1 for d in recent if d == "pending")
        return allowed, refused, held


class Subscription(threading.Thread):
    """Reads one bundle's event stream; `deliver(name, events)` gets each batch."""

    def __init__(
        self, name: str, control_socket: str, deliver: Callable[[str, list[Event]], None]
    ) -> None:
        super().__init__(name=f"supervise-{name}", daemon=True)
        self.bottle = name
        self.control_socket = control_socket
        self.deliver = deliver
        self.stopped = threading.Event()
        self._sock: socket.socket | None = None

    def run(self) -> None:
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
        ):
            self._sock = sock
            sock.settimeout(5)
            sock.connect(self.control_socket)
            sock.sendall(b'{"op": "subscribe"}\n')
            sock.settimeout(None)
            self._pump(sock)
        self.stopped.set()

    def _pump(self, sock: socket.socket) -> None:
        buffer = b""
        first = True
        started = time.time()
        seeded = False
        while not self.stopped.is_set():
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > MAX_EVENT_LINE:
                return  # not what a bundle sends
            if first and lines:
                lines, first = lines[1:], False  # the {"ok": true} greeting
            if not first and not seeded:  # subscribed: what came before is in the log
                seeded = True
                earlier = recent_records(paths.state_dir(self.bottle) / "audit.jsonl", started)
                if earlier:
                    self.deliver(self.bottle, earlier)
            batch = [event for line in lines if (event := parse_event(line)) is not None]
            if batch:
                self.deliver(self.bottle, batch)

    def stop(self) -> None:
        self.stopped.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)


class Snapshot(NamedTuple):
    rows: list[BottleRow]
    pending: list[Pending]


class Feed:
    """Keeps a subscription to each running bottle (of `names`, or all) and builds
    snapshots of their state for the view."""

    def __init__(self, names: Iterable[str], deliver: Callable[[str, list[Event]], None]) -> None:
        self.names = frozenset(names)
        self.deliver = deliver
        self.activity: dict[str, BottleActivity] = {}
        self.subscriptions: dict[str, Subscription] = {}

    def add_events(self, name: str, events: list[Event]) -> None:
        """On the UI thread: keep what a subscription delivered."""
        activity = self.activity.setdefault(name, BottleActivity())
        for event in events:
            # Once subscribed again, the log's tail repeats what was already shown.
            if activity.events and event.ts < activity.events[-1].ts:
                continue
            activity.add(event)

    def live_records(self) -> list[StoredBottle]:
        return [r for r in running() if not self.names or r.bottle.name in self.names]

    def poll(self) -> tuple[list[StoredBottle], dict[str, dict[str, Any]], list[Pending]]:
        """Off the UI thread: the running bottles, their stats and held requests; starts
        and ends subscriptions as bottles come and go."""
        from claude_bottle.bundle import control
        from claude_bottle.errors import BottleError

        records = self.live_records()
        live = {record.bottle.name: record for record in records}
        for name in list(self.subscriptions):
            subscription = self.subscriptions[name]
            if name not in live or subscription.stopped.is_set():
                subscription.stop()
                del self.subscriptions[name]
        stats: dict[str, dict[str, Any]] = {}
        pending: list[Pending] = []
        for name, record in live.items():
            socket_path = record.bottle.control_socket
            if name not in self.subscriptions and socket_path:
                subscription = Subscription(name, socket_path, self.deliver)
                self.subscriptions[name] = subscription
                subscription.start()
            with contextlib.suppress(BottleError):
                stats[name] = control.call(Path(socket_path), "stats", timeout=1.0)
            pending += pending_of(record)
        return records, stats, pending

    def rows(
        self, records: list[StoredBottle], stats: dict[str, dict[str, Any]]
    ) -> list[BottleRow]:
        rows = []
        for record in records:
            name = record.bottle.name
            numbers = stats.get(name, {})
            tokens = None
            if "input_tokens" in numbers:
                tokens = _int(numbers.get("input_tokens")) + _int(numbers.get("output_tokens"))
            budget = numbers.get("max_tokens_total")
            allowed, refused, held = self.activity.setdefault(name, BottleActivity()).counts()
            rows.append(
                BottleRow(
                    name,
                    record.bottle.backend,
                    bottle_records.age(record),
                    bottle_records.live_state(record) if numbers else "no answer",
                    tokens,
                    budget if isinstance(budget, int) else None,
                    allowed,
                    refused,
                    max(held, _int(numbers.get("held"))),
                    _int(numbers.get("bytes_up")),
                )
            )
        return rows

    def close(self) -> None:
        for subscription in self.subscriptions.values():
            subscription.stop()


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
