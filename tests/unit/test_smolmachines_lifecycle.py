"""The smolmachines lifecycle against tests/fakes/fake_smolvm (a recording fake, not smolvm).

The fake sits on PATH as `smolvm`, logs every argv and keeps machine state in a temp dir;
the bundle is the real one (a host process listening on the bottle's unix sockets). So
these tests check the order of smolvm calls, all-or-nothing launch, teardown, resume,
stop and cleanup, and that exec/cp go through `smolvm machine exec/cp` as pinned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_bottle import home_image, paths, state
from claude_bottle.backend import records
from claude_bottle.backend.base import LaunchRequest, StoredBottle
from claude_bottle.backend.smolmachines import SmolmachinesBackend, prepare, util
from claude_bottle.backend.smolmachines.bottle import SmolmachinesBottle
from claude_bottle.backend.smolmachines.bottle_plan import SmolmachinesBottlePlan
from claude_bottle.backend.smolmachines.launch import SmolmachinesRecord
from claude_bottle.bundle.launcher import PendingBundle, spawn_bundle
from claude_bottle.config.model import Config
from claude_bottle.errors import BottleError, ConfigError, LaunchError, MissingDependency

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "fake_smolvm"
NAME = "proj-abcde"
MACHINE = "cb-proj-abcde"


@dataclasses.dataclass
class Rig:
    root: Path
    fake_state: Path
    workspace: Path
    pack: Path
    bundles: list[subprocess.Popen[bytes]]

    def calls(self) -> list[list[str]]:
        log = self.fake_state / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line)["argv"] for line in log.read_text().splitlines()]

    def subcommands(self) -> list[str]:
        return [" ".join(argv[:2]) for argv in self.calls()]

    def machines(self) -> dict[str, Any]:
        path = self.fake_state / "machines.json"
        data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return data

    def smolvm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["smolvm", *args], capture_output=True, text=True, check=False)

    def backend(self, **overrides: Any) -> SmolmachinesBackend:
        def spawner(
            settings: Path, log: Path, *, die_with_parent: bool, injections: Any = ()
        ) -> PendingBundle:
            pending = spawn_bundle(
                settings, log, die_with_parent=die_with_parent, injections=injections
            )
            self.bundles.append(pending.process)
            return pending

        options: dict[str, Any] = {
            "checks": lambda: [],
            "pack_image": lambda image, exe: self.pack,
            "bundle_spawner": spawner,
        }
        options.update(overrides)
        return SmolmachinesBackend(**options)

    def plan(
        self, backend: SmolmachinesBackend, *, detach: bool = False, disk: int | None = None
    ) -> SmolmachinesBottlePlan:
        config = Config()
        config = config._replace(egress=config.egress._replace(intercept=False))
        if disk is not None:
            limits = config.bottle.limits._replace(disk=disk)
            config = config._replace(bottle=config.bottle._replace(limits=limits))
        request = LaunchRequest(NAME, self.workspace, config, ("true",), detach=detach)
        return backend.plan(request)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    runtime = Path(tempfile.mkdtemp(prefix="cbsm-"))  # short: unix socket paths are limited
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "smolvm").symlink_to(FAKE)
    fake_state = tmp_path / "fake"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_SMOLVM_STATE", str(fake_state))
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLAUDE_BOTTLE_RUNTIME_DIR", str(runtime))
    for knob in ("FAKE_SMOLVM_FAIL", "FAKE_SMOLVM_NO_READY", "FAKE_SMOLVM_NOTE"):
        monkeypatch.delenv(knob, raising=False)
    monkeypatch.delenv(prepare.NETWORK_ENV, raising=False)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    pack = tmp_path / "agent.smolmachine"
    pack.write_text("fake pack")
    rig = Rig(tmp_path, fake_state, workspace, pack, [])
    try:
        yield rig
    finally:
        for machine in rig.machines().values():  # stray fake VMM processes
            if machine.get("pid"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(machine["pid"], signal.SIGKILL)
        for bundle in rig.bundles:
            if bundle.poll() is None:
                bundle.kill()
                bundle.wait()
        shutil.rmtree(runtime, ignore_errors=True)


# --- launch ----------------------------------------------------------------------------------


def test_launch_creates_then_starts_then_tears_down(rig: Rig) -> None:
    backend = rig.backend()
    plan = rig.plan(backend)
    runtime = Path(plan.runtime_dir)
    with backend.launch(plan) as bottle:
        assert rig.subcommands() == ["machine ls", "machine create", "machine start", "machine ls"]
        create = rig.calls()[1]
        assert create[create.index("--name") + 1] == MACHINE
        sockets = [create[i + 1] for i, arg in enumerate(create) if arg == "--mount-socket"]
        assert sockets == [
            f"{runtime}/bundle/proxy.sock:/run/claude-bottle/proxy.sock",
            f"{runtime}/bundle/gateway.sock:/run/claude-bottle/gateway.sock",
            f"{runtime}/bundle/hook.sock:/run/claude-bottle/hook.sock",
        ]
        assert "--net" not in create
        assert rig.machines()[MACHINE]["state"] == "running"
        assert (runtime / "state" / "ready").read_text() == "ready\n"  # the "relay" is up
        assert (runtime / "lib" / "relay.py").read_bytes() == prepare.RELAY_SCRIPT.read_bytes()
        record = state.read_record(NAME)
        assert record is not None
        assert record["machine"] == MACHINE and record["backend"] == "smolmachines"
        assert record["subnet"] == util.bottle_subnet(NAME)[0]
        assert set(record["processes"]) == {"bundle", "bottle"}
        assert records.is_live(records.read(NAME))
        assert bottle.alive() is None
        bundle = rig.bundles[0]
    assert rig.subcommands()[4:] == ["machine stop", "machine delete"]  # reverse order
    assert rig.machines() == {}
    assert not runtime.exists()
    assert bundle.poll() is not None
    record = state.read_record(NAME)
    assert record is not None and record["processes"] == {}


def test_exec_runs_through_machine_exec_with_the_bottle_env(rig: Rig) -> None:
    backend = rig.backend()
    plan = rig.plan(backend)
    with backend.launch(plan) as bottle:
        result = bottle.exec('echo "$CLAUDE_BOTTLE_NAME $HTTPS_PROXY"; pwd; echo oops >&2; exit 3')
        argv = rig.calls()[-1]
    assert result.returncode == 3
    assert result.stdout == f"{NAME} http://127.0.0.1:3128\n{rig.workspace}\n"
    assert result.stderr == "oops\n"
    assert argv[:4] == ["machine", "exec", "--name", MACHINE]
    assert argv[argv.index("--workdir") + 1] == str(rig.workspace)
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert argv[-4:] == ["--", "/bin/sh", "-c", argv[-1]]
    assert f"PATH={plan.env['PATH']}" in argv and "PATH=" + os.environ["PATH"] not in argv


def test_exec_claude_returns_the_status_and_hides_the_wheel_note(
    rig: Rig, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = rig.backend()
    with backend.launch(rig.plan(backend)) as bottle:
        assert isinstance(bottle, SmolmachinesBottle)
        monkeypatch.setenv("FAKE_SMOLVM_NOTE", "1")
        bottle.filter_stderr = True
        capfd.readouterr()
        status = bottle.exec_claude(["sh", "-c", "echo to-out; echo to-err >&2; exit 7"], tty=False)
        argv = rig.calls()[-1]
        out, err = capfd.readouterr()
    assert status == 7
    assert "--interactive" in argv and "--tty" not in argv
    assert out == "to-out\n"
    assert err == "to-err\n"  # the note was dropped, the command's stderr kept


def test_cp_in_copies_with_machine_cp(rig: Rig) -> None:
    backend = rig.backend()
    source = rig.root / "notes.txt"
    source.write_text("hello vm\n")
    with backend.launch(rig.plan(backend)) as bottle:
        bottle.cp_in(source, "/work/notes.txt")
        assert rig.calls()[-1] == ["machine", "cp", str(source), f"{MACHINE}:/work/notes.txt"]
        with pytest.raises(BottleError, match="cannot copy"):
            bottle.cp_in(rig.root / "absent", "/work/x")
    assert (rig.fake_state / "guest" / MACHINE / "work" / "notes.txt").read_text() == "hello vm\n"


def test_failure_at_start_deletes_the_created_machine(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SMOLVM_FAIL", "machine start")
    backend = rig.backend()
    plan = rig.plan(backend)
    with pytest.raises(LaunchError, match=r"did not start.*injected failure"), backend.launch(plan):
        pytest.fail("launch must not yield")
    assert rig.subcommands() == ["machine ls", "machine create", "machine start", "machine delete"]
    assert rig.machines() == {}
    assert not Path(plan.runtime_dir).exists()
    assert rig.bundles[0].poll() is not None


def test_failure_at_create_leaves_nothing(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SMOLVM_FAIL", "machine create")
    backend = rig.backend()
    plan = rig.plan(backend)
    with pytest.raises(LaunchError, match="cannot create"), backend.launch(plan):
        pytest.fail("launch must not yield")
    assert rig.subcommands() == ["machine ls", "machine create"]
    assert not Path(plan.runtime_dir).exists()
    assert rig.bundles[0].poll() is not None


def test_relay_exiting_fails_fast_with_its_output(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SMOLVM_NO_READY", "1")
    backend = rig.backend()
    plan = rig.plan(backend)
    with pytest.raises(LaunchError, match="python3: not found"), backend.launch(plan):
        pytest.fail("launch must not yield")
    assert rig.machines() == {}
    assert "machine delete" in rig.subcommands()
    assert not Path(plan.runtime_dir).exists()


def test_a_leftover_machine_blocks_launch_and_is_not_touched(rig: Rig) -> None:
    rig.smolvm("machine", "create", "--name", MACHINE, "--from", str(rig.pack), "--", "true")
    backend = rig.backend()
    plan = rig.plan(backend)
    with pytest.raises(LaunchError, match="already exists") as caught, backend.launch(plan):
        pytest.fail("launch must not yield")
    assert "claude-bottle cleanup" in caught.value.hint
    assert rig.subcommands() == ["machine create", "machine ls"]
    assert MACHINE in rig.machines()
    assert not Path(plan.runtime_dir).exists() and rig.bundles == []


def test_missing_dependencies_stop_launch_before_anything(rig: Rig) -> None:
    backend = rig.backend(checks=lambda: ["no /dev/kvm: microVMs cannot boot on this machine"])
    plan = rig.plan(backend)
    with pytest.raises(MissingDependency, match="no /dev/kvm") as caught, backend.launch(plan):
        pytest.fail("launch must not yield")
    assert caught.value.exit_code == 3
    assert rig.calls() == []


def test_gvproxy_mode_plans_but_does_not_launch(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(prepare.NETWORK_ENV, "gvproxy")
    backend = rig.backend()
    plan = rig.plan(backend)
    assert plan.network == "gvproxy"
    assert "gvproxy on 192.168." in plan.render()
    with pytest.raises(ConfigError, match="external gvproxy"), backend.launch(plan):
        pytest.fail("launch must not yield")
    assert rig.calls() == []
    monkeypatch.setenv(prepare.NETWORK_ENV, "tsi")
    with pytest.raises(ConfigError, match="not a network mode"):
        rig.plan(backend)


# --- detach, stop, resume, attach -------------------------------------------------------------


def _launch_detached(rig: Rig, backend: SmolmachinesBackend) -> StoredBottle:
    plan = rig.plan(backend, detach=True)
    with backend.launch(plan) as bottle:
        bottle.start_detached(["sh", "-c", "echo detached-ran"], rig.root / "output.log")
    return records.read(NAME)


def test_detached_bottle_outlives_launch_and_stop_removes_it(rig: Rig) -> None:
    backend = rig.backend()
    record = _launch_detached(rig, backend)
    assert rig.machines()[MACHINE]["state"] == "running"
    assert records.is_live(record)
    bundle = rig.bundles[0]
    assert bundle.poll() is None
    backend.stop(record)
    assert rig.machines() == {}
    assert bundle.wait(5) is not None
    assert not Path(record.bottle.runtime_dir).exists()
    assert not records.is_live(record)
    backend.stop(record)  # stopping again is harmless: the machine is simply not there


def test_stop_says_when_the_machine_could_not_be_removed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = rig.backend()
    _launch_detached(rig, backend)
    monkeypatch.setenv("FAKE_SMOLVM_FAIL", "machine delete")
    with pytest.raises(BottleError, match=f"{MACHINE} may be left") as caught:
        backend.stop(records.read(NAME))
    assert "claude-bottle cleanup" in caught.value.hint
    assert rig.machines()[MACHINE]["state"] == "stopped"  # stopped, then delete failed
    monkeypatch.delenv("FAKE_SMOLVM_FAIL")
    backend.stop(records.read(NAME))
    assert rig.machines() == {}


def test_attach_runs_commands_in_a_detached_bottle(rig: Rig) -> None:
    backend = rig.backend()
    _launch_detached(rig, backend)
    bottle = backend.attach(records.read(NAME))
    result = bottle.exec("echo attached")
    assert (result.returncode, result.stdout) == (0, "attached\n")
    assert bottle.alive() is None
    backend.stop(records.read(NAME))


def test_resume_reuses_name_and_subnet(rig: Rig) -> None:
    backend = rig.backend()
    first = _launch_detached(rig, backend)
    # what `resume` does for a bottle that is not live, then launch again
    backend.stop(records.read(NAME))
    second = _launch_detached(rig, backend)
    creates = [argv for argv in rig.calls() if argv[:2] == ["machine", "create"]]
    assert len(creates) == 2
    assert [a[a.index("--name") + 1] for a in creates] == [MACHINE, MACHINE]
    assert isinstance(first.own, SmolmachinesRecord) and isinstance(second.own, SmolmachinesRecord)
    assert second.own.machine == first.own.machine == MACHINE
    assert second.own.subnet == first.own.subnet == util.bottle_subnet(NAME)[0]
    assert (
        creates[0][creates[0].index("--mount-socket") + 1]
        == (creates[1][creates[1].index("--mount-socket") + 1])
    )
    backend.stop(records.read(NAME))


def test_dead_bundle_is_reported_and_kill_stops_the_machine(rig: Rig) -> None:
    backend = rig.backend()
    with backend.launch(rig.plan(backend)) as bottle:
        rig.bundles[0].kill()
        rig.bundles[0].wait()
        assert bottle.alive() == "the bundle (its only way out) stopped"
        bottle.kill()
        assert rig.machines()[MACHINE]["state"] == "stopped"
        assert rig.calls()[-1] == ["machine", "stop", "--name", MACHINE, "--timeout", "0"]
    assert rig.machines() == {}


# --- cleanup ------------------------------------------------------------------------------------


def _create(rig: Rig, name: str, *labels: str) -> None:
    extra = [arg for label in labels for arg in ("--label", label)]
    created = rig.smolvm(
        "machine", "create", "--name", name, "--from", str(rig.pack), *extra, "--", "true"
    )
    assert created.returncode == 0, created.stderr


def test_cleanup_removes_our_orphans_by_prefix_only(rig: Rig) -> None:
    _create(rig, "cb-live-1")
    _create(rig, "cb-dead-1")
    _create(rig, "cb-odd_name-0a1b2c", "claude-bottle=odd.name")
    _create(rig, "somebody-elses-vm")
    rig.smolvm("machine", "start", "--name", "cb-dead-1")
    backend = rig.backend()
    plan = backend.cleanup_plan({"live-1"})
    assert plan.items == (
        ("machine", "cb-dead-1 (running, bottle dead-1)"),
        ("machine", "cb-odd_name-0a1b2c (created, bottle odd.name)"),
    )
    assert "cb-dead-1" in plan.render()
    assert backend.cleanup(plan) == []
    assert sorted(rig.machines()) == ["cb-live-1", "somebody-elses-vm"]
    assert backend.cleanup_plan({"live-1"}).items == ()


def test_cleanup_without_smolvm_finds_nothing(rig: Rig) -> None:
    backend = rig.backend(find=lambda: None)
    assert backend.cleanup_plan(set()).items == ()


def test_backend_is_importable_the_way_the_registry_imports_it() -> None:
    import importlib

    module = importlib.import_module("claude_bottle.backend.smolmachines")
    cls: Callable[[], Any] = module.SmolmachinesBackend
    assert cls().name == "smolmachines"


# --- the agent image as a .smolmachine ----------------------------------------------------------


def _fake_docker(directory: Path, log: Path) -> str:
    script = directory / "docker"
    script.write_text(
        f"""#!{sys.executable}
