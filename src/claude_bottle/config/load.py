"""Load, validate and merge claude-bottle configuration (SPEC: Policy and configuration).

Layers, later wins for scalars:

1. built-in defaults (`claude_bottle.config.model`);
2. the user config (`$CLAUDE_BOTTLE_CONFIG`, else
   `<user config dir>/claude-bottle/config.toml`; a missing default file is fine);
3. the workspace's `.claude-bottle.toml`, only if the user trusted its exact bytes;
4. `extra_file` (`--config`), which must exist;
5. command-line flags (`--allow`, `--backend`).

`egress.allow`, `egress.deny`, `egress.resolve`, `dlp.patterns`,
`dlp.ignore`, `dlp.ignore_fingerprints`, `bottle.read_only` and `bottle.env`
accumulate across layers (duplicates dropped, first position kept; a pin or
DLP pattern redefined under the same host or name takes the later value).
`git.remotes` merge by remote name, key by key. `egress.rules` and `credentials.inject`
(user-only, `config.edge`) accumulate too; two injections may not name one variable.

Every problem is a `ConfigError` whose message reads
`<file>: <dotted.key>: <problem>`. Values that could be secrets (the
credential reference, git URLs) are never echoed back.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple, TypeAlias
from urllib.parse import urlsplit

# SECRET_NAME: the same rule the bottle environment builder applies as a last line of defence.
from claude_bottle.bottle_env import SECRET_NAME
from claude_bottle.bundle.settings import InjectionSpec, RuleSpec
from claude_bottle.config.edge import (
    check_injection,
    check_interception,
    check_rule,
    check_unique_env,
)
from claude_bottle.config.model import (
    DEFAULT_ALLOW,
    DEFAULT_ANTHROPIC_CREDENTIAL,
    DEFAULT_BACKEND,
    DEFAULT_COMMAND,
    DEFAULT_PUSH,
    DOCKER_BUNDLE_PLACEMENTS,
    EGRESS_MODES,
    GATEWAY_DLP_MODES,
    HOST_TOOLS_MODES,
    BottleSection,
    Config,
    ConfigSource,
    CredentialsConfig,
    DlpConfig,
    DlpPattern,
    DockerSection,
    EgressConfig,
    GatewayConfig,
    GitRemote,
    ResolvePin,
)
from claude_bottle.config.trust import TrustStore, digest_of, display_path, read_config_file
from claude_bottle.config.user_only import refuse_user_only
from claude_bottle.errors import ConfigError
from claude_bottle.limits import (
    MAX_CPUS,
    MAX_PIDS,
    MIN_DISK,
    MIN_MEMORY,
    MIN_PIDS,
    Limits,
    format_size,
    parse_size,
)

PROJECT_FILE: Final = ".claude-bottle.toml"
CONFIG_ENV: Final = "CLAUDE_BOTTLE_CONFIG"


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

# -- value rules -------------------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REMOTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_DLP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # policy.dlp.finding_fingerprint
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCP_URL = re.compile(r"(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+:(?!//).+")
_URL_SCHEMES = ("https", "ssh")  # the git gate's hardened git speaks only these
_BAD_BRANCH_CHARS = frozenset("~^:\\")
_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")
_PATTERN_HINT = "fix the pattern or remove it"


def print_to_stderr(message: str) -> None:
    print(f"claude-bottle: warning: {message}", file=sys.stderr)


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


# -- reading files ------------------------------------------------------------------


def _parse_toml(content: bytes, src: _Source) -> dict[str, object]:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise src.error(
            "", f"not valid UTF-8 (byte {exc.start})", "save the file as UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        detail = str(exc)
        match = _TOML_POSITION.search(detail)
        if match is None:
            position = ""
        elif match.group(1):
            position = f"line {match.group(1)}, column {match.group(2)}: "
        else:
            position = f"line {max(1, len(text.splitlines()))} (end of file): "
        if match is not None:
            detail = detail[: match.start()]
        raise src.error(
            "", f"{position}invalid TOML: {detail}", "fix the syntax (see https://toml.io)"
        ) from None
    return data


def _default_user_config() -> tuple[Path, bool]:
    """The user config path and whether the user named it explicitly (then it must exist)."""
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser(), True
    import platformdirs

    return platformdirs.user_config_path("claude-bottle") / "config.toml", False


def user_config_path() -> Path:
    """Where the user config is (`$CLAUDE_BOTTLE_CONFIG`, else the platform's default)."""
    return _default_user_config()[0]


def _inside(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory.resolve())
    except OSError:
        return False


# -- merging ------------------------------------------------------------------------


@dataclass
class _RemoteDraft:
    source: _Source
    url: str | None = None
    push: tuple[str, ...] = DEFAULT_PUSH
    force: bool = False
    tags: bool = False
    delete: bool = False
    credential: str = "git"


def _ordered(items: Iterable[str]) -> dict[str, None]:
    return dict.fromkeys(items)


@dataclass
class _Merged:
    known_backends: tuple[str, ...]
    backend: str = DEFAULT_BACKEND
    allow: dict[str, None] = field(default_factory=lambda: _ordered(DEFAULT_ALLOW))
    deny: dict[str, None] = field(default_factory=dict)
    mode: str = "enforce"
    ask_timeout: float = 300.0
    resolve: dict[str, ResolvePin] = field(default_factory=dict)
    intercept: bool = True
    intercept_exclude: dict[str, None] = field(default_factory=dict)
    upstream_ca_file: str | None = None
    rules: list[RuleSpec] = field(default_factory=list)
    inject: list[InjectionSpec] = field(default_factory=list)
    dlp_enabled: bool = True
    dlp_block: bool = True
    patterns: dict[str, DlpPattern] = field(default_factory=dict)
    # rule id -> where it was named (checked once every file's own patterns are known)
    dlp_ignore: dict[str, tuple[_Source, str]] = field(default_factory=dict)
    dlp_ignore_fingerprints: dict[str, None] = field(default_factory=dict)
    anthropic: str = DEFAULT_ANTHROPIC_CREDENTIAL
    gateway: dict[str, object] = field(default_factory=dict)
    remotes: dict[str, _RemoteDraft] = field(default_factory=dict)
    command: tuple[str, ...] = DEFAULT_COMMAND
    read_only: dict[str, None] = field(default_factory=dict)
    env: dict[str, None] = field(default_factory=dict)
    nested_sandbox: bool = False
    audit: dict[str, int] = field(default_factory=dict)
    host_tools: str = "warn"
    git_identity: bool = True
    base_image: str | None = None
    docker_bundle: str = "auto"
    limits: Limits = field(default_factory=Limits)
    sources: list[ConfigSource] = field(default_factory=list)

    # -- a whole file

    def apply_file(
        self, path: Path, content: bytes, src: _Source, *, workspace_file: bool = False
    ) -> None:
        data = _parse_toml(content, src)
        _check(data, SCHEMA, "", src)
        if workspace_file:
            refuse_user_only(data, src.label)
        if "backend" in data:
            self.backend = self.check_backend(_str(data["backend"]), "backend", src)
        self.apply_egress(_table(data.get("egress")), src)
        self.apply_dlp(_table(data.get("dlp")), src)
        credentials = _table(data.get("credentials"))
        if "anthropic" in credentials:
            self.anthropic = _check_credential(
                _str(credentials["anthropic"]), "credentials.anthropic", src
            )
        for index, entry in enumerate(_tables(credentials.get("inject"))):
            key = f"credentials.inject[{index}]"
            hosts = [
                _host_pattern(host, f"{key}.hosts[{n}]", src)
                for n, host in enumerate(_strs(entry.get("hosts")))
            ]
            self.inject.append(check_injection(entry, key, hosts, src.error))
        self.apply_gateway(_table(data.get("gateway")), src)
        remotes = _table(_table(data.get("git")).get("remotes"))
        for name, remote in remotes.items():
            self.apply_remote(name, _table(remote), src)
        self.apply_bottle(_table(data.get("bottle")), src)
        self.sources.append(ConfigSource(str(path), digest_of(content)))
        docker = _table(data.get("docker"))
        if "base_image" in docker:
            self.base_image = _image_reference(_str(docker["base_image"]), src)
        if "bundle" in docker:
            self.docker_bundle = self.check_docker_bundle(
                _str(docker["bundle"]), "docker.bundle", src
            )

    def check_docker_bundle(self, value: str, key: str, src: _Source) -> str:
        if value in DOCKER_BUNDLE_PLACEMENTS:
            return value
        choices = ", ".join(DOCKER_BUNDLE_PLACEMENTS)
        raise src.error(
            key,
            f"expected one of {choices}, got {_quote(value)}",
            "host runs the bundle as a host process, container in a container beside the "
            "agent; auto picks host when the engine can reach a host socket",
        )

    def check_backend(self, name: str, key: str, src: _Source) -> str:
        if name in self.known_backends:
            return name
        known = ", ".join(self.known_backends) or "(none)"
        problem = f"unknown backend {_quote(name)}"
        import difflib  # only to word an error

        close = difflib.get_close_matches(name, self.known_backends, n=1)
        if close:
            problem += f"; did you mean {_quote(close[0])}?"
        raise src.error(key, f"{problem} (known: {known})", f"choose one of: {known}")

    def apply_egress(self, egress: Mapping[str, object], src: _Source) -> None:
        for name, target in (("allow", self.allow), ("deny", self.deny)):
            for index, pattern in enumerate(_strs(egress.get(name))):
                target.setdefault(_host_pattern(pattern, f"egress.{name}[{index}]", src))
        if "mode" in egress:
            self.mode = _one_of(
                egress["mode"],
                EGRESS_MODES,
                "egress.mode",
                "enforce blocks, audit only logs, ask holds each new host for approval",
                src,
            )
        if "ask_timeout" in egress:
            timeout = egress["ask_timeout"]
            assert isinstance(timeout, int | float)  # the schema checked it
            if not 1 <= timeout <= 86400:
                raise src.error(
                    "egress.ask_timeout",
                    f"expected seconds from 1 to 86400, got {timeout:g}",
                    "set it to how long a held request may wait for `claude-bottle allow`",
                )
            self.ask_timeout = float(timeout)
        if "intercept" in egress:
            self.intercept = _bool(egress["intercept"])
        for index, pattern in enumerate(_strs(egress.get("intercept_exclude"))):
            key = f"egress.intercept_exclude[{index}]"
            self.intercept_exclude.setdefault(_host_pattern(pattern, key, src))
        if "upstream_ca_file" in egress:
            raw = _str(egress["upstream_ca_file"])
            self.upstream_ca_file = _ca_file(raw, "egress.upstream_ca_file", src)
        for index, entry in enumerate(_tables(egress.get("rules"))):
            key = f"egress.rules[{index}]"
            host = _host_pattern(_str(entry["host"]), f"{key}.host", src)
            self.rules.append(check_rule(entry, key, host, src.error))
            self.allow.setdefault(host)  # rules imply the host, for what they admit
        for host, target_value in _table(egress.get("resolve")).items():
            pin = _resolve_pin(host, _str(target_value), _key("egress.resolve", host), src)
            self.resolve.pop(pin.host, None)
            self.resolve[pin.host] = pin

    def apply_dlp(self, dlp: Mapping[str, object], src: _Source) -> None:
        if "enabled" in dlp:
            self.dlp_enabled = _bool(dlp["enabled"])
        if "block" in dlp:
            self.dlp_block = _bool(dlp["block"])
        seen: set[str] = set()
        for index, entry in enumerate(_tables(dlp.get("patterns"))):
            key = f"dlp.patterns[{index}]"
            pattern = _dlp_pattern(_str(entry["name"]), _str(entry["regex"]), key, src)
            if pattern.name in seen:
                raise src.error(
                    f"{key}.name",
                    f"{_quote(pattern.name)} is defined twice in this file",
                    "give each pattern its own name",
                )
            seen.add(pattern.name)
            if self.patterns.get(pattern.name) != pattern:
                self.patterns.pop(pattern.name, None)
                self.patterns[pattern.name] = pattern
        for index, rule in enumerate(_strs(dlp.get("ignore", []))):
            rule = rule.removeprefix("dlp:")
            self.dlp_ignore.setdefault(rule, (src, f"dlp.ignore[{index}]"))
        for index, fingerprint in enumerate(_strs(dlp.get("ignore_fingerprints", []))):
            if not _FINGERPRINT.fullmatch(fingerprint):
                raise src.error(
                    f"dlp.ignore_fingerprints[{index}]",
                    f"{_quote(fingerprint)} is not a finding fingerprint",
                    "copy the 16 hex digits `claude-bottle dlp scan` prints for the finding",
                )
            self.dlp_ignore_fingerprints[fingerprint] = None

    def checked_dlp_ignore(self) -> tuple[str, ...]:
        """`[dlp] ignore`: ids of built-in or own patterns, never the user's secret values."""
        if not self.dlp_ignore:
            return ()  # the built-in patterns' module costs every `run` ~7 ms of imports
        from claude_bottle.policy.dlp_patterns import PATTERN_NAMES

        known = {*PATTERN_NAMES, *self.patterns}
        for rule, (src, key) in self.dlp_ignore.items():
            if rule.startswith("secret:"):
                raise src.error(
                    key,
                    f"{_quote(rule)} cannot be ignored: your own secret values always block",
                    "remove it; to send that value, take it out of the environment",
                )
            if rule not in known:
                raise src.error(
                    key,
                    f"{_quote(rule)} is not a DLP rule id",
                    "use an id `claude-bottle dlp scan` prints (the part after dlp:)",
                )
        return tuple(self.dlp_ignore)

    def apply_gateway(self, gateway: Mapping[str, object], src: _Source) -> None:
        for key in ("anthropic_upstream", "oauth_token_url"):
            if key in gateway:
                url = _str(gateway[key])
                if not _http_url(url):
                    raise src.error(
                        f"gateway.{key}",
                        f"expected an http(s):// URL, got {_quote(url)}",
                        'e.g. "https://api.anthropic.com"',
                    )
                self.gateway[key] = url
        if "upstream_ca_file" in gateway:
            raw = _str(gateway["upstream_ca_file"])
            self.gateway["upstream_ca_file"] = _ca_file(raw, "gateway.upstream_ca_file", src)
        if "max_tokens_total" in gateway:
            limit = gateway["max_tokens_total"]
            if not isinstance(limit, int) or limit <= 0:
                raise src.error(
                    "gateway.max_tokens_total",
                    "expected a positive integer",
                    "e.g. max_tokens_total = 2000000",
                )
            self.gateway["max_tokens_total"] = limit
        for key in ("mcp_servers", "web_fetch", "web_search", "files"):
            if key in gateway:
                self.gateway[key] = _bool(gateway[key])
        if "dlp" in gateway:
            self.gateway["dlp"] = _one_of(
                gateway["dlp"],
                GATEWAY_DLP_MODES,
                "gateway.dlp",
                "audit records a secret found in a prompt, block refuses the call",
                src,
            )

    def apply_remote(self, name: str, remote: Mapping[str, object], src: _Source) -> None:
        key = _key("git.remotes", name)
        if not _REMOTE_NAME.fullmatch(name):
            raise src.error(
                key,
                "a remote name must be 1-63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
                "rename the remote, e.g. [git.remotes.origin]",
            )
        draft = self.remotes.setdefault(name, _RemoteDraft(src))
        draft.source = src
        if "url" in remote:
            draft.url = _check_git_url(_str(remote["url"]), f"{key}.url", src)
        if "push" in remote:
            draft.push = tuple(
                _ordered(
                    _branch_pattern(item, f"{key}.push[{index}]", src)
                    for index, item in enumerate(_strs(remote["push"]))
                )
            )
        for flag in ("force", "tags", "delete"):
            if flag in remote:
                setattr(draft, flag, _bool(remote[flag]))
        if "credential" in remote:
            draft.credential = _git_credential(_str(remote["credential"]), f"{key}.credential", src)

    def apply_bottle(self, bottle: Mapping[str, object], src: _Source) -> None:
        if "command" in bottle:
            command = tuple(_strs(bottle["command"]))
            if not command or not command[0]:
                raise src.error(
                    "bottle.command",
                    "must name a program to run",
                    'e.g. command = ["claude", "--dangerously-skip-permissions"]',
                )
            self.command = command
        for index, raw in enumerate(_strs(bottle.get("read_only"))):
            self.read_only.setdefault(_read_only_path(raw, f"bottle.read_only[{index}]", src))
        for index, name in enumerate(_strs(bottle.get("env"))):
            self.env.setdefault(_env_name(name, f"bottle.env[{index}]", src))
        if "nested_sandbox" in bottle:
            self.nested_sandbox = _bool(bottle["nested_sandbox"])
        for key in ("audit_max", "audit_rate"):
            if key in bottle:
                self.audit[key] = _byte_size(_str(bottle[key]), f"bottle.{key}", src)
        if "host_tools" in bottle:
            self.host_tools = _one_of(
                bottle["host_tools"],
                HOST_TOOLS_MODES,
                "bottle.host_tools",
                '"warn" lists changed host-tool files at exit; "revert" restores them',
                src,
            )
        if "git_identity" in bottle:
            self.git_identity = _bool(bottle["git_identity"])
        self.limits = _limits(self.limits, bottle, src)

    # -- the result

    def build(self) -> Config:
        from claude_bottle.policy.allowlist import Allowlist

        excluded = Allowlist(tuple(self.intercept_exclude))
        check_interception(
            self.rules,
            self.inject,
            intercept=self.intercept,
            excluded=lambda host: excluded.check(host).allowed,
        )
        check_unique_env(self.inject)
        remotes = []
        for name, draft in self.remotes.items():
            if draft.url is None:
                raise draft.source.error(
                    f"{_key('git.remotes', name)}.url",
                    "missing; every remote needs a url",
                    'add url = "https://…" to the remote',
                )
            remotes.append(
                GitRemote(
                    name=name,
                    url=draft.url,
                    push=draft.push,
                    force=draft.force,
                    tags=draft.tags,
                    delete=draft.delete,
                    credential=draft.credential,
                )
            )
        return Config(
            backend=self.backend,
            egress=EgressConfig(
                allow=tuple(self.allow),
                deny=tuple(self.deny),
                mode=self.mode,
                ask_timeout=self.ask_timeout,
                resolve=tuple(self.resolve.values()),
                intercept=self.intercept,
                intercept_exclude=tuple(self.intercept_exclude),
                upstream_ca_file=self.upstream_ca_file,
                rules=tuple(self.rules),
            ),
            dlp=DlpConfig(
                enabled=self.dlp_enabled,
                block=self.dlp_block,
                patterns=tuple(self.patterns.values()),
                ignore=self.checked_dlp_ignore(),
                ignore_fingerprints=tuple(self.dlp_ignore_fingerprints),
            ),
            credentials=CredentialsConfig(anthropic=self.anthropic, inject=tuple(self.inject)),
            gateway=GatewayConfig(**self.gateway),  # type: ignore[arg-type]
            git_remotes=tuple(remotes),
            bottle=BottleSection(
                command=self.command,
                read_only=tuple(self.read_only),
                env=tuple(self.env),
                nested_sandbox=self.nested_sandbox,
                **self.audit,
                host_tools=self.host_tools,
                git_identity=self.git_identity,
                limits=self.limits,
            ),
            docker=DockerSection(base_image=self.base_image, bundle=self.docker_bundle),
            sources=tuple(self.sources),
        )


# -- typed access to values _check has already vetted ---------------------------------


def _str(value: object) -> str:
    assert isinstance(value, str)
    return value


def _bool(value: object) -> bool:
    assert isinstance(value, bool)
    return value


def _strs(value: object) -> list[str]:
    if value is None:
        return []
    assert isinstance(value, list)
    return [_str(item) for item in value]


def _table(value: object) -> Mapping[str, object]:
    if value is None:
        return {}
    assert isinstance(value, dict)
    return value


def _tables(value: object) -> list[Mapping[str, object]]:
    if value is None:
        return []
    assert isinstance(value, list)
    return [_table(item) for item in value]


# -- per-value rules --------------------------------------------------------------------


def _one_of(value: object, choices: tuple[str, ...], key: str, hint: str, src: _Source) -> str:
    """A string that must be one of `choices` (a mode such as egress.mode)."""
    choice = _str(value)
    if choice not in choices:
        raise src.error(key, f"expected one of {', '.join(choices)}, got {_quote(choice)}", hint)
    return choice


def _host_pattern(pattern: str, key: str, src: _Source) -> str:
    from claude_bottle.policy.allowlist import validate_pattern

    try:
        return validate_pattern(pattern)
    except ValueError as exc:
        raise src.error(key, str(exc), _PATTERN_HINT) from None


def _resolve_pin(host: str, target: str, key: str, src: _Source) -> ResolvePin:
    import ipaddress  # only when pins are configured

    hint = 'write it as "ADDRESS[:PORT]", e.g. "api.test" = "127.0.0.1:8443" or "[::1]:8443"'
    normalised = _host_pattern(host, key, src)
    is_ip = True
    try:
        ipaddress.ip_address(normalised.strip("[]"))
    except ValueError:
        is_ip = False
    if normalised.startswith("*.") or "/" in normalised or is_ip:
        raise src.error(key, "expected a host name, not a wildcard or an IP address", hint)
    address, port_text = _split_address(target)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise src.error(
            key, f"expected an IP address with an optional port, got {_quote(target)}", hint
        ) from None
    if ip.version == 6 and port_text is not None and not target.startswith("["):
        raise src.error(key, "an IPv6 address with a port must be in brackets", hint)
    port: int | None = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise src.error(key, f"port {_quote(port_text)} is not a number from 1 to 65535", hint)
        port = int(port_text)
    return ResolvePin(host=normalised, address=str(ip), port=port)


def _split_address(target: str) -> tuple[str, str | None]:
    if target.startswith("["):
        end = target.find("]")
        if end < 0:
            return target, None
        rest = target[end + 1 :]
        if not rest:
            return target[1:end], None
        if rest.startswith(":"):
            return target[1:end], rest[1:]
        return target, None
    if target.count(":") == 1:
        address, port = target.split(":")
        return address, port
    return target, None


def _dlp_pattern(name: str, regex: str, key: str, src: _Source) -> DlpPattern:
    if not _DLP_NAME.fullmatch(name):
        raise src.error(
            f"{key}.name",
            f"{_quote(name)} is not a valid pattern name",
            "use 1-64 letters, digits, '.', '_' or '-' (it appears in audit records)",
        )
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise src.error(
            f"{key}.regex", f"not a valid regular expression: {exc}", "fix the regex (Python re)"
        ) from None
    except (RecursionError, OverflowError):
        raise src.error(
            f"{key}.regex", "regular expression is too complex", "simplify the regex"
        ) from None
    if compiled.search("") is not None:
        raise src.error(
            f"{key}.regex",
            "matches the empty string, so it would flag every request",
            "make the pattern require at least one character",
        )
    return DlpPattern(name=name, regex=regex)


def _check_credential(spec: str, key: str, src: _Source) -> str:
    # The value is never echoed: a user may have pasted the key itself here.
    hint = "use env:NAME (an environment variable), file:PATH (absolute or ~/…) or keychain"
    if spec == "keychain":
        return spec
    kind, sep, rest = spec.partition(":")
    if sep and kind == "env" and _ENV_NAME.fullmatch(rest):
        return spec
    if sep and kind == "file" and (rest.startswith("/") or rest.startswith("~/")):
        return spec
    if sep and kind in ("env", "file"):
        problem = (
            "env: needs a variable name like ANTHROPIC_API_KEY"
            if kind == "env"
            else "file: needs an absolute path or one starting with ~/"
        )
        raise src.error(key, problem, hint)
    raise src.error(key, "expected env:NAME, file:PATH or keychain (value not shown)", hint)


def _git_credential(spec: str, key: str, src: _Source) -> str:
    # The value is never echoed: a user may have pasted the token itself here.
    hint = (
        'use "git" (the host\'s git credential fill), env:NAME, file:PATH (absolute or ~/…) '
        'or "command:PROGRAM ARGS" (its first line of output)'
    )
    kind, sep, rest = spec.partition(":")
    if spec == "git" or (sep and kind == "command" and rest.strip()):
        return spec
    if sep and kind == "env" and _ENV_NAME.fullmatch(rest):
        if rest not in os.environ:
            raise src.error(key, f"the variable {rest} is not set", f"export {rest}, or {hint}")
        return spec
    if sep and kind == "file" and rest.startswith(("/", "~/")):
        if not Path(rest).expanduser().is_file():
            raise src.error(key, "names a file that does not exist", hint)
        return spec
    raise src.error(key, "expected git, env:NAME, file:PATH or command:… (value not shown)", hint)


def _check_git_url(url: str, key: str, src: _Source) -> str:
    # URLs are not echoed: they may embed a token.
    hint = "use https://host/owner/repo.git, ssh://host/path or git@host:owner/repo.git"
    if not url or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise src.error(key, "must be a non-empty URL without spaces or control characters", hint)
    if "://" in url:
        try:
            parts = urlsplit(url)
            hostname, password, username = parts.hostname, parts.password, parts.username
        except ValueError:
            raise src.error(key, "is not a valid URL (value not shown)", hint) from None
        scheme = parts.scheme.lower()
        if scheme not in _URL_SCHEMES:
            raise src.error(
                key,
                f"unsupported scheme {_quote(scheme)}; use one of {', '.join(_URL_SCHEMES)}",
                hint,
            )
        if password is not None or (username is not None and scheme in ("http", "https")):
            raise src.error(
                key,
                "embeds credentials (value not shown); they would appear in plans and logs",
                "remove them from the URL; the git gate uses the host's git credentials",
            )
        if not hostname:
            raise src.error(key, "has no host name (value not shown)", hint)
        return url
    if _SCP_URL.fullmatch(url):
        return url
    raise src.error(key, "is not an https:// or ssh:// URL nor an scp-style address", hint)


def _http_url(url: str) -> bool:
    """Whether `url` is an http(s) URL with a host name and no user information."""
    try:
        parts = urlsplit(url)  # raises on a malformed IPv6 host such as "https://[::1/"
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.username


def _ca_file(raw: str, key: str, src: _Source) -> str:
    """The absolute path of a CA bundle file that exists."""
    hint = "point it at a PEM file of CA certificates, or remove the key"
    try:
        ca_file = Path(raw).expanduser()
        if ca_file.is_file():
            return str(ca_file.resolve())
    except RuntimeError:  # ~user of an unknown user
        raise src.error(key, f"{_quote(raw)}: no such user's home directory", hint) from None
    except OSError as exc:  # a name too long, a loop: anything but "not there"
        raise src.error(key, f"{_quote(raw)} cannot be read: {exc.strerror}", hint) from None
    raise src.error(key, f"{ca_file} is not a file", hint)


def _branch_pattern(pattern: str, key: str, src: _Source) -> str:
    if (
        not pattern
        or pattern.startswith(("-", "/"))
        or ".." in pattern
        or "@{" in pattern
        or any(ch.isspace() or not ch.isprintable() or ch in _BAD_BRANCH_CHARS for ch in pattern)
    ):
        raise src.error(
            key,
            f"{_quote(pattern)} is not a valid branch pattern",
            'use branch names with * wildcards, e.g. push = ["claude/*"]',
        )
    return pattern


def _byte_size(raw: str, key: str, src: _Source) -> int:
    """A size such as "1G", "64M" or "65536" (binary units), at least 64 KiB."""
    try:
        size = parse_size(raw.strip())
    except ValueError:
        size = 0
    if size < 64 << 10:
        name = key.rpartition(".")[2]
        raise src.error(key, f"{raw!r} is not a size of at least 64K", f'e.g. {name} = "1G"')
    return size


def _read_only_path(raw: str, key: str, src: _Source) -> str:
    if not (raw.startswith("/") or raw == "~" or raw.startswith("~/")):
        raise src.error(
            key,
            f"{_quote(raw)} must be an absolute path or start with ~/",
            "relative paths are ambiguous; write the full path",
        )
    return raw


# A docker image reference: [registry[:port]/]path[:tag][@digest], lowercase path components.
_IMAGE_REFERENCE = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[0-9a-f]{64})?"
)


