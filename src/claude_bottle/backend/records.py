"""Reading a bottle's record (bottle.json) back into its typed form.

The record lives in the user's state dir: we wrote it, but it may be truncated (a crash
mid-write before the rename existed, a full disk), hand-edited, or from an older version.
So it is checked, field by field, against the NamedTuples the launch wrote it from
(`BottleRecord` and the backend's own fields); what does not fit is refused with one
message naming the file and the fix.

Policy: a field the types name must be there with the JSON type they give; a key they
do not name is ignored. Such keys are the lifecycle keys the CLI adds later (`owner`,
`policy`, `exit_code`, `ended`, read by the CLI itself) or a newer version's additions:
ignoring them keeps a record readable across versions and gives them no meaning here.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from claude_bottle import paths
from claude_bottle.backend.base import BottleRecord, RecordFields, StoredBottle
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
    missing = [name for name in hints if name not in data]
    if missing:
        raise ConfigError(
            f"{source} is not a complete bottle record: it lacks {', '.join(missing)} "
            "(written by another version of claude-bottle?)",
            FIX,
        )
    wrong = [name for name, hint in hints.items() if not _fits(data[name], hint)]
    if wrong:
        raise ConfigError(f"{source} has a malformed bottle record: {', '.join(wrong)}", FIX)
    return kind(**{name: data[name] for name in hints})


def load(source: Path) -> dict[str, Any]:
    """The JSON object in a record file, bounded in size."""
    try:
        with source.open("rb") as handle:
            raw = handle.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"no bottle record at {source}", "see `claude-bottle ls`") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}", FIX) from None
    if len(raw) > MAX_RECORD_BYTES:
        raise ConfigError(f"{source} is larger than any bottle record", FIX)
    try:
        data = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{source} is not a bottle record (truncated?)", FIX) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} is not a bottle record (no JSON object)", FIX)
    return data


def parse(data: dict[str, Any], source: Path, own: type[RecordFields]) -> StoredBottle:
    """A bottle's typed record from the JSON object read from `source`."""
    bottle = parse_fields(BottleRecord, data, source)
    return StoredBottle(bottle, parse_fields(own, data, source))


def read(name: str) -> StoredBottle:
    """Bottle `name`'s typed record, its backend's own fields included."""
    from claude_bottle.backend import registry

    source = paths.state_dir(name) / "bottle.json"
    data = load(source)
    backend = data.get("backend")
    if not isinstance(backend, str) or backend not in registry.names():
        raise ConfigError(f"{source} names no known backend ({backend!r})", FIX)
    return parse(data, source, registry.get(backend).record_fields())
