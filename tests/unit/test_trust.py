"""Trust store for project config files: hashes, persistence, permissions, corruption."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from claude_bottle.config import TrustStore
from claude_bottle.config.trust import read_config_file
from claude_bottle.errors import ConfigError


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "claude-bottle" / "trusted.json"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    file = workspace / ".claude-bottle.toml"
    file.write_text('[egress]\nallow = ["github.com"]\n')
    return file


def test_unknown_file_is_untrusted(store_path: Path, project: Path) -> None:
    assert TrustStore(store_path).status(project) == "untrusted"
    assert not store_path.exists()  # reading never creates the store


def test_trust_records_sha256_and_survives_reload(store_path: Path, project: Path) -> None:
    digest = TrustStore(store_path).trust(project)
    assert digest == hashlib.sha256(project.read_bytes()).hexdigest()
    reloaded = TrustStore(store_path)
    assert reloaded.status(project) == "trusted"
    assert reloaded.trusted_files() == {str(project.resolve()): digest}


def test_changed_content_is_reported(store_path: Path, project: Path) -> None:
    store = TrustStore(store_path)
    store.trust(project)
    project.write_text('[egress]\nallow = ["github.com", "evil.example.com"]\n')
    assert TrustStore(store_path).status(project) == "changed"
    store.trust(project)
    assert TrustStore(store_path).status(project) == "trusted"


def test_status_judges_the_bytes_given(store_path: Path, project: Path) -> None:
    store = TrustStore(store_path)
    store.trust(project)
    assert store.status(project, project.read_bytes()) == "trusted"
    assert store.status(project, b"other bytes") == "changed"


def test_revoke(store_path: Path, project: Path, tmp_path: Path) -> None:
    store = TrustStore(store_path)
    other = tmp_path / "other.toml"
    other.write_text("")
    store.trust(project)
    store.trust(other)
    assert store.revoke(project) is True
    assert store.revoke(project) is False
    reloaded = TrustStore(store_path)
    assert reloaded.status(project) == "untrusted"
    assert reloaded.status(other) == "trusted"


def test_relative_and_absolute_paths_are_the_same_entry(
    store_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    TrustStore(store_path).trust(project)
    monkeypatch.chdir(project.parent)
    assert TrustStore(store_path).status(Path(".claude-bottle.toml")) == "trusted"


def test_symlink_does_not_inherit_trust_of_its_target(
    store_path: Path, project: Path, tmp_path: Path
) -> None:
    store = TrustStore(store_path)
    store.trust(project)
    other_ws = tmp_path / "other-ws"
    other_ws.mkdir()
    link = other_ws / ".claude-bottle.toml"
    link.symlink_to(project)
    for action in (lambda: store.status(link), lambda: store.trust(link)):
        with pytest.raises(ConfigError, match="is a symbolic link"):
            action()


def test_store_and_directory_are_private(store_path: Path, project: Path) -> None:
    TrustStore(store_path).trust(project)
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store_path.parent.stat().st_mode) == 0o700
    leftovers = [p.name for p in store_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_store_is_valid_json(store_path: Path, project: Path) -> None:
    digest = TrustStore(store_path).trust(project)
    data = json.loads(store_path.read_text())
    assert data == {"version": 1, "files": {str(project.resolve()): digest}}


@pytest.mark.parametrize(
    "content",
    [
        "not json at all",
        "",
        "[]",
        '{"version": 1, "files": []}',
        '{"version": 1, "files": {"/x/.claude-bottle.toml": "abc"}}',
        '{"version": 99, "files": {}}',
    ],
)
def test_corrupt_store_is_an_error_naming_the_file(
    store_path: Path, project: Path, content: str
) -> None:
    store_path.parent.mkdir(parents=True)
    store_path.write_text(content)
    store = TrustStore(store_path)
    for action in (lambda: store.status(project), lambda: store.trust(project)):
        with pytest.raises(ConfigError) as info:
            action()
        assert str(store_path) in info.value.message
        assert "corrupt" in info.value.message
        assert "delete" in info.value.hint and str(store_path) in info.value.hint
    assert store_path.read_text() == content  # never silently overwritten


def test_trusting_a_missing_file_is_an_error(store_path: Path, tmp_path: Path) -> None:
    missing = tmp_path / "ws" / ".claude-bottle.toml"
    with pytest.raises(ConfigError) as info:
        TrustStore(store_path).trust(missing)
    assert str(missing) in info.value.message


def test_default_location_is_the_user_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    assert TrustStore().path == tmp_path / "xdg-data" / "claude-bottle" / "trusted.json"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / ".claude-bottle.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        read_config_file(fifo)
    assert "not a regular file" in info.value.message


def test_read_config_file_missing_is_none(tmp_path: Path) -> None:
    assert read_config_file(tmp_path / "absent.toml") is None
