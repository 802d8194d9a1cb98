"""bundle.json: what the CLI writes is what the bundle (host or container) reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_bottle.bundle.settings import BundleSettings, Pin
from tests.unit.bundle_settings import bundle_settings


def _settings(tmp_path: Path) -> BundleSettings:
    return bundle_settings(
        tmp_path,
        allow=("example.com", "*.example.org"),
        deny=("bad.example.com",),
        pins=(Pin("example.com", "127.0.0.1", 8443), Pin("api.example.org", "::1", None)),
        intercept_exclude=("*.internal.example",),
        dlp_enabled=True,
        dlp_patterns=(("team-token", "tt_[a-z0-9]{20}"),),
        max_tokens_total=1000,
    )


def test_settings_survive_the_file_unchanged(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.dump(tmp_path / "bundle.json")
    assert BundleSettings.load(tmp_path / "bundle.json") == settings


def test_pins_are_written_as_named_fields(tmp_path: Path) -> None:
    _settings(tmp_path).dump(tmp_path / "bundle.json")
    written = json.loads((tmp_path / "bundle.json").read_text())
    assert written["pins"] == [
        {"host": "example.com", "address": "127.0.0.1", "port": 8443},
        {"host": "api.example.org", "address": "::1", "port": None},
    ]
    assert written["allow"] == ["example.com", "*.example.org"]
    assert written["bottle"] == "unit"


# Where each backend's bundle finds its sockets, log and files: the only settings a launch
# sets itself. Everything else is policy and comes from BottlePlan.bundle_policy, the same
# for every backend (the docker container only renames where its injected secrets are).
_WHERE = {
    "bottle",
    "proxy_socket",
    "control_socket",
    "audit_log",
    "ca_cert",
    "ca_bundle",
    "upstream_ca_file",
    "gateway_socket",
    "anthropic_credential",
    "gateway_ca_file",
    "git_socket",
    "hook_socket",
    "ca_pool",  # host bundles only: a bundle container mints its own CA
    "git_cache",
    "git_remotes",
    "handed_secrets",  # a bundle container: its secrets come over the control socket
}


def test_every_bundle_setting_is_either_policy_or_where_things_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new setting must join bundle_policy (and so reach every backend's bundle) or be
    named here as a path each launch sets: a docker bundle once missed three policies."""
    from claude_bottle.backend.base import LaunchRequest
    from claude_bottle.backend.namespace.backend import NamespaceBackend
    from claude_bottle.config.model import Config

    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLAUDE_BOTTLE_RUNTIME_DIR", str(tmp_path / "rt"))
    workspace = tmp_path / "ws"
    workspace.mkdir()
    plan = NamespaceBackend().plan(LaunchRequest("t-abcde", workspace, Config(), ("true",)))
    policy = set(plan.bundle_policy())
    assert policy.isdisjoint(_WHERE)
    assert policy | _WHERE == set(BundleSettings._fields)