import json, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["image", "inspect"]:
    if sys.argv[-1] == "absent:tag":
        sys.stderr.write("Error: No such image: absent:tag\\n")
        sys.exit(1)
    print("sha256:" + "ab" * 32)
elif sys.argv[1] == "save":
    open(sys.argv[sys.argv.index("--output") + 1], "w").write("tar")
"""
    )
    script.chmod(0o755)
    return str(script)


def test_image_is_packed_once_per_digest(rig: Rig) -> None:
    log = rig.root / "docker.jsonl"
    docker = _fake_docker(rig.root, log)
    cache = rig.root / "cache"
    first = prepare.ensure_agent_pack(
        "claude-bottle-agent:0123", "smolvm", cache_dir=cache, docker=docker
    )
    assert first == cache / f"{'ab' * 32}.smolmachine" and first.is_file()
    docker_calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert docker_calls[0] == [
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "claude-bottle-agent:0123",
    ]
    assert (
        docker_calls[1][:2] == ["save", "--output"]
        and docker_calls[1][-1] == "claude-bottle-agent:0123"
    )
    packs = [argv for argv in rig.calls() if argv[:2] == ["pack", "create"]]
    assert len(packs) == 1
    archive, output = packs[0][3], packs[0][5]
    assert packs[0] == ["pack", "create", "--image", archive, "--output", output]
    assert archive == docker_calls[1][2] and Path(output).name == "ab" * 32
    assert not Path(archive).exists()  # the temporary tarball is gone
    assert sorted(p.name for p in cache.iterdir()) == [first.name]
    again = prepare.ensure_agent_pack(
        "claude-bottle-agent:0123", "smolvm", cache_dir=cache, docker=docker
    )
    assert again == first
    assert len([a for a in rig.calls() if a[:2] == ["pack", "create"]]) == 1


def test_missing_image_says_how_to_get_it(rig: Rig) -> None:
    docker = _fake_docker(rig.root, rig.root / "docker.jsonl")
    with pytest.raises(LaunchError, match="absent:tag is not available") as caught:
        prepare.ensure_agent_pack("absent:tag", "smolvm", cache_dir=rig.root / "c", docker=docker)
    assert "claude-bottle image build" in caught.value.hint


def test_pack_failure_is_a_launch_error(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SMOLVM_FAIL", "pack create")
    docker = _fake_docker(rig.root, rig.root / "docker.jsonl")
    cache = rig.root / "cache"
    with pytest.raises(LaunchError, match="cannot pack the agent image"):
        prepare.ensure_agent_pack("img:1", "smolvm", cache_dir=cache, docker=docker)
    assert list(cache.iterdir()) == []


# --- plan ---------------------------------------------------------------------------------


def test_plan_is_pure_and_prints_the_microvm(rig: Rig) -> None:
    backend = rig.backend()
    plan = rig.plan(backend)
    assert rig.calls() == [] and not Path(plan.runtime_dir).exists()
    text = plan.render()
    assert "microVM (smolmachines)" in text
    assert f"{MACHINE} (smolvm microVM)" in text
    assert "none: no network device" in text
    assert "/run/claude-bottle/proxy.sock <- bundle proxy.sock" in text
    assert plan.env["HOME"] == "/home/bottle"
    assert plan.env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    data = json.loads(plan.to_json())
    assert data["machine"] == MACHINE and data["network"] == "none"
    assert data["relay_command"][-1] == "--hold"


def test_plan_shows_the_disk_mechanism_and_the_unbounded_home(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26: `disk` sizes the VM's own disks; where the host cannot mount a sized image
    for the home (a host directory shared in), it stays unbounded, which `plan` says, `run`
    warns of and require_limits refuses."""
    monkeypatch.setattr(home_image, "unavailable", lambda **_: "this user may not open /dev/fuse")
    backend = rig.backend()
    plan = rig.plan(backend)
    data = json.loads(plan.to_json())
    limits = data["limits"]
    assert "--storage" in limits["disk_mechanism"] and "--overlay" in limits["disk_mechanism"]
    assert "the home: not bounded" in limits["disk_mechanism"]
    assert data["home_image"] is None and "home image" not in plan.render()
    (home,) = [u for u in plan.limits.unapplied if u.key == "disk"]
    assert "host directory" in home.reason and "/dev/fuse" in home.reason
    from claude_bottle.cli import commands

    with pytest.raises(MissingDependency, match="require_limits"):
        commands._check_limits(dataclasses.replace(plan, limits=plan.limits._replace(require=True)))


