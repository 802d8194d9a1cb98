"""Plans: what a command would do, as data that prints itself.

A plan is computed without side effects, shown by `claude-bottle plan`,
stored as plan.json in the bottle's state dir, and then carried out by the
backend. Every field a person needs to judge the bottle is in it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import IO, Any, NamedTuple


class PlanSection(NamedTuple):  # not a dataclass: see bundle/settings.py
    """A titled group of `key: value` lines in a printed plan."""

    title: str
    rows: tuple[tuple[str, str], ...]


def _jsonable(value: Any) -> Any:
    """`value` as JSON-able data: records (dataclasses, NamedTuples) become objects by field
    name, tuples lists, dict keys strings, paths strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # a NamedTuple record
        return {name: _jsonable(item) for name, item in value._asdict().items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


class Printable:
    """Mixin for plan dataclasses: `.sections()` feeds both `.print()` and `.to_json()`."""

    def sections(self) -> Sequence[PlanSection]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        result = _jsonable(self)
        assert isinstance(result, dict)
        return result

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def render(self) -> str:
        """The plan as text; every value escaped, since some (a command line `cleanup`
        found, a command from a workspace file) come from the bottle's side."""
        from claude_bottle.safe_text import escape

        lines: list[str] = []
        for section in self.sections():
            lines.append(escape(section.title))
            rows = [(escape(key), escape(value)) for key, value in section.rows]
            width = max((len(k) for k, _ in rows), default=0)
            for key, value in rows:
                lines.append(f"  {key.ljust(width)}  {value}")
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    def print(self, stream: IO[str] | None = None) -> None:
        (stream or sys.stdout).write(self.render())
