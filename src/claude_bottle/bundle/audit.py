"""The bottle's audit log: append-only JSON Lines with a SHA-256 hash chain (SPEC: Audit log).

One record per line, fields in this order::

    ts, bottle, seq, kind, decision, rule, method, host, port, path,
    bytes_up, bytes_down, [detail], prev, hash

`hash` is the SHA-256 (hex) of `canonical_json(record without "hash")`; `prev` is the
previous record's `hash` (`GENESIS` for the first). The bundle is the only writer. It
`submit`s records, which costs it microseconds; one writer thread builds them (in
submission order, timestamps taken at submission), appends them and fsyncs after each
batch (group commit: every record is fsync'd, one fsync covers a batch, batches are at
most BATCH_INTERVAL apart). `sync()` waits for the disk, `close()` drains the queue first, and
any failure of the writer (a failed write or fsync, an exhausted `AuditBudget`, or any
other exception, MemoryError included) fails closed: later submissions raise AuditError
and the owner is told. Paths are redacted (`redact_path`) before they are written, so
query values and token-looking path segments never reach the disk.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

from claude_bottle.bundle.audit_limits import AuditBudget, BudgetMeter, DiskReserve
from claude_bottle.errors import BottleError

GENESIS = "0" * 64

FIELDS = (
    "ts",
    "bottle",
    "seq",
    "kind",
    "decision",
    "rule",
    "method",
    "host",
    "port",
    "path",
    "bytes_up",
    "bytes_down",
)
"""Fields every record carries, in write order (then optional `detail`, `prev`, `hash`)."""

REQUIRED = (*FIELDS, "prev", "hash")

BATCH_INTERVAL = 0.005
"""Longest a submitted record waits to be written and fsync'd (unless `sync` is called)."""

_Item = tuple[float, tuple[Any, ...], Mapping[str, object] | None]
"""A submitted record: its time, the caller's fields, its detail (built by the writer)."""

MAX_PATH = 2048
"""Longest `path` written, "…" marker included."""

MAX_TEXT = 4096
"""Longest string written in any other field (and inside `detail`)."""

_MAX_PATH_INPUT = 8 * MAX_PATH  # look at no more than this much of a hostile path
_MAX_ITEMS = 1000  # per list/dict inside `detail`
_MAX_DEPTH = 8  # nesting inside `detail`
_ELLIPSIS = "…"
_REDACTED = "REDACTED"
_HEX64 = re.compile(r"[0-9a-f]{64}")

# Characters that must never reach a terminal or a log line raw: C0/C1 controls, DEL,
# lone surrogates (undecodable bytes), line/paragraph separators and bidi overrides.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_URL_HEAD = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*:)?//(?P<authority>[^/?#]*)")
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_\-+=.]{32,}")
_LETTER = re.compile(r"[A-Za-z]")
_DIGIT = re.compile(r"[0-9]")


class AuditError(BottleError):
    """The audit log cannot be written, or its chain cannot be resumed safely."""


_BUDGET_RECORD_ROOM = 4096  # the final over-budget record is written past the budget


class _DiskError(AuditError):
    """A write or fsync of the log failed (a full disk, an I/O error)."""


class VerifyResult(NamedTuple):  # not a dataclass: see bundle/settings.py
    """Outcome of `verify`: `bad_line` is 1-based; `problem` is "" when `ok`."""

    ok: bool
    records: int
    bad_line: int | None
    problem: str


# --------------------------------------------------------------------------- text helpers


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _escape_unsafe(text: str) -> str:
    """Replace control, separator, bidi and surrogate characters by visible escapes."""
    if text.isprintable():  # every character _UNSAFE matches is unprintable
        return text
    return _UNSAFE.sub(_escape, text)


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def _clean(text: str, limit: int = MAX_TEXT) -> str:
    """A string that is safe to encode as UTF-8 (surrogates escaped) and bounded in length."""
    if not text.isascii():  # the usual host, method and rule are, and cannot hold one
        text = _SURROGATE.sub(_escape, text)
    return _cap(text, limit)


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    try:
        return str(value)
    except Exception:
        return "<unprintable>"


