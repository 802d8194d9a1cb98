"""Blank home images made ahead (src/claude_bottle/home_pool.py), with the real e2fsprogs
on files: what a new, empty home takes instead of running mkfs while it starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from claude_bottle import home_image, home_pool
from claude_bottle.limits import MIB

SIZE = 64 * MIB
needs_mkfs = pytest.mark.skipif(
    home_image.tool("mkfs.ext4") is None, reason="e2fsprogs (mkfs.ext4) is not installed"
)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A state dir of the test's own; the background refills it would start, recorded."""
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    asked: list[int] = []
    monkeypatch.setattr(home_pool, "_refill_in_background", asked.append)
    return asked


def _is_blank_ext4(image: Path) -> bool:
    check = subprocess.run(
        [str(home_image.tool("e2fsck")), "-n", "-f", str(image)], capture_output=True, timeout=60
    )
    return check.returncode == 0


@needs_mkfs
def test_an_empty_home_takes_a_spare_and_asks_for_another(tmp_path: Path, state: list[int]) -> None:
    assert home_pool.refill(SIZE) == home_pool.SPARES
    assert home_pool.refill(SIZE) == 0  # full
    (tmp_path / "b").mkdir()
    image = home_image.prepare(tmp_path / "b" / "home", SIZE)
    assert _is_blank_ext4(image)
    assert oct(image.stat().st_mode & 0o777) == "0o600" and image.stat().st_size == SIZE
    spares = [n for n in os.listdir(home_pool.pool_dir(SIZE)) if n.endswith(home_pool.SUFFIX)]
    assert len(spares) == home_pool.SPARES - 1
    assert state == [SIZE]


@needs_mkfs
def test_a_spare_goes_to_one_bottle_only(tmp_path: Path, state: list[int]) -> None:
    assert home_pool.refill(SIZE, spares=1) == 1
    first, second = tmp_path / "first.img", tmp_path / "second.img"
    assert home_pool.take(first, SIZE)
    assert not home_pool.take(second, SIZE) and not second.exists()
    assert state == [SIZE, SIZE]  # each start asks for a refill, found or not


@needs_mkfs
def test_a_home_with_files_is_made_from_them_not_taken(tmp_path: Path, state: list[int]) -> None:
    home_pool.refill(SIZE)
    home = tmp_path / "home"
    home.mkdir()
    (home / "kept").write_text("x")
    home_image.prepare(home, SIZE)
    spares = [n for n in os.listdir(home_pool.pool_dir(SIZE)) if n.endswith(home_pool.SUFFIX)]
    assert len(spares) == home_pool.SPARES and state == []


@needs_mkfs
def test_another_size_or_owner_is_another_pool(state: list[int]) -> None:
    assert home_pool.key(SIZE) != home_pool.key(2 * SIZE)
    home_pool.refill(SIZE)
    assert not home_pool.take(Path(os.devnull + ".x"), 2 * SIZE)


def test_a_refill_never_remakes_a_removed_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "removed"))
    assert home_pool.refill(SIZE) == 0
    assert not (tmp_path / "removed").exists()


@needs_mkfs
def test_what_a_killed_refiller_left_half_made_is_never_taken(
    tmp_path: Path, state: list[int]
) -> None:
    directory = home_pool.pool_dir(SIZE)
    directory.mkdir(parents=True)
    (directory / ".123-0.img.123").write_bytes(b"half")
    assert not home_pool.take(tmp_path / "x.img", SIZE)
    assert home_pool.refill(SIZE) == home_pool.SPARES
    assert not (directory / ".123-0.img.123").exists()
