"""Control groups: what this host offers for a bottle's limits, and one bottle's cgroup.

A bottle gets its own cgroup, created before its command starts and removed at
teardown; the CLI and the bundle stay outside it, so a bottle that eats its memory
or CPU leaves its bundle responsive. Where the host has it, that is cgroup v2 (the
root for root, else the highest delegated ancestor the user owns), or a systemd user
scope; where only cgroup v1 controllers are mounted (and we are root), one directory
per controller. Where none of these is usable, `detect` says why and the caller falls
back to rlimits. Paths are parameters so the file writes can be tested against a fake
tree in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from claude_bottle.limits import Limits, format_size, hit_message, memory_in_force

ROOT = Path("/sys/fs/cgroup")
PARENT = "claude-bottle"  # every bottle's cgroup is <base>/claude-bottle/<group_name>
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
REMOVE_TIMEOUT = 5.0
BUNDLE_SUFFIX = ".bundle"  # the bundle's own cgroup, beside (never inside) its bottle's
BUNDLE_MEMORY = 1 << 30  # idle it holds ~45 MiB; the rest is headroom for held requests
BUNDLE_PIDS = 512  # threads: the event loop and its helpers
# Present only when the kernel accounts swap: written where they exist, else skipped.
SWAP_FILES = frozenset({"memory.swap.max", "memory.memsw.limit_in_bytes"})


class CgroupHost(NamedTuple):
    """What this host offers. `kind` is "v2", "v1", "systemd" or "none"."""

    kind: str
    bases: tuple[tuple[str, str], ...] = ()  # (controller or "unified", dir under which PARENT is)
    missing: tuple[str, ...] = ()  # limit keys the host's controllers cannot apply
    reason: str = ""  # for "none": why no cgroup is usable

    def describe(self) -> str:
        if self.kind == "v2":
            return f"cgroup v2 under {self.bases[0][1]}"
        if self.kind == "v1":
            return f"cgroup v1 ({', '.join(c for c, _ in self.bases)} controllers)"
        if self.kind == "systemd":
            return "cgroup v2 through systemd-run --user --scope"
        return f"no usable cgroup ({self.reason})"


class BottleCgroup(NamedTuple):  # not a dataclass: see bundle/settings.py
    """One bottle's cgroup directories and the limits written into them."""

    version: int  # 1 or 2
    dirs: tuple[tuple[str, str], ...]  # (controller or "unified", absolute dir)
    memory: int
    pids: int
    cpus: float | None


def detect(
    root: Path = ROOT,
    self_cgroup: Path = Path("/proc/self/cgroup"),
    env: Mapping[str, str] | None = None,
    euid: int | None = None,
) -> CgroupHost:
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    own = _own_paths(self_cgroup)
    unified = next(
        (d for d in (root, root / "unified") if (d / "cgroup.controllers").exists()), None
    )
    reasons: list[str] = []
    if unified is not None:
        found = _v2_base(unified, own.get("", "/"), euid)
        if found is not None:
            return found
        reasons.append("cgroup v2 has no memory and pids controllers delegated to this user")
    if _systemd_user(env):
        return CgroupHost("systemd")
    v1 = tuple(
        (controller, str(root / controller / own.get(controller, "/").lstrip("/")))
        for controller in V1_CONTROLLERS
        if (root / controller / "cgroup.procs").exists()
    )
    if v1 and euid == 0:
        present = {c for c, _ in v1}
        missing = tuple(
            key
            for key, controller in (("memory", "memory"), ("pids", "pids"), ("cpus", "cpu"))
            if controller not in present
        )
        return CgroupHost("v1", v1, missing)
    if v1:
        reasons.append("cgroup v1 controllers are writable only by root")
    if not reasons:
        reasons.append(f"no cgroup filesystem under {root}")
    reasons.append("no systemd user session to delegate a scope")
    return CgroupHost("none", reason="; ".join(reasons))


def _own_paths(self_cgroup: Path) -> dict[str, str]:
    """controller -> this process's cgroup path; "" is the v2 hierarchy."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in self_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller.removeprefix("name=")] = path
    return paths


def _v2_base(unified: Path, own: str, euid: int) -> CgroupHost | None:
    """Root uses the hierarchy's root; a user the highest ancestor of its cgroup it owns."""
    candidates = [unified] if euid == 0 else []
    directory = unified / own.lstrip("/")
    ancestors = []
    while directory != unified and directory.is_relative_to(unified):
        ancestors.append(directory)
        directory = directory.parent
    owned = [d for d in ancestors if _owned_by(d, euid)]
    if owned:
        candidates.append(owned[-1])
    for base in candidates:
        available = _read(base / "cgroup.controllers").split()
        if "memory" in available and "pids" in available:
            missing = () if "cpu" in available else ("cpus",)
            return CgroupHost("v2", (("unified", str(base)),), missing)
    return None