def _jsonable(value: object, depth: int = 0) -> object:
    """`value` as plain JSON data that survives a dump/load round trip unchanged."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 256 else "<integer too large>"
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        return _clean(value)
    if depth >= _MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, Mapping):
        return {
            _clean(_as_text(k), 256): _jsonable(v, depth + 1)
            for k, v in list(value.items())[:_MAX_ITEMS]
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
    return _clean(_as_text(value))


# --------------------------------------------------------------------------- public helpers


# Made once: `json.dumps` with options builds a new encoder at every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_LINE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def canonical_json(record: Mapping[str, object]) -> bytes:
    """The bytes the hash is computed over: sorted keys, no spaces, UTF-8."""
    return _CANONICAL.encode(dict(record)).encode()


def _hash_of(record: Mapping[str, object]) -> str:
    return hashlib.sha256(
        canonical_json({k: v for k, v in record.items() if k != "hash"})
    ).hexdigest()


def _redact_token(match: re.Match[str]) -> str:
    run = match.group()
    if _LETTER.search(run) and _DIGIT.search(run):
        return _REDACTED
    return run


def _redact_tokens(text: str) -> str:
    """Replace long opaque runs (>= 32 chars, letters and digits mixed) by REDACTED.

    Runs stop at "/", so ordinary multi-segment paths are kept; each segment (or the
    token-looking part of one, e.g. after "%20") is judged on its own.
    """
    return _TOKEN_RUN.sub(_redact_token, text)


def _redact_query(query: str) -> str:
    params = []
    for param in query.split("&"):
        key, eq, value = param.partition("=")
        key = _redact_tokens(key)
        params.append(f"{key}={_REDACTED}" if eq and value else f"{key}{eq}")
    return "&".join(params)


def redact_path(path: str) -> str:
    """`path` (origin-form or absolute URL) with anything secret-looking removed.

    Every query value becomes REDACTED (keys are kept), the fragment is dropped,
    userinfo of an absolute URL is stripped, long opaque token-looking runs in the
    path become REDACTED, control characters are escaped, and the result is capped
    at MAX_PATH characters (ending in "…" when cut). Never raises.
    """
    try:
        text = _as_text(path)[:_MAX_PATH_INPUT]
        text = _escape_unsafe(text).partition("#")[0]
        head = ""
        match = _URL_HEAD.match(text)
        if match:
            authority = match.group("authority").rpartition("@")[2]
            head = f"{match.group('scheme') or ''}//{authority}"
            text = text[match.end() :]
        rest, question, query = text.partition("?")
        redacted = head + _redact_tokens(rest)
        if question:
            redacted += "?" + _redact_query(query)
        return _cap(redacted, MAX_PATH)
    except Exception:  # pragma: no cover - defensive: a log line must never crash the proxy
        return _REDACTED


def printable(text: str) -> str:
    """`text` safe to print on a terminal: control, separator and bidi characters escaped."""
    return _escape_unsafe(text)


def format_record(record: Mapping[str, object]) -> str:
    """One human-readable line, e.g.
    `10:00:00.123  deny         egress     GET evil.test:80/path  rule=deny:not-allowlisted`.

    Tolerates missing or oddly typed fields; control characters are escaped so a
    hostile host name or path cannot drive the terminal.
    """

    def text(key: str) -> str:
        value = record.get(key)
        return "" if value is None else _escape_unsafe(_cap(_as_text(value), MAX_TEXT))

    ts = text("ts")
    when = ts[11:23] if len(ts) >= 23 and ts[10:11] == "T" else ts
    parts = [f"{when:<12}", f"{text('decision'):<11}", f"{text('kind'):<9}"]
    target = text("host")
    port = text("port")
    if target and port not in ("", "0"):
        target = f"{target}:{port}"
    path = text("path")
    if path:
        # Host and port always come first: a path the bottle chose ("//other.host/…")
        # must not read as the destination.
        target = f"{target}{path}" if target and path.startswith("/") else f"{target} {path}"
        target = target.strip()
    method = text("method")
    if method:
        target = f"{method} {target}" if target else method
    if target:
        parts.append(target)
    rule = text("rule")
    if rule:
        parts.append(f"rule={rule}")
    up, down = text("bytes_up"), text("bytes_down")
    if up not in ("", "0") or down not in ("", "0"):
        parts.append(f"up={up or 0} down={down or 0}")
    detail = record.get("detail")
    if isinstance(detail, Mapping) and detail:
        shown = " ".join(
            f"{_as_text(k)}={json.dumps(v, ensure_ascii=False, default=str)}"
            for k, v in detail.items()
        )
        parts.append(_escape_unsafe(_cap(shown, 300)))
    return "  ".join(parts).rstrip()


# --------------------------------------------------------------------------- parsing


class _DuplicateKey(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key {_escape_unsafe(_cap(key, 64))!r}")
        out[key] = value
    return out


def _check_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """Parse and self-check one line (without its newline): (record, "") or (None, problem)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not valid UTF-8"
    try:
        record = json.loads(text, object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as exc:
        return None, f"not a valid record: {exc}"
    except (ValueError, RecursionError):
        return None, "not valid JSON" + (" (blank line)" if not text.strip() else "")
    if not isinstance(record, dict):
        return None, "not a JSON object"
    missing = [f for f in REQUIRED if f not in record]
    if missing:
        return None, "missing field(s): " + ", ".join(missing)
    seq = record["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return None, "field seq is not a non-negative integer"
    for key in ("prev", "hash"):
        value = record[key]
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            return None, f"field {key} is not a SHA-256 hex digest"
    if not isinstance(record["bottle"], str):
        return None, "field bottle is not a string"
    try:
        expected = _hash_of(record)
    except (ValueError, RecursionError):  # e.g. an escaped lone surrogate cannot be hashed
        return None, "not a valid record: it cannot be canonicalised"
    if expected != record["hash"]:
        return None, "hash mismatch: the record was edited after it was written"
    return record, ""


def _count_lines(fd: int, size: int) -> int:
    """Number of the line that starts after the last newline found before `size` (1-based)."""
    count, offset = 1, 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        if not chunk:
            break
        count += chunk.count(b"\n")
        offset += len(chunk)
    return count


# --------------------------------------------------------------------------- writer


class AuditLog:
    """Appends chained, fsync'd records to one bottle's log. Thread-safe.

    A failed write or fsync fails closed: every later `submit`/`record` raises
    AuditError.

    Opening an existing log resumes its chain from the last line, whose own hash is
    checked; a torn or corrupt tail raises AuditError rather than starting a new
    chain. The file is created 0600 and held under an exclusive `flock`, so a second
    writer fails instead of forking the chain.
    """

    def __init__(self, path: Path, bottle: str, budget: AuditBudget | None = None) -> None:
        self.path = Path(path)
        self.budget = budget or AuditBudget()
        self._on_failure: Callable[[AuditError], None] | None = None
        self.bottle = _clean(bottle, 256)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        existed = self.path.exists()
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise AuditError(
                f"cannot open audit log {self.path}: {exc.strerror}",
                "check the permissions of the bottle's state directory",
            ) from exc
        self._fd: int | None = fd
        try:
            self._lock_file(fd)
            os.fchmod(fd, 0o600)
            self._size = os.fstat(fd).st_size
            self._seq, self._prev = self._resume(fd, self._size)
            if not existed:
                self._sync_dir()
            try:
                self._reserve = DiskReserve(self.path)
            except OSError as exc:
                raise self._write_error(exc) from exc
        except BaseException:
            self._fd = None
            os.close(fd)
            raise
        self._failure: AuditError | None = None
        self._cond = threading.Condition()
        self._pending: list[_Item] = []
        self._submitted = 0  # tickets handed out
        self._written = 0  # records written (tickets 1.._written)
        self._synced = 0  # of which fsync'd
        self._kept: set[int] = set()  # tickets whose record `record()` returns
        self._kept_records: dict[int, dict[str, object]] = {}
        self._closing = False
        self._urgent = False  # someone waits: write and sync the queue now
        # The writer has nothing queued and sleeps until a record comes. Only then does a
        # submission wake it: one that lands while it waits out a batch interval would
        # cost a thread switch (and the GIL) per record for nothing.
        self._writer_idle = False
        # Made now: when the writer fails for want of memory, there may be none to make it.
        self._crashed = AuditError(
            f"the audit log writer of {self.path} failed",
            "the bottle cannot run unaudited; see the bundle's log",
        )
        self._meter = BudgetMeter(self.budget)
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._writer.start()

    def _lock_file(self, fd: int) -> None:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise AuditError(
                f"audit log {self.path} is already being written by another process",
                "only the bottle's bundle writes its audit log; stop the other writer",
            ) from exc

    def _sync_dir(self) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _resume(self, fd: int, size: int) -> tuple[int, str]:
        """(next seq, hash of the last record) from the file's last line."""
        if size == 0:
            return 0, GENESIS
        hint = (
            f"run `claude-bottle audit verify {self.path}`; keep the file as evidence "
            "and move it aside to start a new log"
        )
        if os.pread(fd, 1, size - 1) != b"\n":
            line = _count_lines(fd, size)
            raise AuditError(
                f"{self.path}: line {line}: the last record is incomplete (torn write); "
                "refusing to restart the hash chain",
                hint,
            )
        start = size - 1  # the last line is [start, size - 1)
        chunks: list[bytes] = []
        while start > 0:
            step = min(1 << 16, start)
            chunk = os.pread(fd, step, start - step)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                chunks.append(chunk[cut + 1 :])
                start = start - step + cut + 1
                break
            chunks.append(chunk)
            start -= step
        last = b"".join(reversed(chunks))
        record, problem = _check_line(last)
        if record is not None and record["bottle"] != self.bottle:
            problem = f"the log belongs to bottle {record['bottle']!r}, not {self.bottle!r}"
            record = None
        if record is None:
            line = _count_lines(fd, start)
            raise AuditError(
                f"{self.path}: line {line}: {problem}; refusing to restart the hash chain",
                hint,
            )
        return int(record["seq"]) + 1, str(record["hash"])

    def submit(self, kind: str, decision: str, **fields: Any) -> int:
        """Queue one record; the writer thread chains, writes and fsyncs it, in order.

        Fields: rule, method, host, port, path, bytes_up, bytes_down, detail. Costs the
        caller microseconds: the proxy never waits for JSON, hashing or the disk.
        Returns the record's ticket for `wait_written`. Raises AuditError once the log
        has failed (fail closed) or is closed.
        """
        return self._enqueue(_item(kind, decision, **fields), keep=False)

    def _enqueue(self, item: _Item, *, keep: bool) -> int:
        if self._failure is not None:
            raise self._failure
        with self._cond:
            if self._failure is not None:
                raise self._failure
            if self._closing or not self._writer.is_alive():
                # A writer that is gone writes nothing: accepting records would let
                # traffic flow unaudited.
                raise AuditError(f"audit log {self.path} is closed")
            self._pending.append(item)
            self._submitted += 1
            if keep:
                self._kept.add(self._submitted)
            if self._writer_idle:
                self._cond.notify_all()
            return self._submitted

    def record(self, kind: str, decision: str, **fields: Any) -> dict[str, object]:
        """`submit`, wait until written (not fsync'd), and return the record with `hash`."""
        ticket = self._enqueue(_item(kind, decision, **fields), keep=True)
        self.wait_written(ticket)
        with self._cond:
            return self._kept_records.pop(ticket)

    def wait_written(self, ticket: int) -> None:
        """Wait until the record with this ticket is in the file (readers can see it)."""
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._written < ticket:
                if self._failure is not None:
                    raise self._failure
                if not self._writer.is_alive():
                    raise AuditError(f"audit log {self.path} is closed")
                self._cond.wait(1.0)

    def _build(self, item: _Item) -> tuple[dict[str, object], bytes]:
        when, (kind, decision, rule, method, host, port, path, up, down), detail = item
        record: dict[str, object] = {
            "ts": _timestamp(when),
            "bottle": self.bottle,
            "seq": self._seq,
            "kind": _clean(_as_text(kind), 64),
            "decision": _clean(_as_text(decision), 64),
            "rule": _clean(_as_text(rule)),
            "method": _clean(_as_text(method), 64),
            "host": _clean(_as_text(host), 512),
            "port": int(port),
            "path": redact_path(path),
            "bytes_up": int(up),
            "bytes_down": int(down),
        }
        if detail is not None:
            record["detail"] = _jsonable(detail)
        record["prev"] = self._prev
        record["hash"] = self._prev = hashlib.sha256(canonical_json(record)).hexdigest()
        self._seq += 1
        return record, (_LINE.encode(record) + "\n").encode()

    def _append(self, fd: int, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError as exc:
            # Do not leave a torn line behind: the next record would be unreadable.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
            raise self._write_error(exc) from exc
        self._size += len(data)

    def _write_error(self, exc: OSError) -> AuditError:
        return _DiskError(
            f"cannot write audit log {self.path}: {exc.strerror}",
            "free disk space or fix the state directory; the bottle cannot run unaudited",
        )

    def _write_loop(self) -> None:
        """The writer thread: whatever ends it other than `close` fails the log closed."""
        try:
            self._write_batches()
        except _DiskError as exc:
            self._fail(self._last_words(exc))
        except AuditError as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(self._last_words(self._write_error(exc)))
        except BaseException as exc:  # MemoryError, a bug: whatever it is, never fail open
            failure = self._crashed
            with contextlib.suppress(BaseException):  # out of memory, this may fail too
                failure = AuditError(
                    f"the audit log writer of {self.path} failed: {type(exc).__name__}",
                    failure.hint,
                )
            self._fail(failure)

    def _last_words(self, failure: AuditError) -> AuditError:
        """After a failed write: give the reserve back, and try to end the log with why."""
        self._reserve.release()
        with contextlib.suppress(Exception):
            fd = self._fd
            assert fd is not None
            _, line = self._build(
                _item("lifecycle", "deny", rule="audit:failed", detail={"reason": failure.message})
            )
            self._append(fd, line)
            os.fsync(fd)
        return failure

    def _fail(self, failure: AuditError) -> None:
        with self._cond:
            self._failure = failure
            self._cond.notify_all()
            on_failure = self._on_failure
        if on_failure is not None:
            with contextlib.suppress(Exception):
                on_failure(failure)

    def _write_batches(self) -> None:
        """Write what was submitted, then fsync it (one fsync per batch: group commit);
        after `close`, finish the queue first. Only this thread touches the chain."""
        fd = self._fd
        assert fd is not None
        last_batch = 0.0
        while True:
            with self._cond:
                while not self._pending and self._synced == self._written and not self._closing:
                    self._writer_idle = True
                    self._cond.wait()
                self._writer_idle = False
                if not self._pending and self._synced == self._written:
                    return  # closing, and everything is on disk
                # A busy proxy submits thousands of records a second: batching them costs
                # each at most BATCH_INTERVAL of delay, and spares one wake-up and one
                # fsync per record.
                while not (self._closing or self._urgent):
                    delay = last_batch + BATCH_INTERVAL - time.monotonic()
                    if delay <= 0:
                        break
                    self._cond.wait(delay)
                self._urgent = False
                last_batch = time.monotonic()
                batch = list(self._pending)
                self._pending.clear()
                kept = set(self._kept)
            chain = self._seq, self._prev  # where the file's chain ends if this batch fails
            lines = []
            built: dict[int, dict[str, object]] = {}
            for offset, item in enumerate(batch, start=self._written + 1):
                record, line = self._build(item)
                lines.append(line)
                if offset in kept:
                    built[offset] = record
            data = b"".join(lines)
            # What was submitted describes traffic that already happened: it is written
            # whole, and an exhausted budget stops the bottle after it.
            over_budget = self._meter.charge(len(data), self._size)
            if data:
                try:
                    self._append(fd, data)
                except AuditError:
                    self._seq, self._prev = chain  # the batch was cut off the file again
                    raise
            with self._cond:
                self._written += len(batch)
                self._kept_records.update(built)
                self._kept.difference_update(built)
                self._cond.notify_all()
                target = self._written
            os.fsync(fd)
            if over_budget:  # before anyone waiting for the disk is told it is done
                self._stop_over_budget(fd, over_budget)
            with self._cond:
                self._synced = target
                self._cond.notify_all()

    def _stop_over_budget(self, fd: int, reason: str) -> None:
        """Record why the log stops (the one record written past the budget), then fail."""
        _, line = self._build(
            _item("lifecycle", "deny", rule="audit:budget", detail={"reason": reason})
        )
        if len(line) <= _BUDGET_RECORD_ROOM:
            self._append(fd, line)
            os.fsync(fd)
        raise AuditError(
            f"audit log {self.path}: {reason}; the bottle was stopped so that nothing "
            "runs unaudited",
            "raise the limit in ~/.config/claude-bottle/config.toml if this traffic is expected",
        )

    def on_failure(self, callback: Callable[[AuditError], None]) -> None:
        """Call `callback` (from the writer thread) when the writer fails (a write, an
        fsync, the budget, anything); at once if it already has."""
        with self._cond:
            self._on_failure = callback
            failure = self._failure
        if failure is not None:
            callback(failure)

    def sync(self) -> None:
        """Wait until every record submitted so far is written and fsync'd."""
        with self._cond:
            target = self._submitted
            self._urgent = True
            self._cond.notify_all()
            while self._synced < target and self._failure is None:
                if not self._writer.is_alive():
                    raise AuditError(f"audit log {self.path} is closed")
                self._cond.wait(1.0)
            if self._failure is not None:
                raise self._failure

    def close(self) -> None:
        """Write and fsync what is queued, stop the writer, close the file."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._writer.is_alive() and self._writer is not threading.current_thread():
            self._writer.join()
        self._reserve.release()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _item(
    kind: str,
    decision: str,
    *,
    rule: str = "",
    method: str = "",
    host: str = "",
    port: int = 0,
    path: str = "",
    bytes_up: int = 0,
    bytes_down: int = 0,
    detail: Mapping[str, object] | None = None,
) -> _Item:
    """What the writer needs to build a record later: its time now, the fields as given."""
    fields = (kind, decision, rule, method, host, port, path, bytes_up, bytes_down)
    return time.time(), fields, dict(detail) if detail is not None else None


@functools.lru_cache(maxsize=4)  # records come in bursts within the same second
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _timestamp(when: float) -> str:
    """UTC, millisecond precision: 2026-11-23T10:00:00.123Z."""
    seconds = int(when)
    return f"{_utc_second(seconds)}.{int((when - seconds) * 1000):03d}Z"


# --------------------------------------------------------------------------- readers


def verify(path: Path) -> VerifyResult:
    """Check the whole hash chain of the log at `path`.

    Detects, and reports at the first affected (1-based) line: a line that is not a
    JSON record or misses fields, an edited record (hash mismatch), a dropped,
    inserted or reordered line (`prev` differs from the previous line's hash), a
    `seq` that is not the previous one plus one, a different bottle name mid-file,
    and a torn last line (no final newline). An empty file is ok with 0 records.

    It cannot detect that lines were cut off the END of the file: a shorter chain is
    still a valid chain. That is covered by the bundle's final "lifecycle"
    `bundle-stop` record (whose `detail` carries the counts) — a log of a finished
    bottle that does not end with it was truncated or the bundle was killed.
    Raises AuditError if the file cannot be read.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror}") from exc
    good = 0
    prev = GENESIS
    bottle: str | None = None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return VerifyResult(
                    False, good, number, "torn last line (no newline: the write was cut short)"
                )
            record, problem = _check_line(raw[:-1])
            if record is None:
                return VerifyResult(False, good, number, problem)
            if record["prev"] != prev:
                problem = (
                    "prev is not the genesis value: the start of the log is missing"
                    if number == 1
                    else f"prev does not match the hash of line {number - 1}: "
                    "a line was dropped, inserted or reordered"
                )
                return VerifyResult(False, good, number, problem)
            if record["seq"] != good:
                return VerifyResult(False, good, number, f"seq {record['seq']}, expected {good}")
            if bottle is None:
                bottle = record["bottle"]
            elif record["bottle"] != bottle:
                return VerifyResult(
                    False,
                    good,
                    number,
                    f"bottle {record['bottle']!r} differs from {bottle!r} of line 1",
                )
            prev = record["hash"]
            good += 1
    return VerifyResult(True, good, None, "")


def _parse(raw: bytes) -> dict[str, object] | None:
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def iter_records(
    path: Path,
    follow: bool = False,
    poll_interval: float = 0.2,
    stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, object]]:
    """Yield the records of the log at `path` (lines that do not parse are skipped).

    Only complete (newline-terminated) lines are yielded. With `follow`, keep
    tailing the file, polling every `poll_interval` seconds, until `stop()` returns
    True; records appended before that are still yielded. Chain integrity is
    `verify`'s job, not this function's.
    """
    buffer = b""
    draining = False
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(1 << 16)
            if chunk:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    record = _parse(raw)
                    if record is not None:
                        yield record
                continue
            if not follow or draining:
                return
            if stop is not None and stop():
                draining = True  # one last read for what was written before stop
                continue
            time.sleep(poll_interval)