def _image_reference(raw: str, src: _Source) -> str | None:
    """`[docker] base_image`: empty means the built-in Debian image."""
    if not raw:
        return None
    if not _IMAGE_REFERENCE.fullmatch(raw):
        raise src.error(
            "docker.base_image",
            f"{_quote(raw)} is not a docker image reference",
            'e.g. base_image = "ghcr.io/acme/dev:2024" (or "" for the built-in image)',
        )
    return raw


def _limits(current: Limits, bottle: Mapping[str, object], src: _Source) -> Limits:
    """`current` with the resource limits this layer sets, each checked against its bounds."""
    if "memory" in bottle:
        current = current._replace(memory=_size(_str(bottle["memory"]), "bottle.memory", src))
    if "disk" in bottle:
        current = current._replace(disk=_size(_str(bottle["disk"]), "bottle.disk", src))
    if "pids" in bottle:
        pids = bottle["pids"]
        assert isinstance(pids, int)
        if not MIN_PIDS <= pids <= MAX_PIDS:
            raise src.error(
                "bottle.pids",
                f"expected {MIN_PIDS} to {MAX_PIDS} processes, got {pids}",
                "e.g. pids = 4096",
            )
        current = current._replace(pids=pids)
    if "cpus" in bottle:
        cpus = bottle["cpus"]
        assert isinstance(cpus, int | float)
        if not 0.01 <= cpus <= MAX_CPUS:
            raise src.error(
                "bottle.cpus",
                f"expected a number of CPUs from 0.01 to {MAX_CPUS:g}, got {cpus}",
                "e.g. cpus = 2.0",
            )
        current = current._replace(cpus=float(cpus))
    if "require_limits" in bottle:
        current = current._replace(require=_bool(bottle["require_limits"]))
    return current


