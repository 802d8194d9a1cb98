"""The command install.sh puts on PATH (cli/launcher.py), and how little a warm start's
caller loads before it hands the run over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from claude_bottle.cli import launcher
from tests.unit.loaded_modules import modules_after

HEAVY = {"re", "enum", "collections", "contextlib", "functools", "socket", "signal", "typing"}


def test_the_launcher_replaces_a_symlink_and_runs_the_cli(tmp_path: Path) -> None:
    target = tmp_path / "console-script"
    target.write_text("left alone\n")
    path = tmp_path / "claude-bottle"
    path.symlink_to(target)
    launcher.write(str(path), sys.executable)
    assert not path.is_symlink() and target.read_text() == "left alone\n"
    assert os.access(path, os.X_OK)
    assert "import re" not in [line.strip() for line in path.read_text().splitlines()]
    done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "claude-bottle" in done.stdout, done.stderr


def test_a_warm_callers_imports_load_no_heavy_module() -> None:
    """What the launcher and a warm run's caller import (entry, warm) adds none of the
    modules that cost milliseconds to load; the interpreter's own start is the baseline."""
    baseline = modules_after("")
    loaded = modules_after("import claude_bottle.cli.entry, claude_bottle.cli.warm")
    assert not (loaded - baseline) & HEAVY, sorted((loaded - baseline) & HEAVY)
