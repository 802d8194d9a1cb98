"""`cleanup` and `stop` signal and delete only what they can prove is a bottle's
(issue 27, row 7 / item 6; issue 18 item 8, the part about state).

Real processes stand in for bundles and bottles: `cleanup` and `stop` only ever see a
process through its pid, start time and command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_bottle import paths, state
from claude_bottle.backend import records, registry
from claude_bottle.backend.namespace.backend import NamespaceBackend
from claude_bottle.cli import commands
from tests.unit.bottle_records import stored, written

HOSTILE = "\x1b]0;pwned\x07\x1b[2K\r\x9b31m"


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLAUDE_BOTTLE_RUNTIME_DIR", str(tmp_path / "run"))
    # Only the namespace backend: the docker one would look at this machine's images.
    monkeypatch.setattr(registry, "names", lambda: ("namespace",))


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a sleeping process whose command line carries `args`; killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        code = "import time;print('up',flush=True);time.sleep(120)"
        process = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        assert process.stdout is not None and process.stdout.readline() == b"up\n"
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _gone() -> dict[str, int]:
    """The reference of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    ref = state.process_ref(process.pid)
    process.wait(10)
    return ref


def _record(name: str, **fields: object) -> Path:
    runtime = paths.make_private_dir(paths.runtime_root() / name)
    launched = written(stored("namespace", name, runtime_dir=str(runtime), cgroup=None))
    state.write_record(name, {**launched, "cgroup_counters": None, **fields})
    return runtime


def _alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


def test_a_stale_bottle_does_not_take_a_running_one_whose_name_it_prefixes(
    spawn: Callable[..., subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    stale = _record("x-cl", processes={"bundle": _gone(), "bottle": _gone()})
    running_dir = paths.runtime_root() / "x-clx"
    bundle = spawn(str(running_dir / "bundle.json"))
    bottle = spawn(str(running_dir / "exec"))
    running = _record(
        "x-clx",
        processes={
            "bundle": state.process_ref(bundle.pid),
            "bottle": state.process_ref(bottle.pid),
        },
    )
    commands.cleanup(dry_run=False, records=False)
    assert _alive(bundle) and _alive(bottle)
    assert running.is_dir()
    assert not stale.exists()
    assert "x-clx" not in capsys.readouterr().out


def test_a_recorded_process_of_a_crashed_bottle_is_killed_and_shown_escaped(
    spawn: Callable[..., subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = paths.runtime_root() / "crashed"
    bundle = spawn(HOSTILE, str(runtime / "bundle.json"))
    _record("crashed", processes={"bundle": state.process_ref(bundle.pid), "bottle": _gone()})
    commands.cleanup(dry_run=False, records=False)
    assert bundle.wait(10) == -signal.SIGKILL
    out = capsys.readouterr().out
    assert f"{bundle.pid} (bundle of bottle crashed" in out
    for raw in ("\x1b", "\x07", "\r", "\x9b"):
        assert raw not in out
    assert "\\x1b]0;pwned" in out
    assert not runtime.exists()


def test_a_recycled_pid_is_not_killed(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    bystander = spawn(str(paths.runtime_root() / "recycled" / "bundle.json"))
    wrong_start = {"pid": bystander.pid, "start": state.process_ref(bystander.pid)["start"] - 1}
    _record("recycled", processes={"bundle": wrong_start, "bottle": _gone()})
    commands.cleanup(dry_run=False, records=False)
    assert _alive(bystander)


def test_stop_does_not_signal_an_owner_or_process_whose_start_time_differs(
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    owner, bundle, bottle = spawn(), spawn(), spawn()

    def recycled(process: subprocess.Popen[bytes]) -> dict[str, int]:
        return {"pid": process.pid, "start": state.process_ref(process.pid)["start"] + 1}

    me = state.process_ref(os.getpid())
    _record("s", processes={"bundle": me, "bottle": me}, owner=recycled(owner))
    record = records.read("s")
    assert records.is_live(record)
    processes = {"bundle": recycled(bundle), "bottle": recycled(bottle)}
    NamespaceBackend().stop(record._replace(bottle=record.bottle._replace(processes=processes)))
    state.signal_process(record.lifecycle.owner, signal.SIGTERM)
    assert _alive(owner) and _alive(bundle) and _alive(bottle)


@pytest.mark.parametrize("bad", [0, -1, 1, True, "123", None])
def test_implausible_pids_are_never_signalled(bad: object) -> None:
    ref = {"pid": bad, "start": 1}
    assert state.process_alive(ref) is False
    assert state.signal_process(ref, 0) is False


def test_signal_process_reaches_the_recorded_process(
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    process = spawn()
    assert state.signal_process(state.process_ref(process.pid), signal.SIGTERM) is True
    assert process.wait(10) == -signal.SIGTERM


def test_stop_removes_only_the_runtime_dir_the_name_implies(tmp_path: Path) -> None:
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    sibling = paths.make_private_dir(paths.runtime_root() / "other")
    (sibling / "keep").write_text("x")
    root = paths.runtime_root()
    for recorded in (str(elsewhere), str(root / ".."), str(root / "n1" / ".." / "other")):
        NamespaceBackend().stop(stored("namespace", "n1", runtime_dir=recorded, processes={}))
        assert (elsewhere / "keep").exists() and (sibling / "keep").exists()


def test_links_planted_in_the_runtime_dir_and_home_are_not_followed(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("x")
    runtime = _record("planted", processes={})
    (runtime / "exec").mkdir()
    (runtime / "exec" / "link").symlink_to(precious)
    home = paths.make_private_dir(paths.state_dir("planted") / "home")
    (home / "link").symlink_to(precious)
    NamespaceBackend().stop(records.read("planted"))
    assert not runtime.exists()
    commands.cleanup(dry_run=False, records=True)
    assert not paths.state_dir("planted").exists()
    assert (precious / "keep").read_text() == "x"


def test_a_runtime_dir_replaced_by_a_link_is_removed_as_a_link(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("x")
    paths.make_private_dir(paths.runtime_root())
    (paths.runtime_root() / "gone").symlink_to(precious, target_is_directory=True)
    commands.cleanup(dry_run=False, records=False)
    assert not (paths.runtime_root() / "gone").is_symlink()
    assert (precious / "keep").read_text() == "x"


@pytest.mark.parametrize(("args", "images"), [([], False), (["--images"], True)])
def test_cleanup_asks_backends_for_images_only_with_images(
    monkeypatch: pytest.MonkeyPatch, args: list[str], images: bool
) -> None:
    from click.testing import CliRunner

    from claude_bottle.backend.base import CleanupPlan
    from claude_bottle.cli.main import cli

    asked: list[bool] = []

    class Recording(NamespaceBackend):
        def cleanup_plan(self, live_names: set[str], *, images: bool = False) -> CleanupPlan:
            asked.append(images)
            return CleanupPlan(self.name, ())

    monkeypatch.setattr(registry, "get", lambda name: Recording())
    result = CliRunner().invoke(cli, ["cleanup", *args])
    assert result.exit_code == 0, result.output
    assert asked == [images]
