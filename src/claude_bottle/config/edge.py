"""`[[egress.rules]]` and `[[credentials.inject]]`: checked one entry at a time.

Both are user-only keys (`user_only.py`): rules imply that their host is allowed, and an
injection reads a secret on the host. Both need the bundle to see the requests: a host
excluded from TLS interception (or interception off) cannot have either, which is a
config error rather than a rule that silently does nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from claude_bottle.bundle.settings import InjectionSpec, RuleSpec
from claude_bottle.errors import ConfigError

ErrorFactory = Callable[[str, str, str], ConfigError]
_METHOD = re.compile(r"[A-Z]{1,20}|\*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB_CHARS = re.compile(r"[A-Za-z0-9._~!$&'()+,=:@%/*-]+")
_SECRET_KINDS = ("env", "file", "command")
DEFAULT_METHODS = ("GET", "HEAD")
DEFAULT_PATHS = ("/**",)


def _exact_host(host: str, key: str, error: ErrorFactory) -> str:
    if "*" in host or "/" in host:
        raise error(key, "must name one host, not a pattern", 'write it out, e.g. "api.github.com"')
    return host


def check_rule(entry: Mapping[str, object], key: str, host: str, error: ErrorFactory) -> RuleSpec:
    """One `[[egress.rules]]` table (types already checked); `host` is normalised."""
    host = _exact_host(host, f"{key}.host", error)
    methods = tuple(str(m).upper() for m in _list(entry.get("methods"), DEFAULT_METHODS))
    for index, method in enumerate(methods):
        if not _METHOD.fullmatch(method):
            raise error(f"{key}.methods[{index}]", "is not an HTTP method", 'e.g. "GET"')
    paths = tuple(_list(entry.get("paths"), DEFAULT_PATHS))
    if not paths:
        raise error(f"{key}.paths", "is empty, so the rule matches nothing", 'e.g. ["/**"]')
    from claude_bottle.policy.l7_paths import AmbiguousPath, normalise_path

    for index, glob in enumerate(paths):
        where = f"{key}.paths[{index}]"
        if not glob.startswith("/") or not _GLOB_CHARS.fullmatch(glob):
            raise error(
                where,
                "must be a path starting with '/', without a query",
                'e.g. "/repos/acme/*" (* within a segment, ** across)',
            )
        try:
            normalised = normalise_path(glob.replace("*", "x"))
        except AmbiguousPath as exc:
            hint = "write the path as servers see it"
            raise error(where, f"never matches: {exc}", hint) from None
        if normalised != glob.replace("*", "x"):
            raise error(
                where,
                "is not in normal form (an escaped unreserved character, or lower-case hex)",
                f"write {normalised!r} with its '*' back in place",
            )
    websocket = entry.get("websocket", False)
    assert isinstance(websocket, bool)
    return RuleSpec(host, methods, paths, websocket)


def check_injection(
    entry: Mapping[str, object],
    key: str,
    hosts: Sequence[str],
    error: ErrorFactory,
) -> InjectionSpec:
    """One `[[credentials.inject]]` table (types checked, hosts normalised); the
    placeholder is chosen when the bottle is planned."""
    if not hosts:
        raise error(f"{key}.hosts", "is empty", 'name the hosts, e.g. ["api.github.com"]')
    for index, host in enumerate(hosts):
        _exact_host(host, f"{key}.hosts[{index}]", error)
    names = [str(entry["env"]), *_list(entry.get("also_env"), ())]
    for name in names:
        if not _ENV_NAME.fullmatch(name):
            raise error(
                f"{key}.env",
                f"{name!r} is not an environment variable name",
                "use letters, digits and '_', not starting with a digit",
            )
    secret = str(entry["secret"])
    kind, sep, rest = secret.partition(":")
    if not sep or kind not in _SECRET_KINDS or not rest.strip():
        # never echoed: a user may have pasted the secret itself here
        raise error(
            f"{key}.secret",
            "expected env:NAME, file:PATH or command:ARGV (value not shown)",
            'e.g. secret = "command:gh auth token"',
        )
    if kind == "env" and not _ENV_NAME.fullmatch(rest):
        raise error(f"{key}.secret", "env: needs a variable name", "e.g. env:GITHUB_TOKEN")
    return InjectionSpec(tuple(hosts), names[0], secret, tuple(names[1:]))


def check_interception(
    rules: Iterable[RuleSpec],
    injections: Iterable[InjectionSpec],
    *,
    intercept: bool,
    excluded: Callable[[str], bool],
) -> None:
    """Rules and injections apply only to requests the bundle sees: refuse a host that
    is tunnelled opaquely (ConfigError, exit 2)."""
    needing = [(rule.host, "egress.rules") for rule in rules]
    needing += [(host, "credentials.inject") for i in injections for host in i.hosts]
    for host, key in needing:
        if not intercept:
            raise ConfigError(
                f"{key}: {host} needs TLS interception, and [egress] intercept = false",
                "turn interception on, or remove the entry",
            )
        if excluded(host):
            raise ConfigError(
                f"{key}: {host} is excluded from TLS interception "
                "([egress] intercept_exclude), so its requests cannot be seen",
                f"remove {host} from intercept_exclude, or remove the entry",
            )


def check_unique_env(injections: Sequence[InjectionSpec]) -> None:
    seen: set[str] = set()
    for injection in injections:
        for name in (injection.env, *injection.also_env):
            if name in seen:
                raise ConfigError(
                    f"credentials.inject: {name} is named by two injections",
                    "give each injection its own variables",
                )
            seen.add(name)


def _list(value: object, default: Sequence[str]) -> list[str]:
    if value is None:
        return list(default)
    assert isinstance(value, list)
    return [str(item) for item in value]