def _owned_by(directory: Path, euid: int) -> bool:
    try:
        return directory.stat().st_uid == euid and os.access(directory, os.W_OK)
    except OSError:
        return False


def _systemd_user(env: Mapping[str, str]) -> bool:
    """A user systemd instance that `systemd-run --user` can reach."""
    import shutil

    runtime = env.get("XDG_RUNTIME_DIR", "")
    bus = env.get("DBUS_SESSION_BUS_ADDRESS") or (runtime and Path(runtime, "bus").exists())
    return bool(bus) and shutil.which("systemd-run") is not None


def group_name(name: str, state_root: Path) -> str:
    """`<bottle name>@<state root's checksum>`: cgroups are host-wide, bottle names are
    unique only within a state root, and one root's cleanup must not touch another's."""
    return f"{name}@{_root_label(state_root)}"


def _root_label(state_root: Path) -> str:
    import zlib  # a checksum, not security: only tells state roots apart

    return f"{zlib.crc32(str(state_root.resolve()).encode()):08x}"


def record_of(group: BottleCgroup | None) -> dict[str, object] | None:
    """The cgroup as the state record keeps it, for `stop`, `resume` and `cleanup`."""
    return None if group is None else group._asdict()


def from_record(raw: object) -> BottleCgroup | None:
    """The cgroup a state record names; None unless every directory is a bottle cgroup."""
    if not isinstance(raw, dict):
        return None
    try:
        dirs = tuple((str(c), str(d)) for c, d in raw["dirs"])
        group = BottleCgroup(
            int(raw["version"]), dirs, int(raw["memory"]), int(raw["pids"]), raw.get("cpus")
        )
    except (KeyError, TypeError, ValueError):
        return None
    if not all(is_bottle_cgroup(d) for _, d in group.dirs):
        return None
    return group


def for_bottle(host: CgroupHost, name: str, limits: Limits) -> BottleCgroup | None:
    """The cgroup named `name` (`group_name`) on `host` (None: systemd or no cgroup)."""
    if host.kind not in ("v1", "v2"):
        return None
    return BottleCgroup(
        version=1 if host.kind == "v1" else 2,
        dirs=tuple((c, str(Path(base) / PARENT / name)) for c, base in host.bases),
        memory=memory_in_force(limits),
        pids=limits.pids,
        cpus=limits.cpus,
    )


def for_bundle(bottle: BottleCgroup) -> BottleCgroup:
    """The bundle's own small cgroup beside the bottle's: a bottle that drives its bundle
    to its limits takes the bundle down (and so itself, fail closed), not the host."""
    dirs = tuple((c, d + BUNDLE_SUFFIX) for c, d in bottle.dirs)
    return BottleCgroup(bottle.version, dirs, BUNDLE_MEMORY, BUNDLE_PIDS, None)


def move(group: BottleCgroup, pid: int) -> None:
    """Move a running process (all its threads) into `group`; OSError if refused."""
    for _, directory in group.dirs:
        (Path(directory) / "cgroup.procs").write_text(str(pid))


def create(group: BottleCgroup) -> None:
    """Make the directories and write the limits; OSError if the kernel refuses one."""
    for controller, directory in group.dirs:
        path = Path(directory)
        if group.version == 2:
            for level in (path.parent.parent, path.parent):
                _enable_controllers(level)
        path.mkdir(parents=True, exist_ok=True)
        for file, value in _limit_files(group, controller):
            if file in SWAP_FILES and not (path / file).exists():
                continue
            (path / file).write_text(value)


def _enable_controllers(directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    available = set(_read(directory / "cgroup.controllers").split())
    enabled = set(_read(directory / "cgroup.subtree_control").split())
    wanted = [c for c in ("memory", "pids", "cpu") if c in available and c not in enabled]
    if wanted:
        (directory / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))


