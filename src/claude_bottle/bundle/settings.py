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


class Pin(NamedTuple):
    host: str
    address: str
    port: int | None


class BundleSettings(NamedTuple):
    bottle: str
    proxy_socket: str
    control_socket: str
    audit_log: str
    allow: tuple[str, ...]
    deny: tuple[str, ...] = ()
    mode: str = "enforce"
    pins: tuple[Pin, ...] = ()
    ask_timeout: float = 60.0
    intercept: bool = False
    intercept_exclude: tuple[str, ...] = ()
    ca_cert: str | None = None  # where the bundle publishes its CA certificate
    ca_bundle: str | None = None  # host trust store + our CA, written in place
    upstream_ca_file: str | None = None
    dlp_enabled: bool = False
    dlp_block: bool = True
    dlp_patterns: tuple[tuple[str, str], ...] = ()
    gateway_socket: str | None = None
    anthropic_credential: str = "env:ANTHROPIC_API_KEY"  # a spec, never the value
    anthropic_upstream: str = "https://api.anthropic.com"
    gateway_ca_file: str | None = None
    max_tokens_total: int | None = None
    oauth_token_url: str | None = None
    limits: dict[str, object] | None = None  # the bottle's limits, for its first audit record

    def dump(self, path: Path) -> None:
        fields = {**self._asdict(), "pins": [pin._asdict() for pin in self.pins]}
        path.write_text(json.dumps(fields, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> BundleSettings:
        raw: dict[str, Any] = json.loads(path.read_text())
        raw["allow"] = tuple(raw.get("allow", ()))
        raw["deny"] = tuple(raw.get("deny", ()))
        raw["pins"] = tuple(Pin(**p) for p in raw.get("pins", ()))
        raw["intercept_exclude"] = tuple(raw.get("intercept_exclude", ()))
        raw["dlp_patterns"] = tuple(tuple(p) for p in raw.get("dlp_patterns", ()))
        return cls(**raw)