needs_home_image = pytest.mark.skipif(
    home_image.unavailable() is not None,
    reason=f"no sized home on this host: {home_image.unavailable()}",
)


@needs_home_image
def test_the_home_image_backs_the_shared_home_for_the_whole_run(rig: Rig) -> None:
    """The sized image is mounted on the directory the VM's --volume shares, from before
    `machine create` until the machine is gone; a write past `disk` there (what the guest's
    writes through virtiofs become) fails with ENOSPC. The VM is the recording fake: the
    mount is real (loop as root, fuse2fs as a user)."""
    backend = rig.backend()
    plan = rig.plan(backend, disk=64 << 20)
    home = Path(plan.home_source)
    image = home_image.image_of(home)
    assert plan.home_image == str(image) and "ext4 image" in plan.limits.disk_mechanism
    assert f"{image}, mounted there for the run" in plan.render()
    with backend.launch(plan):
        create = rig.calls()[1]
        volumes = [create[i + 1] for i, arg in enumerate(create) if arg == "--volume"]
        assert f"{home}:/home/bottle" in volumes
        assert home_image.is_mounted(home)
        assert os.statvfs(home).f_blocks * os.statvfs(home).f_frsize <= 64 << 20
        with pytest.raises(OSError) as full, (home / "filler").open("wb") as handle:
            for _ in range(100):
                handle.write(b"\0" * (1 << 20))
                handle.flush()
                os.fsync(handle.fileno())
        assert full.value.errno == errno.ENOSPC
    assert not home_image.is_mounted(home)  # detached after the machine was deleted
    assert image.stat().st_blocks * 512 <= 64 << 20


