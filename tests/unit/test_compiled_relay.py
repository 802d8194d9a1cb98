"""The namespace bottle runs its relay from bytecode compiled once, not from source."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from claude_bottle.backend.namespace import backend
from claude_bottle.errors import LaunchError


@pytest.fixture
def relay_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    source = tmp_path / "src" / "relay.py"
    source.parent.mkdir()
    shutil.copy(backend.RELAY_SCRIPT, source)
    monkeypatch.setattr(backend, "RELAY_SCRIPT", source)
    monkeypatch.setenv("CLAUDE_BOTTLE_CACHE_DIR", str(tmp_path / "cache"))
    return source


def test_compiled_relay_runs_as_the_relay(relay_copy: Path) -> None:
    target = backend.compiled_relay()
    backend._compile_relay(target)
    assert target.parent == relay_copy.parent.parent / "cache" / "relay"
    assert list(target.parent.iterdir()) == [target]  # no partial file left behind
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(target), "--listen", "nonsense"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 125  # the relay's own usage error, from its bytecode
    assert "relay:" in done.stderr


def test_a_changed_relay_is_compiled_again(relay_copy: Path) -> None:
    first = backend.compiled_relay()
    backend._compile_relay(first)
    relay_copy.write_text(relay_copy.read_text() + "\n# changed\n")
    second = backend.compiled_relay()
    assert second != first
    backend._compile_relay(second)
    assert second.exists()


def test_an_unwritable_cache_is_named_with_the_fix(
    relay_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    monkeypatch.setenv("CLAUDE_BOTTLE_CACHE_DIR", str(blocker / "cache"))
    target = backend.compiled_relay()
    with pytest.raises(LaunchError) as caught:
        backend._compile_relay(target)
    assert str(target.parent) in caught.value.message
    assert "CLAUDE_BOTTLE_CACHE_DIR" in caught.value.hint
