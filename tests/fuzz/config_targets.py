"""Fuzz targets for the config loader (config/load.py and the schema, values and merge modules).

A workspace's `.claude-bottle.toml` is written by the agent, so the loader reads hostile
bytes. Properties: `load_config` (a user config) and `check_project_file` (a workspace
file) raise nothing but ConfigError, for arbitrary bytes and for arbitrary TOML
structures shaped like the schema (right keys with wrong types, odd values, unknown keys);
and what a load accepts is normalised (every host pattern is its own normal form).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import shutil
import tempfile
from pathlib import Path

from claude_bottle.config.load import check_project_file, load_config
from claude_bottle.config.schema import SCHEMA, _ListOf, _MapOf, _Scalar, _Spec, _Table
from claude_bottle.errors import ConfigError
from claude_bottle.policy.allowlist import validate_pattern
from tests.fuzz.source import Source

BACKENDS = ("namespace", "docker")
_DIR = Path(tempfile.mkdtemp(prefix="fuzz-config-"))  # one per process, in the temp dir
atexit.register(shutil.rmtree, _DIR, True)
WORKSPACE = _DIR / "ws"
WORKSPACE.mkdir()
USER_CONFIG = _DIR / "config.toml"

STRINGS = [
    "",
    "namespace",
    "docker",
    "enforce",
    "audit",
    "ask",
    "block",
    "warn",
    "revert",
    "github.com",
    "*.example.com",
    "*.com",
    "10.0.0.0/8",
    "10.0.0.1/8",
    "::1",
    "0x7f.1",
    "127.0.0.1:8443",
    "[::1]:80",
    "::1:80",
    "127.0.0.1:٨٠",
    "1G",
    "64K",
    "63K",
    "0",
    "-1",
    "1e3",
    "99999999999999999999T",
    "env:ANTHROPIC_API_KEY",
    "env:",
    "file:/x",
    "file:rel",
    "keychain",
    "https://github.com/a/b.git",
    "git@github.com:a/b.git",
    "http://u:p@h/",
    "https://[::1/",
    "ssh://",
    "/abs",
    "~",
    "~/x",
    "~nosuchuser-fuzz/ca.pem",
    "/" + "x" * 300,
    "/" + "d/" * 3000,
    "/dev/null",
    "/etc/hosts",
    "[a-z]+",
    "(a+)+$",
    "a{99999999999}",
    "(?P<x>",
    "x*",
    "(" * 200 + ")" * 200,
    "\\d{3}",
    "FOO",
    "API_TOKEN",
    "1X",
    "claude/*",
    "-x",
    "a..b",
    "debian:12",
    "ghcr.io/a/b:1@sha256:" + "0" * 64,
    "UPPER/x",
    "é",
    "\u202e",
    "\x7f",
]
KEYS = ["origin", "a.test", "github.com", "*.x.test", "", "é", "a b", "x" * 70, "[::1]", "FOO"]


def _value(source: Source, spec: _Spec, depth: int) -> object:
    """A value for `spec`, now and then of a wrong type."""
    if source.chance(14) or depth > 4:
        return _any_value(source, depth)
    if isinstance(spec, _Scalar):
        if spec.kind is str:
            return source.pick(STRINGS) if source.chance(220) else source.text(20)
        if spec.kind is bool:
            return source.chance(128)
        if spec.kind is int:
            return source.pick([0, 1, -1, 7, 64, 4096, 2**31, 2**63 - 1, -(2**63)])
        return source.pick([0.0, 0.5, 1.5, -1.0, 1e300, math.inf, math.nan, 3])
    if isinstance(spec, _ListOf):
        return [_value(source, spec.item, depth + 1) for _ in range(source.below(4))]
    if isinstance(spec, _MapOf):
        return {_key(source): _value(source, spec.value, depth + 1) for _ in range(source.below(4))}
    return _table(source, spec, depth + 1)


def _key(source: Source) -> str:
    return source.pick(KEYS) if source.chance(220) else source.text(10)


def _table(source: Source, spec: _Table, depth: int) -> dict[str, object]:
    names = list(spec.fields)
    table: dict[str, object] = {}
    for _ in range(source.below(len(names) + 2)):
        if source.chance(10):
            table[_key(source)] = _any_value(source, depth)
        else:
            name = source.pick(names)
            table[name] = _value(source, spec.fields[name], depth)
    return table


def _any_value(source: Source, depth: int) -> object:
    kind = source.below(7 if depth < 4 else 5)
    if kind == 0:
        return source.text(12)
    if kind == 1:
        return source.pick([0, -5, 2**40])
    if kind == 2:
        return source.chance(128)
    if kind == 3:
        return source.pick([1.5, -0.0, math.inf])
    if kind == 4:
        return []
    if kind == 5:
        return [_any_value(source, depth + 1) for _ in range(source.below(3))]
    return {_key(source): _any_value(source, depth + 1) for _ in range(source.below(3))}


# -- a minimal TOML writer: inline tables and arrays, basic strings ----------------------


def _string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML wants DEL escaped as well
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    assert isinstance(value, dict)
    pairs = (f"{_string(key)} = {_toml_value(item)}" for key, item in value.items())
    return "{" + ", ".join(pairs) + "}"


def to_toml(document: dict[str, object]) -> bytes:
    return "".join(
        f"{_string(key)} = {_toml_value(value)}\n" for key, value in document.items()
    ).encode("utf-8", "surrogatepass")


# -- targets ----------------------------------------------------------------------------


def _load(content: bytes) -> None:
    USER_CONFIG.write_bytes(content)
    try:
        config = load_config(
            workspace=WORKSPACE,
            user_config=USER_CONFIG,
            known_backends=BACKENDS,
            warn=lambda _message: None,
        )
    except ConfigError:
        pass
    else:
        for pattern in (*config.egress.allow, *config.egress.deny):
            assert validate_pattern(pattern) == pattern, pattern
    with contextlib.suppress(ConfigError):
        check_project_file(WORKSPACE / ".claude-bottle.toml", content, known_backends=BACKENDS)


def config_bytes(data: bytes) -> None:
    """Arbitrary bytes, and TOML-ish text cut from the pool, as a config file."""
    source = Source(data)
    if source.chance(128):
        _load(source.rest())
        return
    lines = []
    for _ in range(source.below(6)):
        section = source.pick(["", "[egress]", "[bottle]", "[dlp]", "[[dlp.patterns]]", "[x"])
        key = source.pick(["allow", "mode", "memory", "a.b", "'q'", '"e"', "=", ""])
        value = source.pick(['"x"', "[", "1", "true", '"""', "{a=1}", "1979-05-27", "0x1"])
        lines.append(f"{section}\n{key} = {value}")
    _load("\n".join(lines).encode())


def config_structure(data: bytes) -> None:
    """A TOML document shaped like the schema, with odd values and wrong types."""
    source = Source(data)
    document = _table(source, SCHEMA, 0)
    _load(to_toml(document))
