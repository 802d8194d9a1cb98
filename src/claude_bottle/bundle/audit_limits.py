"""What bounds one bottle's audit log: a byte budget, and disk space held back to report why.

A bottle can make its bundle write (every request is a record), so its log may grow only
within an `AuditBudget`; and a disk that fills anyway must still leave room to say why
the bottle stopped (`DiskReserve`). `audit.AuditLog` fails closed on either.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import NamedTuple

from claude_bottle.bundle.settings import DEFAULT_AUDIT_MAX, DEFAULT_AUDIT_RATE

RESERVE = 64 * 1024
"""Disk space held next to the log (`<log>.reserve`) and given back when a write fails, so
that a full disk still leaves room to say why the bottle stopped: a last record in the log,
the bundle's message, the CLI's record of the bottle."""


class AuditBudget(NamedTuple):  # not a dataclass: see bundle/settings.py
    """How much one bottle's log may grow: `total` bytes in all (the file's size), and
    `per_minute` bytes over any minute (a bucket that holds a minute's worth and refills
    continuously). Past either, the log writes one last record saying so and fails
    closed: a bottle that floods its audit log stops instead of filling the disk."""

    total: int = DEFAULT_AUDIT_MAX
    per_minute: int = DEFAULT_AUDIT_RATE


class BudgetMeter:
    """Charges writes against an `AuditBudget`; used by the log's one writer thread."""

    def __init__(self, budget: AuditBudget) -> None:
        self.budget = budget
        self._allowance = float(budget.per_minute)
        self._checked = time.monotonic()

    def charge(self, size: int, file_size: int) -> str:
        """Why writing `size` more bytes to a log of `file_size` breaks the budget ("" when
        it does not)."""
        budget = self.budget
        if file_size + size > budget.total:
            return f"the audit log reached its limit of {budget.total} bytes ([bottle] audit_max)"
        now = time.monotonic()
        refill = (now - self._checked) * budget.per_minute / 60.0
        self._checked = now
        self._allowance = min(float(budget.per_minute), self._allowance + refill) - size
        if self._allowance < 0:
            return (
                f"the bottle wrote more than {budget.per_minute} bytes of audit log in a "
                "minute ([bottle] audit_rate)"
            )
        return ""


class DiskReserve:
    """`RESERVE` bytes of real blocks in `<log>.reserve`, held until `release`."""

    def __init__(self, log: Path) -> None:
        self.path = log.with_name(log.name + ".reserve")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE)
            finally:
                os.close(fd)
        except OSError:
            self.release()
            raise

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