def _size(text: str, key: str, src: _Source) -> int:
    try:
        size = parse_size(text)
    except ValueError:
        raise src.error(
            key, f'expected a size such as "8G" or "512M", got {_quote(text)}', 'e.g. "8G"'
        ) from None
    least = MIN_MEMORY if key == "bottle.memory" else MIN_DISK
    if size < least:
        raise src.error(
            key, f"{_quote(text)} is too small (at least {format_size(least)})", 'e.g. "8G"'
        )
    return size


def _env_name(name: str, key: str, src: _Source) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise src.error(
            key,
            f"{_quote(name)} is not an environment variable name",
            "use letters, digits and '_', not starting with a digit",
        )
    found = SECRET_NAME.search(name)
    if found is not None:
        raise src.error(
            key,
            f"{_quote(name)} looks like a secret (its name contains "
            f"{found.group(0).upper()}); the bottle never receives credentials",
            "remove it: credentials stay host-side, where the api gateway and git gate "
            "use them for the agent",
        )
    return name


# -- entry point ---------------------------------------------------------------------------


def check_project_file(path: Path, content: bytes, *, known_backends: Iterable[str]) -> None:
    """Raise the ConfigError `load_config` would raise for this project file's `content`."""
    merged = _Merged(known_backends=tuple(known_backends))
    merged.apply_file(path, content, _Source(display_path(path)), workspace_file=True)
    merged.build()


