"""Reading a bottle's record (bottle.json) back into its typed form.

The record lives in the user's state dir: we wrote it, but it may be truncated (a crash
mid-write before the rename existed, a full disk), hand-edited, or from an older version.
So it is checked, field by field, against the NamedTuples the launch wrote it from
(`BottleRecord` and the backend's own fields); what does not fit is refused with one
message naming the file and the fix.

Policy: a field the types name must be there (unless it has a default: the CLI's
`Lifecycle` keys, written after the launch) with the JSON type they give; a key they do
not name is ignored. Such a key is a newer (or older) version's: ignoring it keeps a
record readable across versions and gives it no meaning here. A record that cannot be
read is `Unreadable`: `ls` lists it, `cleanup --records` removes it, and nothing acts on
what it says (no process is signalled, no container kept for it).
"""

from __future__ import annotations

import json
import time
import types
import typing
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from claude_bottle import paths, state
from claude_bottle.backend.base import BottleRecord, Lifecycle, RecordFields, StoredBottle
from claude_bottle.errors import ConfigError

MAX_RECORD_BYTES = 1 << 20  # a record is a few KiB; anything near this is not ours
FIX = "`claude-bottle cleanup --records` removes the records of bottles that are not running"

T = TypeVar("T")


def _fits(value: object, hint: Any) -> bool:
    """Whether a JSON value has the type `hint` (as written in a record's NamedTuple)."""
    if hint is Any or hint is object:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return type(value) in (int, float)
    if hint in (int, str, bool):
        return type(value) is hint  # bool is no int here, nor the other way round
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _fits(k, key) and _fits(v, item) for k, v in value.items()
        )
    raise TypeError(f"a record field of type {hint!r} cannot be checked")


def parse_fields(kind: type[T], data: dict[str, Any], source: Path) -> T:
    """The fields of NamedTuple `kind` from `data`, each checked against its type."""
    hints = typing.get_type_hints(kind)
    defaults: dict[str, object] = getattr(kind, "_field_defaults", {})
    missing = [name for name in hints if name not in data and name not in defaults]
    if missing:
        raise ConfigError(
            f"{source} is not a complete bottle record: it lacks {', '.join(missing)} "
            "(written by another version of claude-bottle?)",
            FIX,
        )
    present = {name: data[name] for name in hints if name in data}
    wrong = [name for name, value in present.items() if not _fits(value, hints[name])]
    if wrong:
        raise ConfigError(f"{source} has a malformed bottle record: {', '.join(wrong)}", FIX)
    return kind(**present)


def _no_constant(word: str) -> object:
    """NaN and Infinity are no JSON, and no time or size we record."""
    raise ValueError(word)


def _source(name: str) -> Path:
    return paths.state_dir(name) / "bottle.json"


def load(name: str) -> dict[str, Any]:
    """The JSON object in bottle `name`'s record file, bounded in size."""
    source = _source(name)
    try:
        with source.open("rb") as handle:
            raw = handle.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"no bottle named {name}", "see `claude-bottle ls`") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}", FIX) from None
    if len(raw) > MAX_RECORD_BYTES:
        raise ConfigError(f"{source} is larger than any bottle record", FIX)
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than any record
        raise ConfigError(f"{source} is not a bottle record (truncated?)", FIX) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} is not a bottle record (no JSON object)", FIX)
    return data


def parse(data: dict[str, Any], source: Path, own: type[RecordFields]) -> StoredBottle:
    """A bottle's typed record from the JSON object read from `source`."""
    bottle = parse_fields(BottleRecord, data, source)
    lifecycle = parse_fields(Lifecycle, data, source)
    return StoredBottle(bottle, parse_fields(own, data, source), lifecycle)


def read(name: str) -> StoredBottle:
    """Bottle `name`'s typed record, its backend's own fields included (ConfigError,
    naming the file and the fix, when there is none or it cannot be read)."""
    from claude_bottle.backend import registry

    source = _source(name)
    data = load(name)
    backend = data.get("backend")
    if not isinstance(backend, str) or backend not in registry.names():
        raise ConfigError(f"{source} names no known backend ({backend!r})", FIX)
    return parse(data, source, registry.get(backend).record_fields())


class Unreadable(NamedTuple):
    """A bottle whose record cannot be read: `problem` says why (with the fix); None
    when it has none (yet: its launch is under way, or failed before it wrote one)."""

    name: str
    problem: ConfigError | None


Entry = StoredBottle | Unreadable


def find(name: str) -> Entry | None:
    """Bottle `name`'s record, why it cannot be read, or None when it has none."""
    paths.validate_name(name)
    if not _source(name).exists():
        return None
    try:
        return read(name)
    except ConfigError as exc:
        return Unreadable(name, exc)


def entry(name: str) -> Entry:
    """Bottle `name`'s record, or why it cannot be read (ConfigError when there is none)."""
    found = find(name)
    if found is None:
        raise ConfigError(f"no bottle named {name}", "see `claude-bottle ls`")
    return found


def listing() -> list[Entry]:
    """Every bottle in the state dir, by name."""
    root = paths.bottles_dir()
    if not root.is_dir():
        return []
    found: list[Entry] = []
    for directory in sorted(root.iterdir()):
        try:
            found.append(find(directory.name) or Unreadable(directory.name, None))
        except ConfigError as exc:  # not a bottle's name
            found.append(Unreadable(directory.name, exc))
    return found


def live_state(record: Entry) -> str:
    """running, exited (N), crashed, stopped, failed or unknown: from the record and the
    process table (a recorded process counts only while it is still that process)."""
    if isinstance(record, Unreadable):
        return "unknown"
    status = record.bottle.status
    if status == "running":
        processes = record.bottle.processes
        if processes and all(state.process_alive(ref) for ref in processes.values()):
            return "running"
        return "crashed"
    if status == "exited":
        return f"exited ({record.lifecycle.exit_code})"
    return status


def is_live(record: Entry) -> bool:
    return live_state(record) == "running"


def age(record: Entry) -> str:
    if isinstance(record, Unreadable):
        return "?"
    seconds = max(0, int(time.time() - record.bottle.created))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
