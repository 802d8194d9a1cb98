"""The validated configuration of one bottle: immutable values, built by `load_config`.

Nothing here validates; `claude_bottle.config.load` only ever builds these
from checked input, so every consumer can take the values at face value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

EGRESS_MODES = ("enforce", "audit", "ask")
DEFAULT_ALLOW = ("api.anthropic.com",)
DEFAULT_COMMAND = ("claude", "--dangerously-skip-permissions")
DEFAULT_BACKEND = "namespace"
DEFAULT_ANTHROPIC_CREDENTIAL = "env:ANTHROPIC_API_KEY"


@dataclass(frozen=True)
class ResolvePin:
    """`[egress.resolve]`: `host` is always contacted at `address` (an IP), on `port` if set."""

    host: str
    address: str
    port: int | None = None


@dataclass(frozen=True)
class EgressConfig:
    allow: tuple[str, ...] = DEFAULT_ALLOW
    deny: tuple[str, ...] = ()
    mode: str = "enforce"  # enforce | audit | ask
    resolve: tuple[ResolvePin, ...] = ()
    intercept: bool = True  # TLS interception of allowed hosts, so DLP sees HTTPS too
    intercept_exclude: tuple[str, ...] = ()  # host patterns tunnelled without interception
    upstream_ca_file: str | None = None  # extra CA for verifying upstreams (tests)


@dataclass(frozen=True)
class DlpPattern:
    name: str
    regex: str


@dataclass(frozen=True)
class DlpConfig:
    enabled: bool = True
    block: bool = True
    patterns: tuple[DlpPattern, ...] = ()


@dataclass(frozen=True)
class CredentialsConfig:
    anthropic: str = DEFAULT_ANTHROPIC_CREDENTIAL  # env:NAME | file:PATH | keychain


@dataclass(frozen=True)
class GatewayConfig:
    anthropic_upstream: str = "https://api.anthropic.com"
    upstream_ca_file: str | None = None  # extra CA for the upstream (tests)
    max_tokens_total: int | None = None  # stop a runaway bottle
    oauth_token_url: str | None = None  # where host-side OAuth refresh goes


@dataclass(frozen=True)
class GitRemote:
    name: str
    url: str
    push: tuple[str, ...] = ()  # branch patterns the agent may push
    force: bool = False


@dataclass(frozen=True)
class BottleSection:
    command: tuple[str, ...] = DEFAULT_COMMAND
    read_only: tuple[str, ...] = ()  # host paths granted read-only (may start with ~/)
    env: tuple[str, ...] = ()  # extra host environment variable names to pass in


@dataclass(frozen=True)
class Config:
    backend: str = DEFAULT_BACKEND
    egress: EgressConfig = field(default_factory=EgressConfig)
    dlp: DlpConfig = field(default_factory=DlpConfig)
    credentials: CredentialsConfig = field(default_factory=CredentialsConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    git_remotes: tuple[GitRemote, ...] = ()
    bottle: BottleSection = field(default_factory=BottleSection)
    sources: tuple[str, ...] = ()  # config files that were honoured, in order

    def to_dict(self) -> dict[str, object]:
        """A JSON-able copy (tuples become lists), for plans and `--json` output."""
        result = _plain(self)
        assert isinstance(result, dict)
        return result


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value
