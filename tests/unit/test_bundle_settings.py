"""bundle.json: what the CLI writes is what the bundle (host or container) reads back."""

from __future__ import annotations

import json
from pathlib import Path

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
