"""`pending`, `allow [--always]` and `deny`: answering the requests an `ask`-mode bottle
holds, from a shell (the `supervise` view uses the same calls).

What a bundle answers comes from its bottle: it is escaped before it is printed, and
`--json` output is ASCII-only JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import click

from claude_bottle import paths
from claude_bottle.backend import records
from claude_bottle.backend.base import StoredBottle
from claude_bottle.errors import BottleError, ConfigError
from claude_bottle.tui.text import cut_host, plain

ALLOW_BY = "allow command"
DENY_BY = "deny command"


class Pending(NamedTuple):
    """One held host of one bottle, as `pending --json` prints it."""

    bottle: str
    host: str
    port: int
    waiting: int
    since: float
    first_line: str
    tool_call: str  # the Claude Code tool call running when it was held (advisory)


def live_record(name: str) -> StoredBottle:
    record = records.read(paths.validate_name(name))
    if not records.is_live(record):
        raise BottleError(
            f"bottle {name} is not running", "start it, or add the host to your config"
        )
    return record


def call(record: StoredBottle, op: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
    from claude_bottle.bundle import control

    return control.call(Path(record.bottle.control_socket), op, timeout=timeout, **args)


def pending_of(record: StoredBottle) -> list[Pending]:
    """The held hosts of one running bottle (empty when its bundle does not answer)."""
    try:
        answer = call(record, "pending", timeout=2.0)
    except BottleError:
        return []
    items = answer.get("pending") if answer.get("ok") else None
    found = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        found.append(
            Pending(
                record.bottle.name,
                str(item.get("host", ""))[:253],
                _int(item.get("port")),
                _int(item.get("waiting")),
                float(item["since"]) if isinstance(item.get("since"), int | float) else 0.0,
                str(item.get("first_line", ""))[:300],
                str(item.get("tool_call", ""))[:300],
            )
        )
    return found


def running() -> list[StoredBottle]:
    """The running bottles (one whose record cannot be read is not taken for one)."""
    listed = records.listing()
    return [r for r in listed if isinstance(r, StoredBottle) and records.is_live(r)]


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def pending(name: str | None, as_json: bool) -> None:
    live = [live_record(name)] if name else running()
    items = [item for record in live for item in pending_of(record)]
    if as_json:
        click.echo(json.dumps([item._asdict() for item in items], ensure_ascii=True, indent=2))
        return
    if not items:
        click.echo("no held requests")
        return
    now = time.time()
    rows = [("BOTTLE", "HOST", "WAITING", "FOR", "FIRST REQUEST", "TOOL CALL (advisory)")]
    for item in items:
        rows.append(
            (
                item.bottle,
                cut_host(f"{item.host}:{item.port}", 60),
                str(item.waiting),
                f"{max(0, round(now - item.since))}s",
                plain(item.first_line, 80) or "-",
                plain(item.tool_call, 80) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def allow(name: str, host: str, *, always: bool, by: str = ALLOW_BY) -> str:
    """Let HOST through for the running bottle; with `always`, also for every bottle
    from now on (the user config). Returns the normalised pattern."""
    record = live_record(name)
    answer = call(record, "allow", host=host, by=by)
    if not answer.get("ok"):
        raise ConfigError(f"cannot allow {host!r}: {plain(answer.get('error'))}")
    pattern = str(answer["pattern"])
    if always:
        from claude_bottle.cli.user_config import append_allow

        path = append_allow(pattern, bottle=record.bottle.name)
        click.echo(f"claude-bottle: added {pattern} to [egress] allow in {path}", err=True)
    return pattern


def deny(name: str, host: str, *, by: str = DENY_BY) -> tuple[str, int]:
    """Refuse HOST for the running bottle now and for its life: (host, requests answered)."""
    record = live_record(name)
    answer = call(record, "deny", host=host, by=by)
    if not answer.get("ok"):
        raise ConfigError(f"cannot deny {host!r}: {plain(answer.get('error'))}")
    return str(answer["host"]), _int(answer.get("answered"))
