"""`cleanup` right after `kill -9` of the CLI waits for what the killed launch still runs:
it finds those processes by the state root's label in their command line, and by their
parent, the CLI, being gone (issue 23). Real processes, orphaned as a killed CLI's are."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_bottle.backend.docker import orphans

SLEEPER = "import time\ntime.sleep(60)\n"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Start a sleeping process with the given arguments (`run --rm ...` like a docker
    client), orphaned (its parent exits) or under a parent whose command line names
    claude-bottle; its pid. Killed afterwards."""
    (tmp_path / "run").write_text(SLEEPER)  # `python3 run ARGS`: argv[1] is "run"
    pids: list[int] = []
    parents: list[subprocess.Popen[bytes]] = []

    def start(*args: str, orphaned: bool = True, prefix: tuple[str, ...] = ()) -> int:
        argv = [*prefix, sys.executable, "run", *args]
        child = f"import subprocess; p = subprocess.Popen({argv!r}); print(p.pid, flush=True)"
        if not orphaned:
            child += "; p.wait()"
        parent = subprocess.Popen(
            [sys.executable, "-c", child, "claude_bottle"],  # the CLI's mark, for the live case
            cwd=tmp_path,
            stdout=subprocess.PIPE,
        )
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        pids.append(pid)
        if orphaned:
            parent.wait(10)  # its child is handed to init, as a killed CLI's are
        else:
            parents.append(parent)
        deadline = time.monotonic() + 10
        while b"run" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline  # until the child has exec'd
            time.sleep(0.01)
        return pid

    yield start
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for parent in parents:
        parent.wait(10)


LABELS = ("--label", "claude-bottle.state=abc123", "--label", "claude-bottle.bottle=dead")


def test_a_killed_launchs_clients_and_watchdog_are_found(spawn: Callable[..., int]) -> None:
    attached = spawn("--rm", *LABELS)
    detached = spawn("--detach", *LABELS)
    watchdog = spawn(
        "--teardown",
        '{"claude-bottle.bottle": "dead", "claude-bottle.instance": "i1", '
        '"claude-bottle.state": "abc123"}',
    )
    found = {o.pid: o for o in orphans.find("abc123", set())}
    assert found[attached] == orphans.Orphan(attached, "dead", attached=True)
    assert found[detached] == orphans.Orphan(detached, "dead", attached=False)
    assert found[watchdog] == orphans.Orphan(watchdog, "dead", attached=False)


def test_live_bottles_other_state_roots_and_live_launches_are_not_waited_for(
    spawn: Callable[..., int],
) -> None:
    orphan = spawn("--detach", *LABELS)
    live_cli_child = spawn("--detach", *LABELS, orphaned=False)
    other_root = spawn("--detach", "--label", "claude-bottle.state=other", *LABELS[2:])
    assert orphans.find("abc123", {"dead"}) == []  # the bottle is live: a detached one's
    pids = {o.pid for o in orphans.find("abc123", set())}
    # Only this test's own: another suite running on the machine spawns the same labels.
    assert pids & {orphan, live_cli_child, other_root} == {orphan}


@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare is missing")
def test_a_process_in_another_pid_namespace_is_never_waited_for(tmp_path: Path) -> None:
    """A bottle's processes live in a pid namespace of their own: one that names our
    labels in its command line cannot make `cleanup` wait for it."""
    (tmp_path / "run").write_text(SLEEPER)
    inner = tmp_path / "inner.sh"  # the labels are in the inner process's argv alone
    inner.write_text(f"exec {sys.executable} run --detach {' '.join(LABELS)}\n")
    user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    wrapper = subprocess.Popen(
        ["unshare", *user, "--pid", "--fork", "--kill-child", "/bin/sh", str(inner)],
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        inside = None
        while inside is None:
            if wrapper.poll() is not None:
                pytest.skip("cannot make a pid namespace here")
            assert time.monotonic() < deadline
            children = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children").read_text()
            for pid in children.split():
                if b"abc123" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    inside = int(pid)
            time.sleep(0.01)
        assert os.readlink(f"/proc/{inside}/ns/pid") != os.readlink("/proc/self/ns/pid")
        assert inside not in {o.pid for o in orphans.find("abc123", set())}
    finally:
        wrapper.kill()
        wrapper.wait(10)
