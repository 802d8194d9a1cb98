"""The audit log's records on disk: their fields, the SHA-256 hash chain that links them
(`canonical_json`), and checking (`verify`) and reading (`iter_records`) a log.

The bundle's `audit.AuditLog` writes them; everything here reads them too.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from claude_bottle.bundle.audit_text import cap, printable
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

_HEX64 = re.compile(r"[0-9a-f]{64}")


class AuditError(BottleError):
    """The audit log cannot be written, or its chain cannot be resumed safely."""


class VerifyResult(NamedTuple):  # not a dataclass: see bundle/settings.py
    """Outcome of `verify`: `bad_line` is 1-based; `problem` is "" when `ok`."""

    ok: bool
    records: int
    bad_line: int | None
    problem: str


# Made once: `json.dumps` with options builds a new encoder at every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(record: Mapping[str, object]) -> bytes:
    """The bytes the hash is computed over: sorted keys, no spaces, UTF-8."""
    return _CANONICAL.encode(dict(record)).encode()


def _hash_of(record: Mapping[str, object]) -> str:
    return hashlib.sha256(
        canonical_json({k: v for k, v in record.items() if k != "hash"})
    ).hexdigest()


class _DuplicateKey(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key {printable(cap(key, 64))!r}")
        out[key] = value
    return out


def check_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
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
            record, problem = check_line(raw[:-1])
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
