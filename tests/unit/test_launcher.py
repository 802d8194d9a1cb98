"""Starting host-process bundles: the ordinary way, and prestarted before the plan exists."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import claude_bottle
from claude_bottle.bundle import launcher, prestart
from claude_bottle.bundle.settings import BundleSettings
from claude_bottle.errors import LaunchError
from tests.unit.bundle_settings import bundle_settings


@pytest.fixture(autouse=True)
def no_leftover_prestart() -> Iterator[None]:
    yield
    launcher.discard_prestarted()


def _settings(tmp_path: Path) -> tuple[BundleSettings, Path]:
    settings = bundle_settings(tmp_path)
    path = tmp_path / "bundle.json"
    settings.dump(path)
    return settings, path


def _ping(control_socket: str) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(control_socket)
        sock.sendall(b'{"op": "ping"}\n')
        answer: dict[str, object] = json.loads(sock.makefile().readline())
        return answer


def _prestarted_process() -> launcher.BundleProcess:
    early = launcher.prestarted()
    assert early is not None
    return early.process


def test_nothing_heavy_loads_before_the_bundle_is_forked() -> None:
    """What the entry point imports before the fork, the bundle's start waits for too."""
    # -S: without site, which on some machines loads half the standard library itself.
    package_parent = str(Path(claude_bottle.__file__).parent.parent)
    script = (
        "import sys; before = set(sys.modules)\n"
        f"sys.path.insert(0, {package_parent!r})\n"
        "import claude_bottle.cli.entry, claude_bottle.backend.registry\n"
        "import claude_bottle.bundle.prestart\n"
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True)
    loaded = set(done.stdout.split())
    assert "claude_bottle.bundle.prestart" in loaded
    heavy = {"typing", "pathlib", "subprocess", "json", "collections", "re", "click", "asyncio"}
    assert not loaded & heavy


def test_prestarted_bundle_serves_the_settings_handed_to_it(tmp_path: Path) -> None:
    launcher.prestart_bundle(die_with_parent=True)
    early_pid = _prestarted_process().pid
    settings, path = _settings(tmp_path)
    process = launcher.spawn_bundle(
        path, tmp_path / "bundle.log", die_with_parent=True
    ).wait_ready()
    try:
        assert process.pid == early_pid  # the prestarted one, not a second process
        assert _ping(settings.control_socket) == {"ok": True, "pid": early_pid}
    finally:
        launcher.stop_process(process)
    events = [json.loads(line) for line in Path(settings.audit_log).read_text().splitlines()]
    assert [e["rule"] for e in events] == ["bundle-start", "bundle-stop"]


def test_unused_prestarted_bundle_goes_away(tmp_path: Path) -> None:
    launcher.prestart_bundle(die_with_parent=True)
    process = _prestarted_process()
    launcher.discard_prestarted()
    assert process.wait(5) is not None
    assert launcher.prestarted() is None


def test_prestart_for_another_lifetime_is_not_used(tmp_path: Path) -> None:
    launcher.prestart_bundle(die_with_parent=True)
    early = _prestarted_process()
    _, path = _settings(tmp_path)
    process = launcher.spawn_bundle(path, tmp_path / "b.log", die_with_parent=False).wait_ready()
    try:
        assert process.pid != early.pid  # a detached bottle's bundle must not die with us
        assert early.wait(5) is not None
    finally:
        launcher.stop_process(process)


def test_prestarted_bundle_that_cannot_start_says_why(tmp_path: Path) -> None:
    launcher.prestart_bundle(die_with_parent=True)
    settings_file = tmp_path / "bundle.json"
    settings_file.write_text("{not json")
    pending = launcher.spawn_bundle(settings_file, tmp_path / "bundle.log", die_with_parent=True)
    with pytest.raises(LaunchError, match="did not start") as caught:
        pending.wait_ready(timeout=10)
    assert "Expecting property name" in caught.value.message  # what went wrong, from its log
    assert "bundle.log" in caught.value.hint
    assert (tmp_path / "bundle.log").exists()  # its log moved there once it was told


def test_prestarted_bundle_keeps_none_of_the_launchers_descriptors(tmp_path: Path) -> None:
    marker = tmp_path / "held-by-the-cli"
    with marker.open("w"):
        launcher.prestart_bundle(die_with_parent=True)
    pid = _prestarted_process().pid
    fd_dir = Path(f"/proc/{pid}/fd")

    def held() -> set[str]:
        targets = set()
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):  # closed while we look: that is the point
                targets.add(os.readlink(fd_dir / fd))
        return targets

    deadline = time.monotonic() + 5  # it closes them first thing, a moment after the fork
    while str(marker) in held() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert str(marker) not in held()
    assert os.getsid(pid) == pid  # its own session: a Ctrl-C at the terminal is not its
    launcher.discard_prestarted()  # and it still sees its handoff pipe close


def test_fork_refused_leaves_nothing_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without memfd (a seccomp filter may refuse it) the bundle is not forked, and the
    pipes made for it are closed; the launcher then starts one by exec."""

    def refuse(*args: object) -> int:
        raise OSError(errno.ENOSYS, "memfd_create refused")

    monkeypatch.setattr(os, "memfd_create", refuse)
    before = sorted(os.listdir("/proc/self/fd"))
    assert prestart.fork_bundle(die_with_parent=True) is False
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert prestart.take() is None
