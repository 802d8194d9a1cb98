"""The validated configuration of one bottle: immutable values, built by `load_config`.

Nothing here validates; `claude_bottle.config.load` only ever builds these
from checked input, so every consumer can take the values at face value.
They are NamedTuples, not dataclasses, for `run`'s start-up: see bundle/settings.py.
"""

from __future__ import annotations

from typing import NamedTuple

from claude_bottle.limits import Limits

EGRESS_MODES = ("enforce", "audit", "ask")
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
    resolve: tuple[ResolvePin, ...] = ()
    intercept: bool = True  # TLS interception of allowed hosts, so DLP sees HTTPS too
    intercept_exclude: tuple[str, ...] = ()  # host patterns tunnelled without interception
    upstream_ca_file: str | None = None  # extra CA for verifying upstreams (tests)


class DlpPattern(NamedTuple):
    name: str
    regex: str


class DlpConfig(NamedTuple):
    enabled: bool = True
    block: bool = True
    patterns: tuple[DlpPattern, ...] = ()


class CredentialsConfig(NamedTuple):
    anthropic: str = DEFAULT_ANTHROPIC_CREDENTIAL  # env:NAME | file:PATH | keychain


class GatewayConfig(NamedTuple):
    anthropic_upstream: str = "https://api.anthropic.com"
    upstream_ca_file: str | None = None  # extra CA for the upstream (tests)
    max_tokens_total: int | None = None  # stop a runaway bottle
    oauth_token_url: str | None = None  # where host-side OAuth refresh goes


class GitRemote(NamedTuple):
    name: str
    url: str
    push: tuple[str, ...] = ()  # branch patterns the agent may push
    force: bool = False


class BottleSection(NamedTuple):
    command: tuple[str, ...] = DEFAULT_COMMAND
    read_only: tuple[str, ...] = ()  # host paths granted read-only (may start with ~/)
    env: tuple[str, ...] = ()  # extra host environment variable names to pass in
    limits: Limits = Limits()  # memory, pids, cpus, disk, require_limits


class Config(NamedTuple):
    backend: str = DEFAULT_BACKEND
    egress: EgressConfig = EgressConfig()
    dlp: DlpConfig = DlpConfig()
    credentials: CredentialsConfig = CredentialsConfig()
    gateway: GatewayConfig = GatewayConfig()
    git_remotes: tuple[GitRemote, ...] = ()
    bottle: BottleSection = BottleSection()
    sources: tuple[str, ...] = ()  # config files that were honoured, in order
