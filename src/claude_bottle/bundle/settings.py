"""The bundle's settings: written by the CLI as bundle.json, read by the bundle process.

Records that `run` needs before its command starts are NamedTuples, not dataclasses,
here and in the modules that point to this note: both the CLI's path to handing the
bundle its settings and the bundle's path to ready go through them, and creating a
frozen dataclass costs ~1.2 ms (it compiles up to six methods) against ~0.2 ms for a
NamedTuple (docs/benchmarks.md, item 15).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from claude_bottle.bundle.git_policy import GateRemote

DEFAULT_AUDIT_MAX = 1 << 30
"""`[bottle] audit_max`: how large one bottle's audit log may grow (1 GiB)."""
DEFAULT_AUDIT_RATE = 64 << 20
"""`[bottle] audit_rate`: audit log bytes a bottle may cause per minute (64 MiB). A busy
agent writes well under 1 MiB a minute (a record is ~300 bytes to a few KiB); a flood
of a gigabyte a minute stops within seconds."""

BUNDLE_FILES = 8192
"""The bundle's descriptor limit, on every backend: the proxy's and the gateway's slots,
each with its upstream, the connections waiting for a slot, the pool and the audit log
(bundle/slots.py) fit well within it."""


class Pin(NamedTuple):
    host: str
    address: str
    port: int | None


class RuleSpec(NamedTuple):
    """One `[[egress.rules]]` entry as written (`bundle.l7` matches with it)."""

    host: str
    methods: tuple[str, ...]
    paths: tuple[str, ...]
    websocket: bool = False


class InjectionSpec(NamedTuple):
    """One `[[credentials.inject]]` entry: where the secret is read (a spec, never the
    value) and the placeholder the bottle holds in its place (not a secret)."""

    hosts: tuple[str, ...]
    env: str
    secret: str  # env:VAR | file:PATH | command:ARGV | handed (bundle/handover.py)
    also_env: tuple[str, ...] = ()
    placeholder: str = ""  # chosen per bottle when it is planned


class BundleSettings(NamedTuple):
    bottle: str
    proxy_socket: str
    control_socket: str
    audit_log: str
    allow: tuple[str, ...]
    deny: tuple[str, ...] = ()
    mode: str = "enforce"
    pins: tuple[Pin, ...] = ()
    ask_timeout: float = 300.0  # `[egress] ask_timeout`
    intercept: bool = False
    intercept_exclude: tuple[str, ...] = ()
    ca_cert: str | None = None  # where the bundle publishes its CA certificate
    ca_bundle: str | None = None  # host trust store + our CA, written in place
    ca_pool: str | None = None  # the user's CAs minted ahead (bundle/ca_pool.py), if any
    upstream_ca_file: str | None = None
    dlp_enabled: bool = False
    dlp_block: bool = True
    dlp_patterns: tuple[tuple[str, str], ...] = ()
    dlp_ignore: tuple[str, ...] = ()
    dlp_ignore_fingerprints: tuple[str, ...] = ()
    gateway_socket: str | None = None
    anthropic_credential: str = "env:ANTHROPIC_API_KEY"  # a spec, never the value
    anthropic_upstream: str = "https://api.anthropic.com"
    gateway_ca_file: str | None = None
    max_tokens_total: int | None = None
    oauth_token_url: str | None = None
    gateway_features: tuple[str, ...] = ("web_search",)  # api_policy.FEATURES switched on
    gateway_dlp_block: bool = False  # a secret in a prompt refuses the call, else is recorded
    audit_max: int = DEFAULT_AUDIT_MAX
    audit_rate: int = DEFAULT_AUDIT_RATE
    limits: dict[str, object] | None = None  # the bottle's limits, for its first audit record
    git_socket: str | None = None  # the git gate; None when no [git.remotes] is configured
    hook_socket: str | None = None  # Claude Code's tool-call hooks (`bundle/tool_calls.py`)
    git_cache: str | None = None  # the gate's mirrors of the remotes (host side)
    git_remotes: tuple[GateRemote, ...] = ()
    egress_rules: tuple[RuleSpec, ...] = ()
    injections: tuple[InjectionSpec, ...] = ()
    # A bundle container: the CLI hands its secrets over the control socket once it
    # answers (`bundle/handover.py`); nothing that needs them is served before.
    handed_secrets: bool = False

    def dump(self, path: Path) -> None:
        fields = {
            **self._asdict(),
            "pins": [pin._asdict() for pin in self.pins],
            "git_remotes": [remote._asdict() for remote in self.git_remotes],
            "egress_rules": [rule._asdict() for rule in self.egress_rules],
            "injections": [injection._asdict() for injection in self.injections],
        }
        path.write_text(json.dumps(fields, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> BundleSettings:
        raw: dict[str, Any] = json.loads(path.read_text())
        raw["allow"] = tuple(raw.get("allow", ()))
        raw["deny"] = tuple(raw.get("deny", ()))
        raw["pins"] = tuple(Pin(**p) for p in raw.get("pins", ()))
        raw["intercept_exclude"] = tuple(raw.get("intercept_exclude", ()))
        raw["dlp_patterns"] = tuple(tuple(p) for p in raw.get("dlp_patterns", ()))
        raw["gateway_features"] = tuple(raw.get("gateway_features", ("web_search",)))
        raw["dlp_ignore"] = tuple(raw.get("dlp_ignore", ()))
        raw["dlp_ignore_fingerprints"] = tuple(raw.get("dlp_ignore_fingerprints", ()))
        raw["git_remotes"] = tuple(
            GateRemote(**{**r, "push": tuple(r["push"])}) for r in raw.get("git_remotes", ())
        )
        raw["egress_rules"] = tuple(
            RuleSpec(r["host"], tuple(r["methods"]), tuple(r["paths"]), r["websocket"])
            for r in raw.get("egress_rules", ())
        )
        raw["injections"] = tuple(
            InjectionSpec(
                tuple(i["hosts"]), i["env"], i["secret"], tuple(i["also_env"]), i["placeholder"]
            )
            for i in raw.get("injections", ())
        )
        return cls(**raw)
