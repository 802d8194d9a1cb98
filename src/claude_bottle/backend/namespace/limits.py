"""How the namespace backend applies `[bottle]` limits: the bottle's own cgroup (or a
systemd scope), else per-uid rlimits; `disk` is a size on every tmpfs the bottle can write
and, where the host allows (root), the size of the ext4 image that holds its home."""

from __future__ import annotations

import os
import shutil
from typing import NamedTuple

from claude_bottle import cgroups, home_image, paths
from claude_bottle.limits import Limits, LimitsPlan, Unapplied, format_size, plan_with

TMPFS_DISK = "a sized tmpfs at each of /tmp, /var/tmp, /run and the hidden dirs"
TMPFS_NOTE = "what the bottle writes to its tmpfs counts toward its memory"
BUNDLE_NOTE = (
    f"the bundle runs in its own cgroup beside the bottle's (memory "
    f"{format_size(cgroups.BUNDLE_MEMORY)}, pids {cgroups.BUNDLE_PIDS})"
)


class Confinement(NamedTuple):  # not a dataclass: see bundle/settings.py
    """What puts the sandbox under its limits: a cgroup to create and join, or a launcher
    (systemd-run, prlimit) that bubblewrap is started through."""

    cgroup: cgroups.BottleCgroup | None
    launcher: tuple[str, ...]


def confine(name: str, limits: Limits) -> tuple[LimitsPlan, Confinement]:
    host = cgroups.detect()
    if host.kind in ("v1", "v2"):
        group = cgroups.for_bottle(host, cgroups.group_name(name, paths.state_root()), limits)
        unapplied = tuple(
            Unapplied(key, f"{host.describe()} has no controller for it") for key in host.missing
        )
        disk, home = _disk()
        notes = (TMPFS_NOTE, BUNDLE_NOTE)
        plan = plan_with(limits, host.describe(), disk, (*unapplied, *home), notes)
        return plan, Confinement(group, ())
    if host.kind == "systemd":
        unit = f"claude-bottle-{name}-{os.getpid()}"
        launcher = cgroups.systemd_argv(unit, limits, [])
        disk, home = _disk()
        plan = plan_with(limits, host.describe(), disk, home, (TMPFS_NOTE,))
        return plan, Confinement(None, tuple(launcher))
    return _rlimits(limits, host)


def _disk() -> tuple[str, tuple[Unapplied, ...]]:
    return home_image.disk_mechanism(TMPFS_DISK)


def _rlimits(limits: Limits, host: cgroups.CgroupHost) -> tuple[LimitsPlan, Confinement]:
    """No cgroup: per-process data size and per-uid process count, through prlimit."""
    mechanism = f"rlimits ({host.describe()})"
    unapplied: list[Unapplied] = []
    disk, home = _disk()
    memory = plan_with(limits, mechanism, disk).memory
    unapplied.append(
        Unapplied(
            "memory",
            f"no cgroup: each process is limited to {format_size(memory)} of data "
            "(RLIMIT_DATA), not the bottle as a whole",
        )
    )
    if os.geteuid() == 0:
        unapplied.append(Unapplied("pids", "no cgroup, and root is exempt from RLIMIT_NPROC"))
    if limits.cpus is not None:
        unapplied.append(Unapplied("cpus", "no cgroup: a CPU quota needs one"))
    notes = (
        "disk is a sized tmpfs, which counts toward memory (RAM), not the host's disk",
        f"pids counts every process of uid {os.getuid()} on the host (RLIMIT_NPROC)",
    )
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        unapplied = [
            Unapplied(k, "prlimit (util-linux) is not installed") for k in ("memory", "pids")
        ]
        launcher: tuple[str, ...] = ()
    else:
        launcher = (prlimit, f"--nproc={limits.pids}", f"--data={memory}", "--")
    plan = plan_with(limits, mechanism, disk, (*unapplied, *home), notes)
    return plan, Confinement(None, launcher)


def doctor_lines() -> list[str]:
    """What `doctor` says about limits on this host."""
    host = cgroups.detect()
    lines = [host.describe()]
    if host.kind == "none":
        lines.append(
            "falls back to rlimits: no memory limit for the bottle as a whole, no CPU quota; "
            "fix: run in a systemd user session (systemd-run --user), or as root with cgroup v1"
        )
    lines += [f"cannot apply {key}: no controller for it" for key in host.missing]
    if host.kind != "v2" and host.kind != "systemd":
        lines.append("cgroup v2 is not usable here; cgroup v1 and rlimits are the fallbacks")
    lines.append(home_image.doctor_line())
    return lines