@needs_home_image
def test_a_detached_bottles_home_stays_mounted_until_stop(rig: Rig) -> None:
    backend = rig.backend()
    record = _launch_detached(rig, backend)
    home = paths.state_dir(NAME) / "home"
    try:
        assert home_image.is_mounted(home)
    finally:
        backend.stop(record)
    assert not home_image.is_mounted(home)


def test_launch_passes_disk_to_the_vm(rig: Rig) -> None:
    """Through the recording fake: create gets --storage/--overlay, as smolvm stores them."""
    backend = rig.backend()
    plan = rig.plan(backend)
    gib = -(-plan.limits.disk // (1 << 30))
    with backend.launch(plan):
        machine = rig.machines()[MACHINE]
        assert (machine["storage_gb"], machine["overlay_gb"]) == (gib, gib)
        listed = json.loads(rig.smolvm("machine", "ls", "--json").stdout)
        assert (listed[0]["storage_gb"], listed[0]["overlay_gb"]) == (gib, gib)


def test_intercepting_plan_points_tls_clients_at_the_bundle_ca(rig: Rig) -> None:
    backend = rig.backend()
    request = LaunchRequest(NAME, rig.workspace, Config(), ("true",))
    plan = backend.plan(request)
    assert plan.egress_intercept
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"):
        assert plan.env[name] == "/run/claude-bottle/bundle/ca-bundle.pem"
    assert plan.env["NODE_EXTRA_CA_CERTS"] == "/run/claude-bottle/bundle/ca.pem"


def test_write_stage_in_gvproxy_mode_renders_the_config(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(prepare.NETWORK_ENV, "gvproxy")
    plan = rig.plan(rig.backend())
    root = rig.root / "stage"
    root.mkdir()
    stage = prepare.write_stage(plan, root)
    assert stage.gvproxy_config is not None
    from claude_bottle.backend.smolmachines.gvproxy_config import render_gvproxy_config

    assert stage.gvproxy_config.read_text() == render_gvproxy_config(
        plan.subnet, plan.gateway, {3128: "egress proxy", 3129: "api gateway"}
    )
