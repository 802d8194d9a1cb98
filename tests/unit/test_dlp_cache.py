"""The bundle's on-disk cache of compiled DLP databases: private, atomic, never fatal."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from claude_bottle.bundle.scanning import DirectoryCache


def test_round_trip_in_a_private_directory(tmp_path: Path) -> None:
    cache = DirectoryCache(tmp_path / "cache" / "dlp")
    assert cache.load("hyperscan-abc") is None
    cache.store("hyperscan-abc", b"compiled")
    assert cache.load("hyperscan-abc") == b"compiled"
    assert stat.S_IMODE((tmp_path / "cache" / "dlp").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "cache" / "dlp" / "hyperscan-abc").stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "cache" / "dlp").iterdir()] == ["hyperscan-abc"]


def test_unwritable_directory_is_only_a_miss(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = DirectoryCache(blocker / "dlp")
    cache.store("hyperscan-abc", b"compiled")  # no exception
    assert cache.load("hyperscan-abc") is None


def test_oversized_entry_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = DirectoryCache(tmp_path)
    monkeypatch.setattr(DirectoryCache, "MAX_BYTES", 4)
    cache.store("hyperscan-abc", b"12345")
    assert cache.load("hyperscan-abc") is None


@pytest.mark.parametrize("key", ["../escape", "a/b", "", ".hidden", "UPPER"])
def test_keys_cannot_leave_the_directory(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        DirectoryCache(tmp_path).store(key, b"x")
