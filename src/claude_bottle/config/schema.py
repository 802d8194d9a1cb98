"""The config schema: the one place that lists every key and the TOML type of its value,
and the check of a file's data against it. Every error names where the layer came from
(`_Source`) and the dotted key."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Final, NamedTuple, TypeAlias

from claude_bottle.errors import ConfigError

# -- schema: the one place that lists every key ---------------------------------


class _Scalar(NamedTuple):  # not a dataclass: see bundle/settings.py
    kind: type
    what: str
    plural: str


class _ListOf(NamedTuple):
    item: _Spec


class _Table(NamedTuple):
    fields: Mapping[str, _Spec]
    required: frozenset[str] = frozenset()


class _MapOf(NamedTuple):
    """A table whose keys are chosen by the user (host names, remote names)."""

    value: _Spec


_Spec: TypeAlias = _Scalar | _ListOf | _Table | _MapOf

_STR: Final = _Scalar(str, "a string", "strings")
_BOOL: Final = _Scalar(bool, "a boolean (true or false)", "booleans")
_STRS: Final = _ListOf(_STR)
_INT: Final = _Scalar(int, "an integer", "integers")
_NUMBER: Final = _Scalar(float, "a number", "numbers")  # an integer is a number too

LIMIT_KEYS: Final = {
    "memory": _STR,
    "pids": _INT,
    "cpus": _NUMBER,
    "disk": _STR,
    "require_limits": _BOOL,
}

SCHEMA: Final = _Table(
    {
        "backend": _STR,
        "egress": _Table(
            {
                "allow": _STRS,
                "deny": _STRS,
                "mode": _STR,
                "ask_timeout": _NUMBER,
                "resolve": _MapOf(_STR),
                "intercept": _BOOL,
                "intercept_exclude": _STRS,
                "upstream_ca_file": _STR,
                "rules": _ListOf(
                    _Table(
                        {"host": _STR, "methods": _STRS, "paths": _STRS, "websocket": _BOOL},
                        frozenset({"host"}),
                    )
                ),
            }
        ),
        "dlp": _Table(
            {
                "enabled": _BOOL,
                "block": _BOOL,
                "patterns": _ListOf(
                    _Table({"name": _STR, "regex": _STR}, frozenset({"name", "regex"}))
                ),
                "ignore": _STRS,
                "ignore_fingerprints": _STRS,
            }
        ),
        "credentials": _Table(
            {
                "anthropic": _STR,
                "inject": _ListOf(
                    _Table(
                        {"hosts": _STRS, "env": _STR, "secret": _STR, "also_env": _STRS},
                        frozenset({"hosts", "env", "secret"}),
                    )
                ),
            }
        ),
        "gateway": _Table(
            {
                "anthropic_upstream": _STR,
                "upstream_ca_file": _STR,
                "max_tokens_total": _INT,
                "oauth_token_url": _STR,
                "mcp_servers": _BOOL,
                "web_fetch": _BOOL,
                "web_search": _BOOL,
                "files": _BOOL,
                "dlp": _STR,
            }
        ),
        "git": _Table(
            {
                "remotes": _MapOf(
                    _Table(
                        {
                            "url": _STR,
                            "push": _STRS,
                            "force": _BOOL,
                            "tags": _BOOL,
                            "delete": _BOOL,
                            "credential": _STR,
                        }
                    )
                )
            }
        ),
        "bottle": _Table(
            {
                "command": _STRS,
                "read_only": _STRS,
                "env": _STRS,
                "nested_sandbox": _BOOL,
                "audit_max": _STR,
                "audit_rate": _STR,
                "host_tools": _STR,
                "git_identity": _BOOL,
                **LIMIT_KEYS,
            }
        ),
        "docker": _Table({"base_image": _STR, "bundle": _STR}),
    }
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _quote(text: str, limit: int = 60) -> str:
    if len(text) > limit:
        text = text[:limit] + "…"
    return json.dumps(text)


def _key(prefix: str, name: str) -> str:
    part = name if _BARE_KEY.fullmatch(name) else json.dumps(name)
    return f"{prefix}.{part}" if prefix else part


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _expected(spec: _Spec) -> str:
    if isinstance(spec, _Scalar):
        return spec.what
    if isinstance(spec, _ListOf):
        if isinstance(spec.item, _Scalar):
            return f"an array of {spec.item.plural}"
        return "an array of tables"
    return "a table"


def _type_hint(spec: _Spec, key: str) -> str:
    """How to write a value of `spec` in TOML, for the error's hint."""
    if isinstance(spec, _Scalar):
        return "write true or false, without quotes" if spec.kind is bool else 'quote it: "…"'
    if isinstance(spec, _ListOf):
        if isinstance(spec.item, _Scalar) and spec.item.kind is str:
            return 'write an array, e.g. ["a", "b"]'
        return 'write an array of inline tables, e.g. [{name = "…", regex = "…"}]'
    return f"write it as a table: [{key}] on its own line, then its keys"


class _Source(NamedTuple):
    """Where a layer came from: a file (shown as the user would type it) or a flag."""

    label: str

    def error(self, key: str, problem: str, hint: str = "") -> ConfigError:
        where = f"{self.label}: {key}" if key else self.label
        return ConfigError(f"{where}: {problem}", hint)


# -- type checking against SCHEMA ---------------------------------------------------


def _check(value: object, spec: _Spec, key: str, src: _Source) -> None:
    if isinstance(spec, _Scalar):
        if type(value) is not spec.kind and not (spec.kind is float and type(value) is int):
            raise src.error(
                key, f"expected {spec.what}, got {_toml_type(value)}", _type_hint(spec, key)
            )
        if isinstance(value, str) and "\x00" in value:
            raise src.error(key, "contains a NUL character", "remove it")
        return
    if isinstance(spec, _ListOf):
        if not isinstance(value, list):
            raise src.error(
                key, f"expected {_expected(spec)}, got {_toml_type(value)}", _type_hint(spec, key)
            )
        for index, item in enumerate(value):
            _check(item, spec.item, f"{key}[{index}]", src)
        return
    if not isinstance(value, dict):
        raise src.error(key, f"expected a table, got {_toml_type(value)}", _type_hint(spec, key))
    if isinstance(spec, _MapOf):
        for name, item in value.items():
            _check(item, spec.value, _key(key, name), src)
        return
    for name, item in value.items():
        sub = spec.fields.get(name)
        if sub is None:
            raise _unknown_key(name, spec, key, src)
        _check(item, sub, _key(key, name), src)
    missing = sorted(spec.required - value.keys())
    if missing:
        raise src.error(
            _key(key, missing[0]),
            "missing; it is required here",
            f"add {missing[0]} = … to this entry",
        )


def _unknown_key(name: str, spec: _Table, key: str, src: _Source) -> ConfigError:
    import difflib  # only to word an error

    allowed = list(spec.fields)
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if not close:
        close = [a for a in allowed if a.lower() == name.lower()]
    problem = "unknown key"
    if close:
        problem += f"; did you mean {_key(key, close[0])}?"
    where = f"[{key}]" if key else "the top level"
    return src.error(_key(key, name), problem, f"keys allowed in {where}: {', '.join(allowed)}")
