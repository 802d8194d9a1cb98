"""Requests held for a person's decision (`[egress] mode = "ask"`).

A request to a host the allowlist does not name waits here until someone allows the
host (`claude-bottle allow`, or `a` in `supervise`), denies it (`deny`, `d`), or
`[egress] ask_timeout` seconds pass. Every request to one host is one pending item.

What the bottle can do with this is bounded: at most `capacity` requests are held at
once (more are answered `503 ask-full` at once), and a held request gives its slot in
the bundle's shared client pool back while it waits, so a bottle holding hundreds of
requests cannot starve its API gateway or its allowed traffic. A denied host stays
denied for the bundle's life (bounded set). When the bundle stops (its CLI died, or
`stop`), every held request is answered `503 ask-unavailable` rather than cut.

Each decision is an audit record (kind `ask`) naming who took it. No I/O here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, NamedTuple

from claude_bottle.bundle.audit_text import printable, redact_path
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.policy.allowlist import normalize_host

DEFAULT_ASK_TIMEOUT = 300.0
MAX_HELD = 256  # requests held at once, per bottle
MAX_DENIED = 4096  # hosts remembered as denied
MAX_LINE = 300  # characters of a first request line kept for display
DECIDERS = frozenset({"supervise", "allow command", "deny command"})

REQUEST_LINE: ContextVar[tuple[str, str]] = ContextVar("held_request_line", default=("", ""))
"""(method, target) of the request being admitted, set by the proxy; shown as the pending
item's first request line (redacted). A CONNECT shows only its authority: what goes
inside the tunnel is not visible before the tunnel is allowed."""

Recorder = Callable[..., Any]


class PendingItem(NamedTuple):
    """One host with held requests, as `pending` lists it."""

    host: str
    port: int
    waiting: int  # requests held
    since: float  # wall-clock time the first of them arrived
    first_line: str  # method and redacted target of the first, "" when not visible
    tool_call: str  # the tool call running when the first arrived (advisory), "" if none


class _Host:
    def __init__(self, port: int, first_line: str, tool_call: str) -> None:
        self.port = port
        self.since = time.time()
        self.first_line = first_line
        self.tool_call = tool_call
        self.waiters: list[asyncio.Future[str]] = []


def decider(text: object) -> str:
    """Who decided, as a control request names it: one of DECIDERS, else `control socket`."""
    return text if isinstance(text, str) and text in DECIDERS else "control socket"


class HeldRequests:
    def __init__(
        self,
        bottle: str,
        record: Recorder,
        *,
        timeout: float = DEFAULT_ASK_TIMEOUT,
        capacity: int = MAX_HELD,
        shared_slots: asyncio.Semaphore | None = None,
        tool_call: Callable[[], str] = str,
    ) -> None:
        self.bottle = bottle
        self.record = record
        self.timeout = timeout
        self.capacity = capacity
        self._shared_slots = shared_slots
        self._tool_call = tool_call  # describes the running tool call (`tool_calls`)
        self._hosts: dict[str, _Host] = {}
        self.denied: dict[str, None] = {}
        self.closed = False
        self.tasks: set[asyncio.Task[Any]] = set()  # the clients waiting, for `close`

    @property
    def held(self) -> int:
        return sum(len(entry.waiters) for entry in self._hosts.values())

    def pending(self) -> list[PendingItem]:
        return [
            PendingItem(
                host, entry.port, len(entry.waiters), entry.since, entry.first_line, entry.tool_call
            )
            for host, entry in self._hosts.items()
        ]

    async def hold(self, host: str, port: int) -> None:
        """Wait for a decision on `host`; return when it is allowed, else raise Refusal."""
        name = normalize_host(host)  # the gate checked it parses
        hint = f"claude-bottle allow {self.bottle} {name}"
        if name in self.denied:
            raise Refusal(403, "ask-denied", f"{name} was denied for this bottle", hint)
        if self.closed:
            raise Refusal(503, "ask-unavailable", "the bundle is stopping")
        if self.held >= self.capacity:
            raise Refusal(
                503,
                "ask-full",
                f"{self.capacity} requests already wait for a decision",
                hint,
            )
        entry = self._hosts.get(name)
        if entry is None:
            entry = self._hosts[name] = _Host(port, _first_line(), self._tool_call()[:MAX_LINE])
            self.record(
                "egress", "pending", rule="ask", host=name, port=port, detail={"hint": hint}
            )
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        entry.waiters.append(waiter)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            outcome = await self._wait(waiter)
        except asyncio.CancelledError:  # the bundle ends its clients
            self._forget(name, waiter)
            raise
        finally:
            self.tasks.discard(task)
        if outcome == "allow":
            return
        if outcome == "timeout":
            self._forget(name, waiter)
            self.record(
                "ask", "timeout", rule="ask-timeout", host=name, port=port, detail={"by": "timeout"}
            )
            raise Refusal(
                403, "ask-timeout", f"nobody decided within {self.timeout:g} seconds", hint
            )
        if outcome == "deny":
            raise Refusal(403, "ask-denied", f"{name} was denied for this bottle", hint)
        raise Refusal(503, "ask-unavailable", "the bundle stopped before anyone decided")

    async def _wait(self, waiter: asyncio.Future[str]) -> str:
        """The decision; meanwhile this request's shared client slot is given back."""
        slots = self._shared_slots
        if slots is not None:
            slots.release()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), self.timeout)
        except TimeoutError:
            return "timeout"
        finally:
            if slots is not None:
                await slots.acquire()

    def _forget(self, name: str, waiter: asyncio.Future[str]) -> None:
        entry = self._hosts.get(name)
        if entry is None:
            return
        with contextlib.suppress(ValueError):
            entry.waiters.remove(waiter)
        if not entry.waiters:
            del self._hosts[name]

    def release(self, allowed: Callable[[str], bool], by: str) -> int:
        """Let through every held request whose host `allowed` now passes; how many."""
        count = 0
        for name in [name for name in self._hosts if allowed(name)]:
            entry = self._hosts.pop(name)
            self.denied.pop(name, None)
            count += self._settle(entry, "allow")
            self.record(
                "ask",
                "allow",
                rule="ask-allowed",
                host=name,
                port=entry.port,
                detail={"by": by, "requests": len(entry.waiters)},
            )
        return count

    def deny(self, host: str, by: str) -> tuple[str, int]:
        """Refuse `host` now and for the bundle's life: (its normalised name, how many
        held requests were answered). HostError when it is no host name."""
        name = normalize_host(host)
        self.denied.pop(name, None)
        self.denied[name] = None
        while len(self.denied) > MAX_DENIED:
            del self.denied[next(iter(self.denied))]
        entry = self._hosts.pop(name, None)
        count = 0 if entry is None else self._settle(entry, "deny")
        self.record(
            "ask",
            "deny",
            rule="ask-denied",
            host=name,
            port=0 if entry is None else entry.port,
            detail={"by": by, "requests": count},
        )
        return name, count

    def close(self) -> list[asyncio.Task[Any]]:
        """The bundle stops: answer every held request `503`. The clients that were
        waiting, for the bundle to let them write that answer before it ends them."""
        self.closed = True
        waiting = list(self.tasks)
        for entry in self._hosts.values():
            self._settle(entry, "closed")
        self._hosts.clear()
        return waiting

    @staticmethod
    def _settle(entry: _Host, outcome: str) -> int:
        count = 0
        for waiter in entry.waiters:
            if not waiter.done():
                waiter.set_result(outcome)
                count += 1
        return count


def _first_line() -> str:
    method, target = REQUEST_LINE.get()
    if not method:
        return ""
    shown = target if method == "CONNECT" else redact_path(target)
    line = printable(f"{method[:16]} {shown}")[:MAX_LINE]
    return line.encode("ascii", "backslashreplace").decode("ascii")[:MAX_LINE]
