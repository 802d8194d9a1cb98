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

The records' format, their chain, and checking and reading a log are `audit_chain`'s;
the text that goes into them (bounded, escaped, redacted) is `audit_text`'s.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from claude_bottle.bundle.audit_chain import GENESIS, canonical_json, check_line
from claude_bottle.bundle.audit_chain import AuditError as AuditError  # the writer's too
from claude_bottle.bundle.audit_limits import AuditBudget, BudgetMeter, DiskReserve
from claude_bottle.bundle.audit_text import as_text, clean, jsonable, redact_path

BATCH_INTERVAL = 0.005
"""Longest a submitted record waits to be written and fsync'd (unless `sync` is called)."""

_LINE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # made once

_Item = tuple[float, tuple[Any, ...], Mapping[str, object] | None]
"""A submitted record: its time, the caller's fields, its detail (built by the writer)."""


_BUDGET_RECORD_ROOM = 4096  # the final over-budget record is written past the budget


class _DiskError(AuditError):
    """A write or fsync of the log failed (a full disk, an I/O error)."""


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
        self.bottle = clean(bottle, 256)
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
        record, problem = check_line(last)
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
            "kind": clean(as_text(kind), 64),
            "decision": clean(as_text(decision), 64),
            "rule": clean(as_text(rule)),
            "method": clean(as_text(method), 64),
            "host": clean(as_text(host), 512),
            "port": int(port),
            "path": redact_path(path),
            "bytes_up": int(up),
            "bytes_down": int(down),
        }
        if detail is not None:
            record["detail"] = jsonable(detail)
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
