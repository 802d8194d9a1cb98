"""The bundle's supervise service: the control-socket operations behind `pending`,
`allow`, `deny` and `supervise` (held requests and the live event stream).

The control socket is reachable only by the host user (it is never mounted into the
bottle), but what it returns comes from the bottle: host names and request lines are
bounded here and escaped by whoever displays them.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from claude_bottle.bundle import events
from claude_bottle.bundle.control import MAX_LINE
from claude_bottle.bundle.events import EventStream
from claude_bottle.bundle.held import HeldRequests, decider
from claude_bottle.policy.allowlist import HostError

if TYPE_CHECKING:
    from claude_bottle.bundle.gate import EgressGate

MAX_PENDING_LISTED = 50  # hosts one `pending` answer lists, oldest first
ANSWER_BYTES = MAX_LINE - 4096  # what one answer may take of the control socket's line
END_SECONDS = 1.0  # how long a stopping bundle lets held requests write their 503


class Supervision:
    def __init__(self, gate: EgressGate, held: HeldRequests, stream: EventStream) -> None:
        self.gate = gate
        self.held = held
        self.stream = stream

    def control(self, op: object, request: dict[str, Any]) -> dict[str, Any] | None:
        """The answer to a supervise operation, None when `op` is none of them."""
        if op == "allow":
            by = decider(request.get("by", "allow command"))
            try:
                pattern = self.gate.allow(str(request.get("host", "")), by)
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
            self.held.record("policy", "info", rule=f"allow:{pattern}", detail={"by": by})
            return {"ok": True, "pattern": pattern}
        if op == "deny":
            try:
                host, count = self.held.deny(
                    str(request.get("host", "")), decider(request.get("by", "deny command"))
                )
            except HostError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "host": host, "answered": count}
        if op == "pending":
            return self._pending()
        return None

    def _pending(self) -> dict[str, Any]:
        """The held hosts, oldest first, as many as fit in one control-socket line."""
        items = sorted(self.held.pending(), key=lambda item: item.since)
        listed = [item._asdict() for item in items[:MAX_PENDING_LISTED]]
        while True:
            answer = {
                "ok": True,
                "mode": self.gate.mode,
                "pending": listed,
                "more": len(items) - len(listed),
                "denied": list(self.held.denied)[-MAX_PENDING_LISTED:],
            }
            if len(json.dumps(answer)) <= ANSWER_BYTES or not listed:
                return answer
            listed = listed[:-1]

    async def subscribe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Stream events to this connection until it goes or falls behind."""
        subscriber = self.stream.subscribe()
        if subscriber is None:
            writer.write(b'{"ok": false, "error": "too many subscribers"}\n')
            await writer.drain()
            return
        writer.write(json.dumps({"ok": True, "bottle": self.stream.bottle}).encode() + b"\n")
        await events.serve(self.stream, subscriber, reader, writer)

    async def stop(self) -> None:
        """Answer every held request (503) and give them a moment to say so."""
        waiting = self.held.close()
        if waiting:
            await asyncio.wait(waiting, timeout=END_SECONDS)
        self.stream.close()
