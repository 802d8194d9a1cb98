"""The validated configuration of one bottle: immutable values, built by `load_config`.

Nothing here validates; `claude_bottle.config.load` only ever builds these
from checked input, so every consumer can take the values at face value.
They are NamedTuples, not dataclasses, for `run`'s start-up: see bundle/settings.py.
"""

from __future__ import annotations

from typing import NamedTuple

# The bundle's own defaults; it ships without this package (docker's bundle image).
from claude_bottle.bundle.settings import (
    DEFAULT_AUDIT_MAX,
    DEFAULT_AUDIT_RATE,
    InjectionSpec,
    RuleSpec,
)
from claude_bottle.limits import Limits

EGRESS_MODES = ("enforce", "audit", "ask")
GATEWAY_DLP_MODES = ("audit", "block")  # a secret in a prompt: recorded, or refused
HOST_TOOLS_MODES = ("warn", "revert")
DEFAULT_ALLOW = ("api.anthropic.com",)
DEFAULT_COMMAND = ("claude", "--dangerously-skip-permissions")
DEFAULT_BACKEND = "namespace"
DEFAULT_ANTHROPIC_CREDENTIAL = "env:ANTHROPIC_API_KEY"


class ResolvePin(NamedTuple):
    """`[egress.resolve]`: `host` is always contacted at `address` (an IP), on `port` if set."""

    host: str
    address: str
    port: int | None = None


class EgressConfig(NamedTuple):
    allow: tuple[str, ...] = DEFAULT_ALLOW
    deny: tuple[str, ...] = ()
    mode: str = "enforce"  # enforce | audit | ask
    ask_timeout: float = 300.0  # seconds a request held in ask mode waits for a decision
    resolve: tuple[ResolvePin, ...] = ()
    intercept: bool = True  # TLS interception of allowed hosts, so DLP sees HTTPS too
    intercept_exclude: tuple[str, ...] = ()  # host patterns tunnelled without interception
    upstream_ca_file: str | None = None  # extra CA for verifying upstreams (tests)
    rules: tuple[RuleSpec, ...] = ()  # [[egress.rules]]: per-method, per-path (bundle.l7)


class DlpPattern(NamedTuple):
    name: str
    regex: str


class DlpConfig(NamedTuple):
    enabled: bool = True
    block: bool = True
    patterns: tuple[DlpPattern, ...] = ()
    ignore: tuple[str, ...] = ()  # rule ids whose findings are let through (audited)
    ignore_fingerprints: tuple[str, ...] = ()  # single findings let through (audited)


class CredentialsConfig(NamedTuple):
    anthropic: str = DEFAULT_ANTHROPIC_CREDENTIAL  # env:NAME | file:PATH | keychain
    inject: tuple[InjectionSpec, ...] = ()  # [[credentials.inject]], placeholders unset


class GatewayConfig(NamedTuple):
    anthropic_upstream: str = "https://api.anthropic.com"
    upstream_ca_file: str | None = None  # extra CA for the upstream (tests)
    max_tokens_total: int | None = None  # stop a runaway bottle
    oauth_token_url: str | None = None  # where host-side OAuth refresh goes
    # API features that make Anthropic's servers carry data somewhere (off unless enabled)
    mcp_servers: bool = False
    web_fetch: bool = False
    web_search: bool = True  # Claude Code's WebSearch tool
    files: bool = False  # uploads through /v1/files
    dlp: str = "audit"  # GATEWAY_DLP_MODES


DEFAULT_PUSH = ("bottle/*",)


class GitRemote(NamedTuple):
    """`[git.remotes.NAME]`: served to the bottle by the bundle's git gate."""

    name: str
    url: str
    push: tuple[str, ...] = DEFAULT_PUSH  # branch patterns the agent may push
    force: bool = False  # non-fast-forward updates
    tags: bool = False  # may it create tags (never move or delete one)
    delete: bool = False  # branch deletion
    credential: str = "git"  # git | env:VAR | file:PATH | command:... (a source, not a value)


class BottleSection(NamedTuple):
    command: tuple[str, ...] = DEFAULT_COMMAND
    read_only: tuple[str, ...] = ()  # host paths granted read-only (may start with ~/)
    env: tuple[str, ...] = ()  # extra host environment variable names to pass in
    # Let the agent create user namespaces (and mount inside them) for tools that sandbox
    # themselves: Chromium/Playwright, Claude Code's own sandbox. Off: kernel attack surface.
    nested_sandbox: bool = False
    audit_max: int = DEFAULT_AUDIT_MAX  # bytes of audit log, in all
    audit_rate: int = DEFAULT_AUDIT_RATE  # bytes of audit log per minute
    host_tools: str = "warn"  # host-tool files the bottle changed: "warn" lists, "revert" restores
    git_identity: bool = True  # copy the host's git user.name/user.email into the bottle
    limits: Limits = Limits()  # memory, pids, cpus, disk, require_limits


DOCKER_BUNDLE_PLACEMENTS = ("auto", "host", "container")


class DockerSection(NamedTuple):
    base_image: str | None = None  # build the agent image on this image (the user's toolchain)
    bundle: str = "auto"  # where the bundle runs: a host process, or a container (auto: host
    # when the engine can reach a host unix socket)


class ConfigSource(NamedTuple):
    """A config file that was honoured, and the SHA-256 of the exact bytes that were used."""

    path: str
    sha256: str


class Config(NamedTuple):
    backend: str = DEFAULT_BACKEND
    egress: EgressConfig = EgressConfig()
    dlp: DlpConfig = DlpConfig()
    credentials: CredentialsConfig = CredentialsConfig()
    gateway: GatewayConfig = GatewayConfig()
    git_remotes: tuple[GitRemote, ...] = ()
    bottle: BottleSection = BottleSection()
    sources: tuple[ConfigSource, ...] = ()  # config files that were honoured, in order
    docker: DockerSection = DockerSection()
