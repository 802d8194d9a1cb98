"""Settings for a bundle whose sockets and audit log live in a test's temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from claude_bottle.bundle.settings import BundleSettings


def bundle_settings(tmp_path: Path, **fields: Any) -> BundleSettings:
    """`fields` override the defaults: bottle "unit", allowing only allowed.test."""
    defaults: dict[str, Any] = {
        "bottle": "unit",
        "proxy_socket": str(tmp_path / "proxy.sock"),
        "control_socket": str(tmp_path / "control.sock"),
        "audit_log": str(tmp_path / "audit.jsonl"),
        "allow": ("allowed.test",),
    }
    return BundleSettings(**{**defaults, **fields})
