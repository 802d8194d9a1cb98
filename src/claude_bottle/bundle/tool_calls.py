"""Which Claude Code tool call made a request: advisory attribution from the bottle's hooks.

The bottle's seeded Claude Code settings run `tool_hook.py` before and after every tool
call (`PreToolUse`, `PostToolUse`, `PostToolUseFailure`). It tells the bundle, on its own
socket (`hook.sock`, reached through the relay like every other exit), the tool's name,
its `tool_use_id` and a short summary. The bundle records each as an audit event of kind
`tool` and tags every egress, gateway and git event made while tool calls run with
their ids (`detail.tool_use`).

All of it comes from inside the bottle, where a prompt injection may write anything, so:

- it is advisory: labelled so in every tag, and it never changes a policy decision;
- the channel carries only these records: one JSON line of at most `MAX_RECORD` bytes
  with exactly the fields below, nothing else (no control operation exists on it);
- it is bounded: `MAX_CONNECTIONS` connections at once, `RATE` records a second (burst
  `BURST`), `MAX_RUNNING` tool calls tracked; what is malformed, oversize or over the
  rate is dropped and counted, and the drops are audited at most once per
  `DROP_REPORT_SECONDS`;
- summaries are cut to `SUMMARY_MAX` characters and redacted (DLP findings, URL query
  values) before they are recorded.

Parallel tool calls: Claude Code may run several at once (read-only tools, subagents).
A request cannot say which of them made it, so an event is tagged with every tool call
running when it was made, oldest first; `logs --tool ID` lists each event whose set
names ID. Claude Code's own API calls made meanwhile are tagged too: "made while" is
what the tag means, not "made by".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from claude_bottle.bundle.audit_text import printable, redact_path

if TYPE_CHECKING:
    from claude_bottle.policy.dlp import Scanner

MAX_RECORD = 2048  # bytes of one hook record line
SUMMARY_MAX = 200  # characters of a summary kept
MAX_RUNNING = 32  # tool calls tracked at once; the oldest is forgotten past it
RUNNING_EXPIRY = 3600.0  # a call whose end was never reported is forgotten after this
MAX_CONNECTIONS = 8  # hook connections served at once; more are closed at once
READ_SECONDS = 2.0  # a hook connection must send its line within this
RATE = 20.0  # records a second, sustained ...
BURST = 60.0  # ... after a burst of this many
DROP_REPORT_SECONDS = 10.0
TAGGED_KINDS = frozenset({"egress", "gateway", "git"})
ADVISORY = "advisory (from the bottle's Claude Code hooks)"

EVENTS = {"PreToolUse": "start", "PostToolUse": "end", "PostToolUseFailure": "end"}
_FIELDS = frozenset({"event", "tool", "id", "summary"})
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_TOOL_USE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_URL_TOOLS = frozenset({"WebFetch"})

Recorder = Callable[..., Any]


class HookRecord(NamedTuple):
    """One validated record from the bottle's hook."""

    event: str  # a key of EVENTS
    tool: str
    id: str
    summary: str


class ToolCall(NamedTuple):
    id: str
    tool: str
    summary: str  # redacted
    started: float  # monotonic


def parse_record(line: bytes) -> HookRecord | None:
    """The record in `line`, or None when it is anything but exactly a hook record."""
    if len(line) > MAX_RECORD:
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or set(value) != _FIELDS:
        return None
    event, tool, call_id, summary = (value[k] for k in ("event", "tool", "id", "summary"))
    if not (isinstance(event, str) and event in EVENTS):
        return None
    if not (isinstance(tool, str) and _TOOL_NAME.fullmatch(tool)):
        return None
    if not (isinstance(call_id, str) and _TOOL_USE_ID.fullmatch(call_id)):
        return None
    if not isinstance(summary, str):
        return None
    return HookRecord(event, tool, call_id, summary[: SUMMARY_MAX * 2])


def redact_summary(tool: str, summary: str, scanner: Scanner | None) -> str:
    """`summary` cut to SUMMARY_MAX characters with secrets removed: a URL's query values
    and credentials (`redact_path`), and every DLP finding (when DLP is on)."""
    text = summary[:SUMMARY_MAX]
    if tool in _URL_TOOLS:
        text = redact_path(text)
    if scanner is not None:
        data = text.encode("utf-8", "surrogatepass")
        findings = sorted(scanner.scan(data, "tool-summary"), key=lambda f: f.start)
        kept, at = [], 0
        for finding in findings:
            if finding.start < at:
                continue
            kept.append(data[at : finding.start].decode("utf-8", "replace"))
            kept.append(f"[REDACTED:{finding.pattern}]")
            at = finding.end
        kept.append(data[at:].decode("utf-8", "replace"))
        text = "".join(kept)
    return printable(text)[: SUMMARY_MAX + 64]