def _limit_files(group: BottleCgroup, controller: str) -> list[tuple[str, str]]:
    quota = None if group.cpus is None else str(int(group.cpus * CPU_PERIOD_US))
    if group.version == 2:
        files = [("memory.max", str(group.memory)), ("pids.max", str(group.pids))]
        if quota is not None:
            files.append(("cpu.max", f"{quota} {CPU_PERIOD_US}"))
        # Swap would let a hog outlive its memory limit; without swap the file may be absent.
        files.append(("memory.swap.max", "0"))
        return files
    if controller == "memory":  # memsw after memory: it may never be below it
        memory = str(group.memory)
        return [("memory.limit_in_bytes", memory), ("memory.memsw.limit_in_bytes", memory)]
    if controller == "pids":
        return [("pids.max", str(group.pids))]
    if controller == "cpu" and quota is not None:
        return [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", quota)]
    return []


def join_argv(group: BottleCgroup, argv: list[str]) -> list[str]:
    """`argv` started inside the cgroup: a shell moves itself in, then becomes `argv`, so
    no process of the bottle ever runs outside it."""
    procs = [str(Path(d) / "cgroup.procs") for _, d in group.dirs]
    script = (
        "for f in "
        + " ".join(shlex.quote(p) for p in procs)
        + '; do echo $$ > "$f" || exit 125; done; exec "$@"'
    )
    return ["/bin/sh", "-c", script, "sh", *argv]


def systemd_argv(unit: str, limits: Limits, argv: list[str]) -> list[str]:
    """`argv` in a transient systemd user scope with the bottle's limits."""
    props = [
        f"MemoryMax={memory_in_force(limits)}",
        "MemorySwapMax=0",
        f"TasksMax={limits.pids}",
    ]
    if limits.cpus is not None:
        props.append(f"CPUQuota={round(limits.cpus * 100)}%")
    options = [f"--property={p}" for p in props]
    return [
        "systemd-run",
        "--user",
        "--scope",
        "--quiet",
        "--collect",
        f"--unit={unit}",
        *options,
        "--",
        *argv,
    ]


def of_process(pid: int, root: Path = ROOT, proc: Path = Path("/proc")) -> BottleCgroup | None:
    """The cgroup a running process is in (a systemd scope, a container) and the limits
    written in it, to read its counters."""
    own = _own_paths(proc / str(pid) / "cgroup")
    if "" in own and (root / "cgroup.controllers").exists():
        path = root / own[""].lstrip("/")
        memory, pids = _number(path / "memory.max"), _number(path / "pids.max")
        return BottleCgroup(2, (("unified", str(path)),), memory, pids, None)
    dirs = tuple(
        (c, root / c / own[c].lstrip("/"))
        for c in ("memory", "pids")
        if c in own and (root / c).is_dir()
    )
    if not dirs:
        return None
    found = dict(dirs)
    memory = _number(found["memory"] / "memory.limit_in_bytes") if "memory" in found else 0
    pids = _number(found["pids"] / "pids.max") if "pids" in found else 0
    return BottleCgroup(1, tuple((c, str(d)) for c, d in dirs), memory, pids, None)


def _number(path: Path) -> int:
    """A limit file's value; 0 when it is "max", absent or unreadable."""
    text = _read(path).strip()
    return int(text) if text.isdigit() else 0


def hits(group: BottleCgroup) -> list[str]:
    """One line per limit the bottle ran into: processes killed for memory, forks refused."""
    messages = []
    killed = refused = 0
    for controller, directory in group.dirs:
        path = Path(directory)
        if controller in ("memory", "unified"):
            events = "memory.events" if group.version == 2 else "memory.oom_control"
            killed += _counter(path / events, "oom_kill")
        if controller in ("pids", "unified"):
            refused += _counter(path / "pids.events", "max")
    if killed:
        limit = format_size(group.memory) if group.memory else "its limit"
        messages.append(hit_message("memory", limit, f"{killed} process(es) in it were killed"))
    if refused:
        limit = str(group.pids) if group.pids else "its limit"
        messages.append(hit_message("pids", limit, f"{refused} new process(es) were refused"))
    return messages


def remove(group: BottleCgroup) -> list[str]:
    """Kill what is left in the cgroup and remove its directories; problems, if any remain."""
    problems = []
    for _, directory in group.dirs:
        path = Path(directory)
        deadline = time.monotonic() + REMOVE_TIMEOUT
        while path.exists():
            for pid in _read(path / "cgroup.procs").split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                path.rmdir()
            except FileNotFoundError:
                break
            except OSError:  # busy: the killed processes are still exiting
                if time.monotonic() > deadline:
                    problems.append(f"could not remove cgroup {path}")
                    break
                time.sleep(0.02)
    return problems


def leftovers(host: CgroupHost, live_names: set[str], state_root: Path) -> list[str]:
    """Cgroups of this state root's bottles that are not live (for `cleanup`)."""
    label = _root_label(state_root)
    found = []
    for _, base in host.bases:
        parent = Path(base) / PARENT
        with contextlib.suppress(OSError):
            for directory in sorted(parent.iterdir()):
                name, _, rest = directory.name.partition("@")
                if rest.removesuffix(BUNDLE_SUFFIX) == label and name not in live_names:
                    found.append(str(directory))
    return found


def is_bottle_cgroup(directory: str, root: Path = ROOT) -> bool:
    """Whether `directory` (e.g. read from a state record) is a bottle's cgroup we may remove."""
    path = Path(os.path.normpath(directory))
    return path.is_relative_to(root) and path.parent.name == PARENT


def _counter(path: Path, key: str) -> int:
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
