"""Fuzz targets for the audit log verifier (`bundle.audit_chain.verify`).

`verify` reads a file anyone with the user's rights may have edited. Properties: it
returns a VerifyResult for any bytes (AuditError only when the file cannot be read);
a failure names a line, and the records before it are the ones counted; and a log a
writer made, then mutated (a byte changed, lines dropped, duplicated, swapped, inserted,
cut), verifies only if what it holds is still exactly the start of the original chain:
no edit goes unnoticed.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

from claude_bottle.bundle.audit import AuditLog
from claude_bottle.bundle.audit_chain import verify
from tests.fuzz.source import Source

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-audit-"))  # one per process, in the temp dir
atexit.register(shutil.rmtree, _DIR, True)
LOG = _DIR / "fuzzed.jsonl"


def _original() -> bytes:
    path = _DIR / "original.jsonl"
    with AuditLog(path, "fuzz-bottle") as log:
        log.record("lifecycle", "allow", rule="bundle-start")
        log.record("request", "allow", method="GET", host="a.test", port=443, path="/x?q=1")
        log.record("request", "deny", rule="deny:not-allowlisted", host="é.test", port=80)
        log.record("dlp", "deny", rule="dlp:aws", detail={"k": "v", "n": [1, 2.5, None]})
        log.record("lifecycle", "allow", rule="bundle-stop", detail={"records": 5})
    return path.read_bytes()


ORIGINAL = _original()
ORIGINAL_LINES = ORIGINAL.splitlines(keepends=True)
ORIGINAL_RECORDS = [json.loads(line) for line in ORIGINAL_LINES]


def _mutate(source: Source, lines: list[bytes]) -> list[bytes]:
    lines = list(lines)
    for _ in range(1 + source.below(3)):
        kind = source.below(7)
        at = source.below(len(lines) + 1)
        if kind == 0 and lines:  # change one byte
            line = lines[at % len(lines)]
            spot = source.below(len(line))
            changed = line[:spot] + bytes([source.byte()]) + line[spot + 1 :]
            lines[at % len(lines)] = changed
        elif kind == 1 and lines:
            del lines[at % len(lines)]
        elif kind == 2 and lines:
            lines.insert(at, lines[source.below(len(lines))])
        elif kind == 3 and len(lines) > 1:
            other = source.below(len(lines))
            lines[at % len(lines)], lines[other] = lines[other], lines[at % len(lines)]
        elif kind == 4:
            lines.insert(at, source.raw(80))
        elif kind == 5 and lines:  # cut the file somewhere
            whole = b"".join(lines)
            lines = [whole[: source.below(len(whole) + 1)]]
        elif kind == 6 and lines:  # a field rewritten, hash left as it was
            line = lines[at % len(lines)]
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record:
                key = source.pick(sorted(record))
                record[key] = source.pick([0, 1, "x", None, True, record.get("seq")])
                lines[at % len(lines)] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    return lines


def audit_verify(data: bytes) -> None:
    source = Source(data)
    mutated = not source.chance(64)
    content = b"".join(_mutate(source, ORIGINAL_LINES)) if mutated else source.rest()
    LOG.write_bytes(content)
    result = verify(LOG)
    lines = content.splitlines(keepends=True)
    assert 0 <= result.records <= len(lines)
    if not result.ok:
        assert result.bad_line == result.records + 1 and result.problem, result
        return
    assert result.bad_line is None and result.problem == ""
    assert result.records == len(lines)
    records = [json.loads(line) for line in lines]
    # What verifies is the start of the chain the writer made: no edit goes unnoticed,
    # and no bytes of the fuzzer's own make a chain (that would take forging SHA-256).
    assert records == (ORIGINAL_RECORDS[: len(records)] if mutated else []), records
