"""Bottle records in the state dir: what ran, where, and whether it still runs.

A record is plain JSON (bottle.json) next to plan.json and audit.jsonl.
Liveness is never trusted from the record alone: a recorded pid counts only
if that process still exists with the same start time, so `ls` cannot call
a crashed bottle running.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from claude_bottle import paths


def process_start_time(pid: int) -> int | None:
    """Start time of a running process; None if it is gone or a zombie (dead, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_ref(pid: int) -> dict[str, int]:
    return {"pid": pid, "start": process_start_time(pid) or 0}


def process_alive(ref: dict[str, Any] | None) -> bool:
    if not ref:
        return False
    start = process_start_time(int(ref["pid"]))
    return start is not None and start == ref.get("start")


def write_record(name: str, record: dict[str, Any]) -> None:
    directory = paths.make_private_dir(paths.state_dir(name))
    tmp = directory / "bottle.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / "bottle.json")


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


def all_records() -> list[dict[str, Any]]:
    root = paths.bottles_dir()
    records = []
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            record = None
            with contextlib.suppress(Exception):
                record = read_record(entry.name)
            records.append(record or {"name": entry.name, "status": "unknown"})
    return records


def live_state(record: dict[str, Any]) -> str:
    """running, exited (N), crashed, failed or unknown — from the record and the process table."""
    status = record.get("status", "unknown")
    if status == "running":
        procs = record.get("processes", {})
        if procs and all(process_alive(ref) for ref in procs.values()):
            return "running"
        return "crashed"
    if status == "exited":
        return f"exited ({record.get('exit_code')})"
    return str(status)


def is_live(record: dict[str, Any]) -> bool:
    return live_state(record) == "running"


def age(record: dict[str, Any]) -> str:
    seconds = max(0, int(time.time() - float(record.get("created", time.time()))))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
