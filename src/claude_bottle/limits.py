"""Resource limits of a bottle (`[bottle] memory, pids, cpus, disk, require_limits`).

One set of keys for every backend: the configuration holds a `Limits`, each backend
turns it into a `LimitsPlan` that says which mechanism applies which limit on this
host and which it cannot apply, and why. `run` prints what cannot be applied before
the bottle starts (never silently) and refuses to start when `require_limits` is set.
Shared code: no backend is named here.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

KIB = 1024
MIB = KIB * 1024
GIB = MIB * 1024

DEFAULT_PIDS = 4096
DEFAULT_DISK = 10 * GIB
MIN_MEMORY = 32 * MIB  # below this the bottle's own relay cannot start
MIN_PIDS = 16  # the relay, the sandbox and a shell
MIN_DISK = MIB
MAX_PIDS = 4_194_304  # the kernel's pid_max ceiling
MAX_CPUS = 1024.0

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": KIB, "M": MIB, "G": GIB, "T": GIB * 1024}


class Limits(NamedTuple):  # not a dataclass: see bundle/settings.py
    """What the configuration asks for; `memory` None means half of the host's RAM."""

    memory: int | None = None  # bytes
    pids: int = DEFAULT_PIDS  # processes + threads
    cpus: float | None = None  # CPU quota in CPUs; None: no quota
    disk: int = DEFAULT_DISK  # bytes writable outside the workspace
    require: bool = False  # `require_limits`: refuse to start when one cannot be applied


class Unapplied(NamedTuple):
    """A limit this host cannot apply: the key that asks for it and why it cannot."""

    key: str
    reason: str


class LimitsPlan(NamedTuple):
    """The limits in force for one bottle and how they are applied (shown by `plan`)."""

    mechanism: str  # e.g. "cgroup v1 (memory, pids, cpu controllers)"
    memory: int
    pids: int
    cpus: float | None
    disk: int
    require: bool
    disk_mechanism: str  # how `disk` is enforced, e.g. "sized tmpfs /tmp, /var/tmp"
    unapplied: tuple[Unapplied, ...] = ()
    notes: tuple[str, ...] = ()  # e.g. "disk is a tmpfs and counts toward memory"

    def rows(self) -> tuple[tuple[str, str], ...]:
        """The plan's `limits` section."""
        rows = [
            ("mechanism", self.mechanism),
            ("memory", format_size(self.memory)),
            ("pids", str(self.pids)),
            ("cpus", "no quota" if self.cpus is None else f"{self.cpus:g}"),
            ("disk", f"{format_size(self.disk)} ({self.disk_mechanism})"),
        ]
        rows += [("not applied", f"{u.key}: {u.reason}") for u in self.unapplied]
        rows += [("note", note) for note in self.notes]
        return tuple(rows)

    def audit_detail(self) -> dict[str, object]:
        """What the bottle's first audit record keeps of its limits."""
        return {
            "mechanism": self.mechanism,
            "memory": self.memory,
            "pids": self.pids,
            "cpus": self.cpus,
            "disk": self.disk,
            "disk_mechanism": self.disk_mechanism,
            "unapplied": [u.key for u in self.unapplied],
        }


def parse_size(text: str) -> int:
    """Bytes in "8G", "256M", "512KiB", "1.5G" or "1048576"; ValueError if it is not one."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def format_size(size: int) -> str:
    """The largest unit that shows `size` exactly: 268435456 -> "256M"."""
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit] and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def host_memory() -> int:
    """The host's RAM in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_in_force(limits: Limits) -> int:
    """The configured memory limit, or half of the host's RAM."""
    return limits.memory if limits.memory is not None else host_memory() // 2


def plan_with(
    limits: Limits,
    mechanism: str,
    disk_mechanism: str,
    unapplied: tuple[Unapplied, ...] = (),
    notes: tuple[str, ...] = (),
) -> LimitsPlan:
    return LimitsPlan(
        mechanism=mechanism,
        memory=memory_in_force(limits),
        pids=limits.pids,
        cpus=limits.cpus,
        disk=limits.disk,
        require=limits.require,
        disk_mechanism=disk_mechanism,
        unapplied=unapplied,
        notes=notes,
    )


def hit_message(key: str, limit: str, what: str) -> str:
    """The one line `run` prints when the bottle ran into a limit."""
    return f"the bottle hit its {key} limit ({limit}): {what}; raise [bottle] {key} to allow more"
