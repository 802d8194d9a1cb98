"""Reading bottle.json back into typed records (issue 23, "a typed bottle record instead
of dicts"): what the launch writes reads back equal, and what it could not have written
(a truncated file, a field missing or of the wrong type) is refused naming the file and
the fix; keys the types do not name are ignored (records.py says why)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from claude_bottle import paths, state
from claude_bottle.backend import records
from claude_bottle.backend.base import Lifecycle
from claude_bottle.backend.namespace.backend import NamespaceBackend
from claude_bottle.cli import commands
from claude_bottle.errors import ConfigError
from tests.unit.bottle_records import stored, written

BACKENDS = ("namespace", "docker", "smolmachines")


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLAUDE_BOTTLE_RUNTIME_DIR", str(tmp_path / "run"))


def _file(name: str = "b") -> Path:
    return paths.state_dir(name) / "bottle.json"


def _refused(match: str, name: str = "b") -> ConfigError:
    with pytest.raises(ConfigError, match=match) as caught:
        records.read(name)
    assert str(_file(name)) in str(caught.value)
    assert "claude-bottle cleanup --records" in caught.value.hint
    return caught.value


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_the_launch_writes_reads_back_equal(backend: str) -> None:
    record = stored(backend)
    record.bottle.write(record.own)
    assert records.read("b") == record
    assert type(records.read("b").own) is type(record.own)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lifecycle_and_unknown_keys_are_ignored_and_kept_on_disk(backend: str) -> None:
    record = stored(backend)
    record.bottle.write(record.own)
    state.update_record("b", status="exited", exit_code=1, owner=None, from_a_newer_version=[1])
    expected = stored(backend, created=record.bottle.created, status="exited")
    assert records.read("b") == expected._replace(lifecycle=Lifecycle(exit_code=1))
    assert records.live_state(records.read("b")) == "exited (1)"
    on_disk = json.loads(_file().read_text())
    assert on_disk["from_a_newer_version"] == [1] and on_disk["exit_code"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_truncated_record_is_refused(backend: str) -> None:
    record = stored(backend)
    record.bottle.write(record.own)
    text = _file().read_text()
    _file().write_text(text[: len(text) // 2])
    _refused("truncated")


@pytest.mark.parametrize(
    ("backend", "field"),
    [
        ("namespace", "exec_socket"),
        ("docker", "placement"),
        ("smolmachines", "machine"),
        ("docker", "processes"),
    ],
)
def test_a_record_missing_a_field_is_refused_naming_it(backend: str, field: str) -> None:
    data = written(stored(backend))
    del data[field]
    state.write_record("b", data)
    error = _refused("lacks")
    assert field in str(error)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("processes", {"bottle": {"pid": "1", "start": 2}}),
        ("processes", {"bottle": {"pid": True, "start": 2}}),
        ("command", "claude"),
        ("env", {"HOME": 1}),
        ("created", "yesterday"),
        ("exec_socket", None),
        ("cgroup", []),
        ("owner", {"pid": 1.5, "start": 2}),
        ("exit_code", "0"),
        ("policy", []),
    ],
)
def test_a_field_of_the_wrong_type_is_refused(field: str, value: object) -> None:
    data = {**written(stored("namespace")), field: value}
    state.write_record("b", data)
    assert field in str(_refused("malformed"))


@pytest.mark.parametrize("text", ["[]", "null", '"b"', "", "\xff", "[" * 100_000])
def test_a_file_holding_no_json_object_is_refused(text: str) -> None:
    paths.make_private_dir(paths.state_dir("b"))
    _file().write_text(text)
    _refused("not a bottle record")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_time_that_is_no_number_is_refused(constant: str) -> None:
    """`ls` computes the age from it: NaN would crash it."""
    text = json.dumps(written(stored("namespace"))).replace(
        '"created": ', f'"created": {constant}, "x": ', 1
    )
    paths.make_private_dir(paths.state_dir("b"))
    _file().write_text(text)
    _refused("not a bottle record")


def test_a_record_naming_no_known_backend_is_refused() -> None:
    state.write_record("b", {**written(stored("namespace")), "backend": "../x"})
    _refused("no known backend")


def test_an_oversized_record_is_refused_unread() -> None:
    data = written(stored("namespace"))
    data["padding"] = "x" * records.MAX_RECORD_BYTES
    state.write_record("b", data)
    _refused("larger than")


def test_stop_of_a_live_bottle_with_a_broken_record_says_how_to_fix_it() -> None:
    """Before anything is signalled or removed: the record is all `stop` has to go on."""
    data = written(stored("namespace", processes={}))
    del data["exec_socket"]
    data["processes"] = {"bottle": state.process_ref(os.getpid())}
    state.write_record("b", data)
    with pytest.raises(ConfigError, match="lacks exec_socket") as caught:
        commands.stop("b", stop_all=False)
    assert "cleanup --records" in caught.value.hint


def test_stop_all_stops_the_others_and_then_names_the_broken_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopped: list[str] = []
    monkeypatch.setattr(
        NamespaceBackend, "stop", lambda self, record: stopped.append(record.bottle.name)
    )
    me = {"bottle": state.process_ref(os.getpid())}
    for name in ("a-broken", "b-fine"):
        state.write_record(name, written(stored("namespace", name, processes=me)))
    broken = json.loads(_file("a-broken").read_text())
    del broken["env"]
    state.write_record("a-broken", broken)
    with pytest.raises(ConfigError, match=r"a-broken.*lacks env"):
        commands.stop(None, stop_all=True)
    assert stopped == ["b-fine"]
    assert json.loads(_file("b-fine").read_text())["status"] == "stopped"
    assert json.loads(_file("a-broken").read_text())["status"] == "running"


def test_ls_lists_an_unreadable_record_as_unknown_and_says_how_to_fix_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    record = stored("namespace", "fine", status="stopped")
    record.bottle.write(record.own)
    paths.make_private_dir(paths.state_dir("cut"))
    _file("cut").write_text('{"name": "cut", "backe')
    paths.make_private_dir(paths.state_dir("starting"))  # a launch not yet recorded
    commands.list_bottles(as_json=True)
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert [(r["name"], r["state"], r["backend"]) for r in rows] == [
        ("cut", "unknown", "?"),
        ("fine", "stopped", "namespace"),
        ("starting", "unknown", "?"),
    ]
    assert str(_file("cut")) in err and "cleanup --records" in err
    assert "starting" not in err


def test_run_does_not_launch_over_an_unreadable_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It may name a running bottle: the launch would take its name and directories."""
    launched: list[str] = []
    monkeypatch.setattr(commands, "_launch_and_run", lambda *a, **k: launched.append("x"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-secret")
    monkeypatch.setenv("CLAUDE_BOTTLE_CONFIG_DIR", str(tmp_path / "config"))
    paths.make_private_dir(paths.state_dir("b"))
    _file().write_text("{")
    options = {"allow": (), "workspace": str(tmp_path), "config_file": None}
    with pytest.raises(ConfigError, match="truncated"):
        commands.run(("true",), detach=False, name="b", backend="namespace", **options)
    assert launched == []
    _file().unlink()
    commands.run(("true",), detach=False, name="b", backend="namespace", **options)
    assert launched == ["x"]


def test_cleanup_signals_no_process_an_unreadable_record_names() -> None:
    """A record that does not parse is no proof that a process is a bottle's."""
    from claude_bottle.backend.namespace import cleanup

    me = {"bundle": state.process_ref(os.getpid())}
    data = written(stored("namespace", "b", processes=me, status="crashed"))
    state.write_record("b", data)
    assert cleanup.stray_processes(records.listing(), "namespace") != []
    del data["command"]
    state.write_record("b", data)
    assert cleanup.stray_processes(records.listing(), "namespace") == []


def test_a_full_disk_at_the_end_is_said_not_raised_and_leaves_the_record_whole(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The fault run of test_fail_closed: a bottle stopped because its state dir filled up
    must still exit with why it stopped, not with an internal error from writing its end
    into the same full disk. ENOSPC here is real: the record's temporary file is /dev/full."""
    record = stored("namespace")
    record.bottle.write(record.own)
    before = _file().read_bytes()
    (_file().parent / "bottle.json.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError):
        state.update_record("b", processes={})
    (_file().parent / "bottle.json.tmp").symlink_to("/dev/full")
    state.note_ending("b", status="exited", exit_code=3)
    assert "cannot record how bottle b ended: No space left on device" in capsys.readouterr().err
    assert _file().read_bytes() == before
    assert not (_file().parent / "bottle.json.tmp").exists()