class _Bucket:
    """A token bucket: `RATE` a second, at most `BURST` saved up."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ToolCalls:
    """The tool calls running in the bottle, as its hooks report them, and the hook
    channel that reports them."""

    def __init__(self, record: Recorder, scanner: Callable[[], Scanner | None]) -> None:
        self.record = record
        self.scanner = scanner  # the DLP scanner, once the bundle has one
        self.running: dict[str, ToolCall] = {}
        self.accepted = 0
        self.dropped = 0
        self._bucket = _Bucket(RATE, BURST)
        self.connections = 0  # hook connections being served
        self._dropped_reported = 0
        self._reported_at = -DROP_REPORT_SECONDS

    # --- what the rest of the bundle asks -------------------------------------------

    def current(self) -> list[ToolCall]:
        """The tool calls running now, oldest first."""
        now = time.monotonic()
        for call_id in [c.id for c in self.running.values() if now - c.started > RUNNING_EXPIRY]:
            del self.running[call_id]
        return list(self.running.values())

    def tag(self, kind: str, detail: Mapping[str, object] | None) -> Mapping[str, object] | None:
        """`detail` of an event of `kind`, with the running tool calls' ids added."""
        if kind not in TAGGED_KINDS or not self.running:
            return detail
        ids = [call.id for call in self.current()]
        if not ids:
            return detail
        return {**(detail or {}), "tool_use": {"ids": ids, "attribution": ADVISORY}}

    def describe(self) -> str:
        """The latest running tool call as one line, e.g. `Bash: npm install`; "" if none."""
        calls = self.current()
        if not calls:
            return ""
        call = calls[-1]
        more = f" (+{len(calls) - 1} more)" if len(calls) > 1 else ""
        return f"{call.tool}: {call.summary}{more}" if call.summary else f"{call.tool}{more}"

    # --- the hook channel -------------------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One hook connection: one record line in, `ok` or `dropped` out."""
        if self.connections >= MAX_CONNECTIONS:
            self.drop("busy")
            writer.close()
            return
        self.connections += 1
        try:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_SECONDS)
                accepted = self.accept(line[:-1])
            except TimeoutError:
                accepted = False
                self.drop("timeout")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):  # no line, or too long
                accepted = False
                self.drop("malformed")
            except ConnectionError:
                return
            with contextlib.suppress(ConnectionError):
                writer.write(b"ok\n" if accepted else b"dropped\n")
                await writer.drain()
        finally:
            self.connections -= 1
            writer.close()

    def accept(self, line: bytes) -> bool:
        """Act on one record line; False (and counted) when it is dropped."""
        if not self._bucket.take():
            self.drop("rate")
            return False
        hook = parse_record(line)
        if hook is None:
            self.drop("malformed")
            return False
        self.accepted += 1
        summary = redact_summary(hook.tool, hook.summary, self.scanner())
        if EVENTS[hook.event] == "start":
            self.running.pop(hook.id, None)
            self.running[hook.id] = ToolCall(hook.id, hook.tool, summary, time.monotonic())
            while len(self.running) > MAX_RUNNING:
                del self.running[next(iter(self.running))]
        else:
            started = self.running.pop(hook.id, None)
            if started is not None:
                summary = started.summary
        self.record(
            "tool",
            EVENTS[hook.event],
            rule=hook.event,
            detail={"id": hook.id, "tool": hook.tool, "summary": summary, "attribution": ADVISORY},
        )
        return True

    def drop(self, reason: str) -> None:
        """Count a dropped record; audit the drops at most once per DROP_REPORT_SECONDS."""
        self.dropped += 1
        now = time.monotonic()
        if now - self._reported_at < DROP_REPORT_SECONDS:
            return
        self._reported_at = now
        self.record(
            "tool",
            "dropped",
            rule="hook:dropped",
            detail={"reason": reason, "dropped": self.dropped - self._dropped_reported},
        )
        self._dropped_reported = self.dropped


def concerns(record: Mapping[str, object], call_id: str) -> bool:
    """Whether an audit record is about tool call `call_id`: its own `tool` records, and
    every event made while it ran (`logs NAME --tool ID`)."""
    detail = record.get("detail")
    if not isinstance(detail, Mapping):
        return False
    if record.get("kind") == "tool":
        return detail.get("id") == call_id
    tagged = detail.get("tool_use")
    ids = tagged.get("ids") if isinstance(tagged, Mapping) else None
    return isinstance(ids, list) and call_id in ids


def valid_id(text: str) -> bool:
    return _TOOL_USE_ID.fullmatch(text) is not None
