"""The warm start of `run` (src/claude_bottle/cli/warm.py, warm_server.py) with the real
CLI and real bottles: the run a warm process serves is the run a cold CLI would have
been (streams, working directory, environment, status, signals), it dies with its
caller, and a caller that is not this process's like is refused."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import BottleEnv

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("backend", ["namespace"], indirect=True),
]


@pytest.fixture
def warm_dir(bottle_env: BottleEnv) -> Iterator[Path]:
    """A runtime dir of this test's own: its warm process is this test's, and leaves with it."""
    runtime = Path(tempfile.mkdtemp(prefix="cb-warm-"))
    bottle_env.env["XDG_RUNTIME_DIR"] = str(runtime)
    yield runtime / "claude-bottle-warm"
    shutil.rmtree(runtime, ignore_errors=True)


def _socket(directory: Path, timeout: float = 30.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(directory.glob("*.sock"))
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no warm process made a socket in {directory}")


def _warm_pid(sock: Path) -> int:
    """The warm process serving `sock` (its children, forked from it, share its command
    line: the one whose parent is not one of them)."""
    mine = {}
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and str(sock).encode() + b"\0" in (entry / "cmdline").read_bytes()
            ):
                status = (entry / "status").read_text()
                mine[int(entry.name)] = int(status.split("\nPPid:")[1].split()[0])
        except (OSError, IndexError):
            continue
    roots = [pid for pid, parent in mine.items() if parent not in mine]
    assert len(roots) == 1, mine
    return roots[0]


def _children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def _wait(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_warm_run_is_the_run_a_cold_cli_would_have_made(
    bottle_env: BottleEnv, warm_dir: Path
) -> None:
    first = bottle_env.sh("echo cold")  # starts the warm process for the next run
    assert first.returncode == 0 and first.stdout == "cold\n", first.stderr
    warm = _warm_pid(_socket(warm_dir))
    script = 'echo out; echo err >&2; pwd; echo "$CB_PASSED"; exit 7'
    bottle_env.env["CB_PASSED"] = "not passed into the bottle"
    results = []
    for setting in ("1", "0"):  # the warm process, then the cold path
        bottle_env.env["CLAUDE_BOTTLE_WARM"] = setting
        results.append(bottle_env.sh(script))
    served, cold = results
    assert served.returncode == cold.returncode == 7, (served.stderr, cold.stderr)
    assert served.stdout == cold.stdout == f"out\n{bottle_env.workspace}\n\n", served.stdout
    assert "err" in served.stderr and "err" in cold.stderr
    # Served by the warm process, not by the caller: the caller has no child of its own.
    bottle_env.env["CLAUDE_BOTTLE_WARM"] = "1"
    caller = bottle_env.start("echo started; sleep 30")
    try:
        assert caller.stdout is not None and caller.stdout.readline() == "started\n"
        assert _children(caller.pid) == [] and _children(warm) != []
    finally:
        caller.kill()
        caller.wait(30)


def test_a_caller_killed_takes_its_run_with_it(bottle_env: BottleEnv, warm_dir: Path) -> None:
    assert bottle_env.sh("true").returncode == 0
    warm = _warm_pid(_socket(warm_dir))
    marker = f"60.{os.getpid()}{time.monotonic_ns()}"  # a sleep of ~60 s, its own argv
    caller = bottle_env.start(f"exec sleep {marker}")

    def left() -> list[str]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(entry.name)
            except OSError:
                continue
        return found

    assert _wait(lambda: len(left()) > 1), "the command is not running"  # caller and sleep
    caller.kill()
    caller.wait(30)
    assert _wait(lambda: not left() and not _children(warm)), left()


def test_signals_reach_the_run_and_its_status_comes_back(
    bottle_env: BottleEnv, warm_dir: Path
) -> None:
    assert bottle_env.sh("true").returncode == 0
    _socket(warm_dir)
    statuses = []
    for setting in ("1", "0"):
        bottle_env.env["CLAUDE_BOTTLE_WARM"] = setting
        caller = bottle_env.start("echo started; sleep 30")
        assert caller.stdout is not None and caller.stdout.readline() == "started\n"
        caller.send_signal(signal.SIGTERM)
        statuses.append(caller.wait(30))
    assert statuses[0] == statuses[1], statuses  # warm, cold


def test_a_caller_in_other_namespaces_is_refused(bottle_env: BottleEnv, warm_dir: Path) -> None:
    assert bottle_env.sh("true").returncode == 0
    sock = _socket(warm_dir)
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    ask = textwrap.dedent("""
        import socket, sys
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        r = b"\\0".join([b"claude-bottle-warm-1", b"", b"18", b"", b"1", b"claude-bottle"])
        try:
            s.sendall(len(r).to_bytes(4, "big") + r)
        except OSError:
            pass  # refused before its request is read
        print(s.recv(256).decode().strip())
    """)
    outer = ["--mount"] if os.getuid() == 0 else ["--user", "--map-current-user"]
    result = subprocess.run(
        [unshare, *outer, sys.executable, "-c", ask, str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused another-"), result.stdout
    assert "namespace" in result.stdout, result.stdout


def test_the_warm_process_leaves_with_its_socket(bottle_env: BottleEnv, warm_dir: Path) -> None:
    assert bottle_env.sh("true").returncode == 0
    sock = _socket(warm_dir)
    warm = _warm_pid(sock)
    sock.unlink()
    assert _wait(lambda: not Path(f"/proc/{warm}").exists() or _zombie(warm)), "still running"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


# Runs the CLI in-process after the warm process's preload, as a warm child would, and
# records every module imported from then on, in the CLI and in the bundle forked from it.
_IMPORTS_AFTER_PRELOAD = """
import os, sys
record = sys.argv[1]
from claude_bottle.cli import warm_server
warm_server._preload()
def hook(event, args):
    if event == "import" and args[0] not in sys.builtin_module_names:
        fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, args[0].encode() + b"\\n")
        os.close(fd)
sys.addaudithook(hook)
sys.argv = ["claude-bottle", *sys.argv[2:]]
from claude_bottle.cli import entry
entry.run_cold()
"""


def test_a_warm_run_imports_nothing_its_warm_process_did_not(
    bottle_env: BottleEnv, tmp_path: Path
) -> None:
    """Each module a run imports inside a function is imported ahead by the warm process
    (warm_server.RUN_MODULES, the backends' launch_modules, the bundle's SERVING_MODULES):
    a module added to a run's path and not to those lists fails here."""
    script = tmp_path / "imports_after_preload.py"
    script.write_text(_IMPORTS_AFTER_PRELOAD)
    env = {**bottle_env.env, "CLAUDE_BOTTLE_WARM": "0"}
    for attempt in ("fills the caches", "measured"):
        record = tmp_path / f"{attempt}.txt"
        result = subprocess.run(
            [
                sys.executable,
                "-P",
                str(script),
                str(record),
                "run",
                "--backend",
                bottle_env.backend,
                "--",
                "true",
            ],
            env=env,
            cwd=bottle_env.workspace,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    imported = sorted(set(record.read_text().split())) if record.exists() else []
    assert imported == [], imported
