"""Merging config layers: a file parsed, checked against the schema and applied over the
layers before it (`_Merged`), and the `Config` built from them all."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
from claude_bottle.config.schema import SCHEMA, _check, _key, _quote, _Source
from claude_bottle.config.trust import digest_of
from claude_bottle.config.user_only import refuse_user_only
from claude_bottle.config.values import (
    _allow_entry,
    _bool,
    _branch_pattern,
    _byte_size,
    _ca_file,
    _check_credential,
    _check_git_url,
    _dlp_pattern,
    _env_name,
    _git_credential,
    _host_pattern,
    _http_url,
    _image_reference,
    _limits,
    _one_of,
    _read_only_path,
    _resolve_pin,
    _str,
    _strs,
    _table,
    _tables,
)
from claude_bottle.limits import (
    Limits,
)


def _is_port_entry(entry: str) -> bool:
    from claude_bottle.policy.allowlist import is_port_entry  # only for workspace files

    return is_port_entry(entry)


_REMOTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # policy.dlp.finding_fingerprint
_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


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
        self.apply_egress(_table(data.get("egress")), src, workspace_file=workspace_file)
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

    def apply_egress(
        self, egress: Mapping[str, object], src: _Source, *, workspace_file: bool = False
    ) -> None:
        for index, written in enumerate(_strs(egress.get("allow"))):
            key = f"egress.allow[{index}]"
            allowed = _allow_entry(written, key, src)
            if workspace_file and allowed not in self.allow and _is_port_entry(allowed):
                # a HOST:PORT entry can open an ssh port past the git gate: the user's call
                raise src.error(
                    key,
                    f"{allowed} (a HOST:PORT entry) may be set only in your user config or a "
                    "--config file outside the workspace: the agent can write this file",
                    "move it to ~/.config/claude-bottle/config.toml",
                )
            self.allow.setdefault(allowed)
        for index, pattern in enumerate(_strs(egress.get("deny"))):
            self.deny.setdefault(_host_pattern(pattern, f"egress.deny[{index}]", src))
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