def load_config(
    *,
    workspace: Path,
    extra_file: Path | None = None,
    allow: Sequence[str] = (),
    backend: str | None = None,
    docker_bundle: str | None = None,
    known_backends: Iterable[str],
    user_config: Path | None = None,
    trust_store: TrustStore | None = None,
    warn: Callable[[str], None] = print_to_stderr,
) -> Config:
    """The configuration for a bottle on `workspace`; ConfigError on any problem."""
    merged = _Merged(known_backends=tuple(known_backends))
    workspace = workspace.absolute()

    if user_config is not None:
        user_path, must_exist = user_config, False
    else:
        user_path, must_exist = _default_user_config()
    user_path = user_path.absolute()
    content = read_config_file(user_path)
    if content is None and must_exist:
        raise ConfigError(
            f"{display_path(user_path)}: no such file (named by ${CONFIG_ENV})",
            f"create it, or unset {CONFIG_ENV} to use the default user config",
        )
    if content is not None:
        in_workspace = _warn_if_in_workspace(user_path, workspace, "user config", warn)
        merged.apply_file(
            user_path, content, _Source(display_path(user_path)), workspace_file=in_workspace
        )

    project = workspace / PROJECT_FILE
    shown = display_path(project)
    if project.is_symlink():
        warn(f"{shown} is ignored: it is a symbolic link (only a regular file can be trusted).")
        content = None
    else:
        content = read_config_file(project, follow_symlinks=False)
    if content is not None:
        store = trust_store if trust_store is not None else TrustStore()
        status = store.status(project, content)
        if status == "trusted":
            merged.apply_file(project, content, _Source(shown), workspace_file=True)
        elif status == "changed":
            warn(
                f"{shown} is ignored: it changed since you trusted it. "
                "Review it, then run `claude-bottle trust` again."
            )
        else:
            warn(
                f"{shown} is ignored: it is not trusted. Review it, then run `claude-bottle trust`."
            )

    if extra_file is not None:
        extra = extra_file.absolute()
        content = read_config_file(extra)
        if content is None:
            raise ConfigError(
                f"{display_path(extra)}: no such file (given with --config)",
                "check the path passed to --config",
            )
        in_workspace = _warn_if_in_workspace(extra, workspace, "--config file", warn)
        merged.apply_file(extra, content, _Source(display_path(extra)), workspace_file=in_workspace)

    for pattern in allow:
        merged.allow.setdefault(_host_pattern(pattern, "", _Source("--allow")))
    if backend is not None:
        merged.backend = merged.check_backend(backend, "", _Source("--backend"))
    if docker_bundle is not None:
        merged.docker_bundle = merged.check_docker_bundle(
            docker_bundle, "", _Source("--docker-bundle")
        )
    return merged.build()


def _warn_if_in_workspace(
    path: Path, workspace: Path, what: str, warn: Callable[[str], None]
) -> bool:
    """Whether `path` is inside the workspace; then it is a workspace file (no user-only
    keys) and the user is told that policy files belong outside."""
    if not _inside(path, workspace):
        return False
    warn(
        f"{display_path(path)} ({what}) is inside the workspace, where the agent can edit "
        "it; it is honoured, but policy files belong outside the workspace."
    )
    return True
