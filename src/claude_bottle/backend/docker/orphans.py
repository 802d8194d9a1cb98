"""What a killed launch left running on this host: its docker clients still on their way
(a `docker run` creating a container, a `volume create`) and its watchdog's teardown.

`cleanup` right after `kill -9` of the CLI races them: it lists a container the watchdog
is removing, or removes a volume before the container that uses it is gone ("volume is in
use"), or misses a container created after it listed. So it waits for them first (the
watchdog's teardown takes seconds), and lists again once they are done.

A process is one of ours when it runs as us in this host's pid namespace (a bottle's
processes are in one of their own, so a bottle cannot make `cleanup` wait by naming our
labels in its command lines) and its command line carries this state root's label (the
engine clients pass `--label`, the watchdog the launch's labels as JSON); it belongs to a
killed launch when its bottle is not live and its parent is no longer a claude-bottle
process (the CLI that started it died: it was handed to init).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from claude_bottle.backend.docker.bottle_plan import LABEL_BOTTLE, LABEL_STATE

MAX_ARGV = 256 * 1024  # a docker client's command line is a few KiB
CLAUDE_BOTTLE = (b"claude_bottle", b"claude-bottle")


class Orphan(NamedTuple):
    pid: int
    bottle: str
    # An attached `docker run --rm` (host placement's agent container): it ends only once
    # its container is removed, so it is not waited for but its container removed.
    attached: bool


def _labels(argv: list[bytes]) -> dict[str, str]:
    """The claude-bottle labels an argv carries: `--label k=v`, `label=k=v` filters, or
    the watchdog's JSON object."""
    found: dict[str, str] = {}
    for raw in argv:
        arg = raw.decode("utf-8", "replace")
        if arg.startswith("{"):
            try:
                parsed = json.loads(arg)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                found.update({str(k): str(v) for k, v in parsed.items()})
            continue
        key, sep, value = arg.removeprefix("label=").partition("=")
        if sep and key.startswith("claude-bottle."):
            found[key] = value
    return found


def _parent(pid_dir: Path) -> int:
    stat = (pid_dir / "stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def _launched_by_a_live_cli(pid_dir: Path, proc: Path) -> bool:
    """Whether the process's parent is a claude-bottle process (a launch, `stop` or this
    `cleanup` in progress) rather than init (its CLI was killed)."""
    try:
        parent = _parent(pid_dir)
        cmdline = (proc / str(parent) / "cmdline").read_bytes()[:MAX_ARGV]
    except (OSError, ValueError, IndexError):
        return False
    return parent > 1 and any(mark in cmdline for mark in CLAUDE_BOTTLE)


def find(state_label: str, live_names: set[str], proc: Path = Path("/proc")) -> list[Orphan]:
    """This state root's processes of killed launches whose bottles are not live."""
    found = []
    try:
        own_namespace = os.readlink(proc / "self" / "ns" / "pid")
    except OSError:
        return []
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid_dir = Path(entry.path)
        try:
            if pid_dir.stat().st_uid != os.getuid():
                continue
            if os.readlink(pid_dir / "ns" / "pid") != own_namespace:
                continue  # a bottle's process (or a container's): never a launch's client
            with (pid_dir / "cmdline").open("rb") as handle:
                argv = handle.read(MAX_ARGV).split(b"\0")
        except OSError:
            continue
        labels = _labels(argv)
        bottle = labels.get(LABEL_BOTTLE, "")
        if labels.get(LABEL_STATE) != state_label or bottle in live_names:
            continue
        if _launched_by_a_live_cli(pid_dir, proc):
            continue
        attached = len(argv) > 2 and argv[1:3] == [b"run", b"--rm"]
        found.append(Orphan(int(entry.name), bottle, attached))
    return found
