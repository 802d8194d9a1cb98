"""What `cleanup` removes for the namespace backend, and how it proves what it kills.

A process is killed only if a bottle's record names it, by pid *and* start time, and
that process still runs (checked through a pidfd, see `state.signal_process`). Nothing
is matched by command line: a stale runtime dir's path is a prefix of others' (`x-cl`
of `x-clx`), and any process, a bottle's own included, can put any path in its argv.
The bottle writes its home and parts of its runtime dir, so nothing there is read:
the records live in the state dir, outside its reach, and runtime dirs are removed
without following a link.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path

from claude_bottle import paths, state
from claude_bottle.backend import records
from claude_bottle.backend.base import CleanupPlan, StoredBottle
from claude_bottle.backend.records import Entry

RUNTIME = "runtime"
PROCESS = "process"


@dataclasses.dataclass(frozen=True)
class NamespaceCleanupPlan(CleanupPlan):
    # (bottle, role, pid, start time) of each recorded process still running; the
    # description in `items` is only for people.
    processes: tuple[tuple[str, str, int, int], ...] = ()


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()[:4096]
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def stray_processes(listed: Iterable[Entry], backend: str) -> list[tuple[str, str, int, int]]:
    """Recorded processes of `backend`'s bottles that are not running as a whole but
    still have a live process (e.g. a bundle whose bottle crashed). A record that cannot
    be read names none: nothing is signalled on its word."""
    found = []
    for record in listed:
        if not isinstance(record, StoredBottle) or record.bottle.backend != backend:
            continue
        if records.is_live(record):
            continue
        for role, ref in record.bottle.processes.items():
            if state.process_alive(ref):
                found.append((record.bottle.name, role, ref["pid"], ref["start"]))
    return found


def plan(backend: str, live_names: set[str]) -> NamespaceCleanupPlan:
    items: list[tuple[str, str]] = []
    root = paths.runtime_root()
    if root.is_dir() and not root.is_symlink():
        for directory in sorted(root.iterdir()):
            if directory.name not in live_names:
                items.append((RUNTIME, str(directory)))
    processes = stray_processes(records.listing(), backend)
    for bottle, role, pid, start in processes:
        command = _command_line(pid)[:120]
        items.append((PROCESS, f"{pid} ({role} of bottle {bottle}, started {start}): {command}"))
    return NamespaceCleanupPlan(backend, tuple(items), tuple(processes))


def run(cleanup: CleanupPlan) -> list[str]:
    assert isinstance(cleanup, NamespaceCleanupPlan)
    problems = []
    for _, _, pid, start in cleanup.processes:
        state.signal_process({"pid": pid, "start": start}, signal.SIGKILL)
    root = paths.runtime_root()
    for kind, what in cleanup.items:
        if kind != RUNTIME:
            continue
        directory = Path(what)
        if directory.parent != root:
            continue
        # rmtree neither follows a link inside nor removes a link given as the top.
        if directory.is_symlink():
            directory.unlink(missing_ok=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)
        if directory.exists() or directory.is_symlink():
            problems.append(f"could not remove {what}")
    return problems
