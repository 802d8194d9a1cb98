"""Bottle records in the state dir, and the processes they name.

A record is plain JSON (bottle.json) next to plan.json and audit.jsonl; it is read
back typed by `backend.records`. A recorded process counts only if that process
still exists with the same start time, so `ls` cannot call a crashed bottle running
and `stop` cannot signal a recycled pid.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_bottle import paths

if TYPE_CHECKING:
    import subprocess


def process_start_time(pid: int) -> int | None:
    """Start time of a running process; None if it is gone or a zombie (dead, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X") or not fields[19].isdigit():
        return None
    return int(fields[19])


def process_ref(pid: int) -> dict[str, int]:
    return {"pid": pid, "start": process_start_time(pid) or 0}


def _pid_and_start(ref: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """A recorded process as (pid, start time), or None unless both are plausible: a pid
    above 1 (never 0, -1 or a process group, which os.kill would take as "many") and a
    known start time."""
    if not isinstance(ref, Mapping):
        return None
    pid, start = ref.get("pid"), ref.get("start")
    if type(pid) is not int or type(start) is not int or pid <= 1 or start <= 0:
        return None
    return pid, start


def process_alive(ref: Mapping[str, Any] | None) -> bool:
    """Whether the process recorded in `ref` still runs: same pid *and* same start time,
    so a recycled pid is never taken for it."""
    recorded = _pid_and_start(ref)
    if recorded is None:
        return False
    pid, start = recorded
    return process_start_time(pid) == start


def signal_process(ref: Mapping[str, Any] | None, signum: int) -> bool:
    """Send `signum` to the process recorded in `ref` if, and only if, it is still that
    process; True if it was sent.

    The process is pinned with a pidfd before its start time is checked, and signalled
    through that pidfd, so it cannot exit and its pid be reused in between.
    """
    recorded = _pid_and_start(ref)
    if recorded is None:
        return False
    pid, start = recorded
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd here (not Linux, or a kernel before 5.3)
        if process_start_time(pid) != start:
            return False
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True
    try:
        if process_start_time(pid) != start:
            return False
        import signal  # only when something is stopped

        try:
            signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            return False
        return True
    finally:
        os.close(pidfd)


def wait_child(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to `timeout` seconds for a child to exit; True once it has (reaped).

    Woken by the child's pidfd the moment it exits: `Popen.wait(timeout)` polls with sleeps
    growing to 50 ms, which a teardown waiting on a docker client paid on every start.
    """
    if process.poll() is not None:
        return True
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd here, or already reaped
        pidfd = None
    if pidfd is not None:
        import select

        try:
            select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
        return process.poll() is not None
    import subprocess

    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def write_record(name: str, record: dict[str, Any]) -> None:
    directory = paths.make_private_dir(paths.state_dir(name))
    tmp = directory / "bottle.json.tmp"
    try:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, directory / "bottle.json")
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk leaves the old record whole, no stray half
        raise


def read_record(name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((paths.state_dir(name) / "bottle.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def update_record(name: str, **changes: Any) -> dict[str, Any]:
    record = read_record(name) or {"name": name}
    record.update(changes)
    write_record(name, record)
    return record


def note_ending(name: str, **changes: Any) -> None:
    """`update_record` at a bottle's end, where the disk may be the reason it ended (its
    state dir full): a record that cannot be written is said on stderr, never raised over
    the command's status or why the bottle stopped."""
    try:
        update_record(name, **changes)
    except OSError as exc:
        sys.stderr.write(
            f"claude-bottle: warning: cannot record how bottle {name} ended: {exc.strerror}\n"
        )
