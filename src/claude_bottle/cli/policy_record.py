"""The effective policy a bottle was started with, kept in its record for `resume`.

`resume` of a stopped bottle starts it again; it must come back under the policy it
had, not under whatever the default config says today (a bottle started in `ask` mode
with deny rules from `--config` used to come back in `enforce` without them). So `run`
records its inputs (the `--config` file and `--allow` flags), every config file that
was honoured with the SHA-256 of the bytes used, and the effective policy itself.
`resume` loads the config again from the same inputs and starts only if it comes out
the same; otherwise it says what changed and needs `--replan`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from claude_bottle.config.model import Config


class PolicyInputs(NamedTuple):
    """What `run` was given besides the config files it found itself."""

    config_file: str | None
    allow: tuple[str, ...]


def _config_json(config: Config) -> dict[str, Any]:
    plain = _plain(config)
    assert isinstance(plain, dict)
    return plain


def _plain(value: Any) -> Any:
    """Records (NamedTuples) as JSON objects by field name, tuples as lists."""
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {key: _plain(item) for key, item in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _digest(data: object) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def record(config: Config, inputs: PolicyInputs) -> dict[str, Any]:
    """The `policy` entry of a bottle's record."""
    effective = _config_json(config)
    return {
        "config_file": inputs.config_file,
        "allow": list(inputs.allow),
        "sources": [{"path": s.path, "sha256": s.sha256} for s in config.sources],
        "effective": effective,
        "sha256": _digest(effective),
    }


def inputs_of(policy: Mapping[str, Any]) -> PolicyInputs | None:
    """The inputs a recorded policy was made from; None if the record is not one."""
    config_file, allow = policy.get("config_file"), policy.get("allow")
    if config_file is not None and not isinstance(config_file, str):
        return None
    if not isinstance(allow, list) or not all(isinstance(item, str) for item in allow):
        return None
    return PolicyInputs(config_file, tuple(allow))


def changes(policy: Mapping[str, Any], config: Config) -> list[str]:
    """How `config` (loaded again from the same inputs) differs from the recorded policy;
    empty when it is the same."""
    then = {}
    recorded_sources = policy.get("sources")
    if isinstance(recorded_sources, Sequence):
        for source in recorded_sources:
            if isinstance(source, Mapping):
                then[str(source.get("path"))] = str(source.get("sha256"))
    now = {source.path: source.sha256 for source in config.sources}
    found = []
    for path, digest in then.items():
        if path not in now:
            found.append(f"{path} is no longer honoured (gone, untrusted or not named)")
        elif now[path] != digest:
            found.append(f"{path} changed")
    found += [f"{path} is now honoured too" for path in now if path not in then]
    if list(then) != list(now) and not found:
        found.append("the config files are honoured in another order")
    if not found and policy.get("sha256") != _digest(_config_json(config)):
        found.append("the same files now give another policy (claude-bottle was updated?)")
    return found
