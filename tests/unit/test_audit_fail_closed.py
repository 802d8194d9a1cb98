"""The audit log cannot stop silently nor be flooded (issue 27, items 3 and 4): whatever
ends its writer, and a bottle past its audit budget, fail closed."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from claude_bottle.bundle.audit import AuditError, AuditLog
from claude_bottle.bundle.audit_chain import iter_records, verify
from claude_bottle.bundle.audit_limits import RESERVE, AuditBudget


def _failures(log: AuditLog) -> tuple[list[AuditError], threading.Event]:
    seen: list[AuditError] = []
    told = threading.Event()

    def on_failure(failure: AuditError) -> None:
        seen.append(failure)
        told.set()

    log.on_failure(on_failure)
    return seen, told


@pytest.mark.parametrize("error", [MemoryError, RuntimeError, KeyError, RecursionError])
def test_any_exception_in_the_writer_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", "b1")
    log.record("egress", "allow")
    seen, told = _failures(log)

    def broken_build(item: object) -> object:
        raise error("boom")

    monkeypatch.setattr(log, "_build", broken_build)
    log.submit("egress", "allow", host="first.test")
    assert told.wait(10), "the owner was never told that the writer died"
    assert "writer" in seen[0].message and error.__name__ in seen[0].message
    log._writer.join(10)
    assert not log._writer.is_alive()
    # Nothing more is accepted: a record submitted now would never be written.
    with pytest.raises(AuditError):
        log.submit("egress", "allow", host="second.test")
    with pytest.raises(AuditError):
        log.sync()
    log.close()
    assert verify(tmp_path / "audit.jsonl").ok


def test_submit_refuses_once_the_writer_is_gone(tmp_path: Path) -> None:
    """However the writer ended (here: its thread is swapped for one that has ended),
    `submit` refuses rather than queue records nobody writes."""
    log = AuditLog(tmp_path / "audit.jsonl", "b1")
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    writer, log._writer = log._writer, ended
    try:
        with pytest.raises(AuditError, match="closed"):
            log.submit("egress", "allow")
    finally:
        log._writer = writer
        log.close()


def test_total_budget_writes_why_and_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "b1", AuditBudget(total=20_000, per_minute=1 << 30))
    seen, told = _failures(log)
    with pytest.raises(AuditError, match="audit_max"):
        for number in range(1000):  # ~100 KB: five times the budget
            log.submit("egress", "allow", host="flood.test", path=f"/{number}/" + "x" * 60)
        log.sync()
    assert told.wait(10)
    assert "audit_max" in seen[0].message
    log.close()
    records = list(iter_records(path))
    assert records[-1]["rule"] == "audit:budget"
    assert "audit_max" in str(records[-1]["detail"])
    # Bounded: one batch past the budget at most, and the chain is intact.
    assert path.stat().st_size < 20_000 + 1000 * 400
    assert verify(path).ok
    with pytest.raises(AuditError):
        log.submit("egress", "allow")


def test_rate_budget_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "b1", AuditBudget(total=1 << 30, per_minute=8_000))
    _, told = _failures(log)
    with pytest.raises(AuditError, match="audit_rate"):
        for number in range(1000):
            log.submit("egress", "allow", host="flood.test", path=f"/{number}")
            if number % 50 == 0:
                log.sync()
    assert told.wait(10)
    log.close()
    assert list(iter_records(path))[-1]["rule"] == "audit:budget"
    assert verify(path).ok


def test_a_log_already_at_its_limit_does_not_reopen_for_more(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, "b1") as log:
        for _ in range(20):
            log.submit("egress", "allow")
    size = path.stat().st_size
    log = AuditLog(path, "b1", AuditBudget(total=size, per_minute=1 << 30))
    log.submit("lifecycle", "info", rule="bundle-start")
    with pytest.raises(AuditError, match="audit_max"):
        log.sync()
    log.close()


def test_ordinary_traffic_stays_within_the_default_budget(tmp_path: Path) -> None:
    """The defaults leave a busy agent alone: 2,000 requests in a burst."""
    assert AuditLog(tmp_path / "x.jsonl", "b1").budget == (1 << 30, 64 << 20)
    with AuditLog(tmp_path / "audit.jsonl", "b1") as log:
        for number in range(2000):
            log.submit("egress", "allow", host="pypi.org", port=443, path=f"/simple/p{number}/")
        log.sync()
    assert verify(tmp_path / "audit.jsonl").records == 2000


def test_a_full_disk_fails_closed_and_the_log_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC mid-batch: the torn batch is cut off, the reserve is given back, and the
    log ends with a verifiable record saying why it stopped."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "b1")
    reserve = tmp_path / "audit.jsonl.reserve"
    assert reserve.stat().st_blocks * 512 >= RESERVE
    _, told = _failures(log)
    log.record("egress", "allow")
    real_write = os.write
    writes = {"n": 0}

    def full_disk(fd: int, data: bytes) -> int:
        writes["n"] += 1
        if writes["n"] == 1:  # the next batch: part of it lands, then the disk is full
            real_write(fd, bytes(data[:10]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    log.submit("egress", "allow", host="lost.test")
    assert told.wait(10)
    monkeypatch.setattr(os, "write", real_write)
    with pytest.raises(AuditError, match="No space left on device"):
        log.submit("egress", "allow")
    log.close()
    assert not reserve.exists()
    assert verify(path).ok
    last = list(iter_records(path))[-1]
    assert last["rule"] == "audit:failed" and "No space left" in str(last["detail"])
