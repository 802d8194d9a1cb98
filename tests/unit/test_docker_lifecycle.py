"""Teardown, cleanup, the watchdog, preflight and what the bundle container is given.

The docker CLI is replaced by recording fakes: these tests pin the order of removal,
which leftovers count as orphans, and how engine problems are reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from claude_bottle import state
from claude_bottle.backend.base import CleanupPlan, LaunchRequest
from claude_bottle.backend.docker import backend as docker_backend
from claude_bottle.backend.docker import cleanup as docker_cleanup
from claude_bottle.backend.docker import docker, handover, images, launch, network
from claude_bottle.backend.docker.backend import (
    CredentialAccess,
    DockerBackend,
    credential_access,
    needs_host_network,
    state_label,
)
from claude_bottle.backend.docker.bottle_plan import Mount
from claude_bottle.config.model import (
    Config,
    CredentialsConfig,
    EgressConfig,
    GatewayConfig,
    ResolvePin,
)
from claude_bottle.errors import LaunchError
from tests.unit.bottle_records import stored, written


@dataclass
class FakeEngine:
    """The docker wrapper's functions, recording calls; names in `gone` do not exist."""

    calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)
    containers: list[dict[str, Any]] = field(default_factory=list)
    networks: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    shared: dict[str, dict[str, Any]] = field(default_factory=dict)  # network_inspect by name

    def _act(self, what: str, names: list[str]) -> None:
        self.calls.append((what, tuple(names)))
        for name in names:
            if name in self.gone:
                raise docker.DockerError("x", stderr=f"Error: No such container: {name}")
            if name in self.broken:
                raise docker.DockerError(
                    f"docker {what} failed: device busy", stderr="device or resource busy"
                )

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(docker, "rm", lambda names, force=True: self._act("rm", list(names)))
        monkeypatch.setattr(docker, "stop", lambda names, timeout=5: self._act("stop", list(names)))
        monkeypatch.setattr(docker, "network_rm", lambda names: self._act("network_rm", names))
        monkeypatch.setattr(docker, "volume_rm", lambda names: self._act("volume_rm", names))
        monkeypatch.setattr(docker, "ps", lambda labels: self._matching(self.containers, labels))
        monkeypatch.setattr(
            docker, "network_ls", lambda labels: self._matching(self.networks, labels)
        )
        monkeypatch.setattr(
            docker, "volume_ls", lambda labels: self._matching(self.volumes, labels)
        )
        monkeypatch.setattr(docker, "image_ls", lambda labels: self._matching(self.images, labels))
        monkeypatch.setattr(docker, "network_inspect", lambda name: self.shared.get(name))
        monkeypatch.setattr(docker, "image_rm", lambda refs: self._act("image_rm", list(refs)))

    @staticmethod
    def _matching(rows: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
        def has(row: dict[str, Any]) -> bool:
            found = docker.parse_labels(row["Labels"])
            return all(found.get(k) == v for k, v in labels.items())

        return [row for row in rows if has(row)]


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    fake = FakeEngine()
    fake.install(monkeypatch)
    return fake


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLAUDE_BOTTLE_RUNTIME_DIR", str(tmp_path / "rt"))
    return tmp_path


# --- teardown ------------------------------------------------------------------------


def test_teardown_order_bundle_stopped_gracefully_then_networks_and_volumes(
    engine: FakeEngine,
) -> None:
    problems = launch.teardown(agents=["a"], bundles=["b"], networks=["n"], volumes=["v"])
    assert problems == []
    containers = [c for c in engine.calls if c[0] in ("rm", "stop")]
    assert ("rm", ("a",)) in containers
    assert containers.index(("stop", ("b",))) < containers.index(("rm", ("b",)))
    last_container = max(engine.calls.index(c) for c in containers)
    assert engine.calls.index(("network_rm", ("n",))) > last_container
    assert engine.calls.index(("volume_rm", ("v",))) > last_container


def test_teardown_removes_agents_and_stopped_bundles_in_one_call(engine: FakeEngine) -> None:
    problems = launch.teardown(
        agents=["a"], stopped=["b"], networks=["n1", "n2"], volumes=["v1", "v2"]
    )
    assert problems == []
    assert engine.calls[0] == ("rm", ("a", "b"))
    assert sorted(engine.calls[1:]) == [("network_rm", ("n1", "n2")), ("volume_rm", ("v1", "v2"))]


def test_teardown_reports_a_real_failure_among_already_gone_ones(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docker rm -f a b` says why each one failed: one gone is fine, one stuck is not."""

    def rm(names: list[str], force: bool = True) -> None:
        engine.calls.append(("rm", tuple(names)))
        stderr = {
            "gone": "Error response from daemon: No such container: gone\n",
            "stuck": "Error response from daemon: could not kill: device busy\n",
        }
        text = "".join(stderr.get(name, "") for name in names)
        if text:
            raise docker.DockerError("docker rm failed: x", stderr=text)

    monkeypatch.setattr(docker, "rm", rm)
    assert launch.teardown(agents=["a", "gone"]) == []
    (problem,) = launch.teardown(agents=["gone", "stuck"])
    assert problem.startswith("could not remove container gone, stuck:")


def test_teardown_counts_what_is_already_gone_as_removed(engine: FakeEngine) -> None:
    engine.gone = {"a", "n"}
    assert launch.teardown(agents=["a"], networks=["n"], volumes=["v"]) == []
    assert ("volume_rm", ("v",)) in engine.calls


def test_teardown_reports_what_it_could_not_remove_and_goes_on(engine: FakeEngine) -> None:
    engine.broken = {"v"}
    problems = launch.teardown(agents=["a"], networks=["n"], volumes=["v"])
    assert problems == ["could not remove volume v: docker volume_rm failed: device busy"]
    assert ("network_rm", ("n",)) in engine.calls


def _row(name: str, bottle: str, instance: str, role: str = "", label: str = "") -> dict[str, Any]:
    labels = {
        "claude-bottle.bottle": bottle,
        "claude-bottle.instance": instance,
        "claude-bottle.state": label,
    }
    if role:
        labels["claude-bottle.role"] = role
    text = ",".join(f"{k}={v}" for k, v in labels.items())
    return {"Names": name, "Name": name, "Labels": text, "State": "exited"}


def test_remove_by_labels_finds_every_kind(engine: FakeEngine) -> None:
    engine.containers = [
        _row("x-agent", "x", "i1", "agent", "s"),
        _row("x-bundle", "x", "i1", "bundle", "s"),
        _row("y-agent", "y", "i2", "agent", "s"),
    ]
    engine.networks = [_row("x-net", "x", "i1", label="s")]
    engine.volumes = [_row("x-vol", "x", "i1", label="s")]
    assert launch.remove_by_labels({"claude-bottle.bottle": "x"}) == []
    removed = {name for _, names in engine.calls for name in names}
    assert removed == {"x-agent", "x-bundle", "x-net", "x-vol"}
    assert ("stop", ("x-bundle",)) in engine.calls  # the bundle writes its last record


def test_watchdog_main_refuses_to_tear_down_without_labels(engine: FakeEngine) -> None:
    assert launch.main(["--teardown", "{}"]) == 2
    assert launch.main(["--bogus"]) == 2
    assert engine.calls == []
    engine.volumes = [_row("x-vol", "x", "i1", label="s")]
    assert launch.main(["--teardown", json.dumps({"claude-bottle.instance": "i1"})]) == 0
    assert engine.calls == [("volume_rm", ("x-vol",))]


def test_watchdog_main_removes_the_runtime_dir_after_the_resources(
    engine: FakeEngine, tmp_path: Path
) -> None:
    # A `cleanup` run before the watchdog acted saw a live bottle and left the dir.
    runtime = tmp_path / "runtime" / "x"
    (runtime / "exec").mkdir(parents=True)
    (runtime / "bundle-env.json").write_text("{}")
    engine.volumes = [_row("x-vol", "x", "i1", label="s")]
    labels = json.dumps({"claude-bottle.instance": "i1"})
    assert launch.main(["--teardown", labels, str(runtime)]) == 0
    assert engine.calls == [("volume_rm", ("x-vol",))]
    assert not runtime.exists()


# --- the watchdog --------------------------------------------------------------------


def _recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for python that writes the arguments it was run with."""
    out = tmp_path / "ran"
    script = tmp_path / "fake-python"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {out}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, out


def _wait_exit(dog: launch.Watchdog) -> None:
    assert dog.process is not None
    dog.process.wait(10)


@pytest.mark.parametrize("word", ["done", "detach"])
def test_watchdog_stands_down_when_told(tmp_path: Path, word: str) -> None:
    python, ran = _recorder(tmp_path)
    dog = launch.Watchdog.spawn({"k": "v"}, tmp_path / "log", python=str(python))
    process = dog.process
    dog.release(word)
    assert process is not None and process.wait(10) == 0
    assert not ran.exists()


def test_watchdog_tears_down_when_the_cli_vanishes(tmp_path: Path) -> None:
    python, ran = _recorder(tmp_path)
    labels = {"claude-bottle.bottle": "t", "claude-bottle.instance": "abc123"}
    runtime = tmp_path / "runtime"
    dog = launch.Watchdog.spawn(labels, tmp_path / "log", python=str(python), runtime_dir=runtime)
    assert dog.process is not None and dog.process.stdin is not None
    dog.process.stdin.close()  # what the kernel does when the CLI is killed
    _wait_exit(dog)
    args = ran.read_text().splitlines()
    assert args[:3] == ["-m", "claude_bottle.backend.docker.launch", "--teardown"]
    assert json.loads(args[3]) == labels
    assert args[4:] == [str(runtime)]


def test_wait_child_reaps_a_child_that_ends_and_times_out_on_one_that_does_not() -> None:
    import subprocess

    ending = subprocess.Popen(["sh", "-c", "exit 3"])
    assert state.wait_child(ending, 10)
    assert ending.returncode == 3  # reaped: no zombie left behind
    assert state.wait_child(ending, 10)  # already reaped: still says it has ended
    lasting = subprocess.Popen(["sleep", "30"])
    try:
        assert not state.wait_child(lasting, 0.05)
        assert lasting.returncode is None
    finally:
        lasting.kill()
        lasting.wait()


def test_watchdog_release_reaps_it(tmp_path: Path) -> None:
    python, ran = _recorder(tmp_path)
    dog = launch.Watchdog.spawn({"k": "v"}, tmp_path / "log", python=str(python))
    process = dog.process
    dog.release("done")
    assert process is not None and process.returncode == 0
    assert not ran.exists()


# --- the launch's own teardown ---------------------------------------------------------


def test_created_stops_a_bundle_that_answers_then_removes_all_at_once(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    asked: list[str] = []
    audit = tmp_path / "audit.jsonl"
    audit.write_text('{"rule": "bundle-start"}\n')

    def stop(path: Path, op: str, timeout: float = 5) -> None:
        asked.append(op)
        with audit.open("a") as handle:
            handle.write('{"kind": "lifecycle", "rule": "bundle-stop"}\n')

    monkeypatch.setattr(launch.control, "call", stop)
    created = launch._Created()
    created.agents, created.bundles = ["a"], ["b"]
    created.networks, created.volumes = ["n"], ["v"]
    created.control_socket = tmp_path / "control.sock"
    created.audit_log = audit
    created.remove()
    assert asked == ["stop"]
    assert ("stop", ("b",)) not in engine.calls  # it already stopped itself
    assert engine.calls[0] == ("rm", ("a", "b"))  # both containers in one call
    assert sorted(engine.calls[1:]) == [("network_rm", ("n",)), ("volume_rm", ("v",))]


def test_bundle_stop_is_recognised_only_as_a_complete_last_record(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    assert not launch._ends_with_bundle_stop(audit)
    audit.write_text('{"rule": "bundle-start"}\n')
    assert not launch._ends_with_bundle_stop(audit)
    audit.write_text('{"rule": "bundle-start"}\n{"rule": "bundle-stop"')
    assert not launch._ends_with_bundle_stop(audit)  # still being written
    audit.write_text('{"rule": "bundle-start"}\n{"rule": "bundle-stop"}\n')
    assert launch._ends_with_bundle_stop(audit)


def test_created_falls_back_to_docker_stop_before_the_bundle_answered(
    engine: FakeEngine,
) -> None:
    created = launch._Created()
    created.bundles = ["b"]
    created.remove()
    assert engine.calls[:2] == [("stop", ("b",)), ("rm", ("b",))]


# --- cleanup -------------------------------------------------------------------------


def test_cleanup_plan_lists_orphans_and_stale_launches_of_live_bottles(
    engine: FakeEngine, dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker_backend.shutil, "which", lambda name: "/usr/bin/docker")
    label = state_label()
    engine.containers = [
        _row("dead-agent", "dead", "d1", "agent", label),
        _row("live-agent", "live", "l2", "agent", label),
        _row("live-old-agent", "live", "l1", "agent", label),
        _row("other-users-agent", "dead", "d1", "agent", "someone-else"),
    ]
    engine.networks = [_row("dead-net", "dead", "d1", label=label)]
    engine.volumes = [_row("live-vol", "live", "l2", label=label)]
    live = stored("docker", "live", labels={"claude-bottle.instance": "l2"})
    state.write_record("live", written(live))
    plan = DockerBackend().cleanup_plan({"live"})
    assert plan.items == (
        ("container", "dead-agent (bottle dead, exited)"),
        ("container", "live-old-agent (bottle live, exited)"),
        ("network", "dead-net (bottle dead)"),
    )
    assert DockerBackend().cleanup(plan) == []
    assert ("rm", ("dead-agent", "live-old-agent")) in engine.calls
    assert ("network_rm", ("dead-net",)) in engine.calls
    assert all("other-users-agent" not in names for _, names in engine.calls)


def test_cleanup_that_lost_a_race_to_the_watchdog_exits_clean_once_all_is_gone(
    engine: FakeEngine, dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after `kill -9`, the killed launch's watchdog removes the same things: a
    removal that fails because it is removing them too is no failure once they are gone."""
    monkeypatch.setattr(docker_backend.shutil, "which", lambda name: "/usr/bin/docker")
    engine.volumes = [_row("dead-sockets", "dead", "d1", label=state_label())]

    def in_use(names: list[str]) -> None:
        engine.calls.append(("volume_rm", tuple(names)))
        engine.volumes = []  # the watchdog's removal of its container and volume completes
        raise docker.DockerError(
            "docker volume failed", stderr="Error: remove dead-sockets: volume is in use - [c1]"
        )

    monkeypatch.setattr(docker, "volume_rm", in_use)
    plan = DockerBackend().cleanup_plan(set())
    assert plan.items == (("volume", "dead-sockets (bottle dead)"),)
    assert DockerBackend().cleanup(plan) == []


def test_cleanup_reports_what_stays(
    engine: FakeEngine, dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker_backend.shutil, "which", lambda name: "/usr/bin/docker")
    monkeypatch.setattr(docker_cleanup, "SETTLE_TIMEOUT", 0.5)
    engine.volumes = [_row("stuck", "dead", "d1", label=state_label())]
    engine.broken = {"stuck"}
    problems = DockerBackend().cleanup(DockerBackend().cleanup_plan(set()))
    assert problems == ["could not remove volume stuck: docker volume_rm failed: device busy"]


SHARED = {
    "Name": "claude-bottle",
    "Driver": "bridge",
    "Labels": {"claude-bottle.shared": "engine", "claude-bottle.role": "network"},
    "Options": {"com.docker.network.bridge.enable_icc": "false"},
    "Containers": {},
}


@pytest.mark.parametrize(
    ("shared", "listed"),
    [
        (SHARED, True),
        ({**SHARED, "Containers": {"c1": {"Name": "someone's bundle"}}}, False),  # in use
        ({**SHARED, "Labels": {}}, False),  # not ours: never removed
        ({**SHARED, "Options": {}}, False),  # not ours: containers may reach each other
    ],
)
def test_cleanup_removes_the_shared_network_only_when_ours_and_unused(
    engine: FakeEngine,
    dirs: Path,
    monkeypatch: pytest.MonkeyPatch,
    shared: dict[str, Any],
    listed: bool,
) -> None:
    monkeypatch.setattr(docker_backend.shutil, "which", lambda name: "/usr/bin/docker")
    engine.shared = {"claude-bottle": shared}
    plan = DockerBackend().cleanup_plan(set())
    assert (("network", "claude-bottle (shared by bundle containers, unused)") in plan.items) is (
        listed
    )
    assert DockerBackend().cleanup(plan) == []
    assert (("network_rm", ("claude-bottle",)) in engine.calls) is listed


def test_the_shared_network_is_made_with_traffic_between_containers_off(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[str, dict[str, str], dict[str, str]]] = []

    def create(name: str, *, labels: dict[str, str], options: dict[str, str]) -> str:
        made.append((name, labels, options))
        engine.shared[name] = {**SHARED, "Labels": labels, "Options": options}
        return "id"

    monkeypatch.setattr(docker, "network_create", create)
    network.ensure()
    network.ensure()  # exists now: made once
    assert made == [
        (
            "claude-bottle",
            {"claude-bottle.role": "network", "claude-bottle.shared": "engine"},
            {"com.docker.network.bridge.enable_icc": "false"},
        )
    ]


def test_a_network_of_that_name_we_did_not_make_is_refused(engine: FakeEngine) -> None:
    engine.shared = {"claude-bottle": {**SHARED, "Labels": {}, "Options": {}}}
    with pytest.raises(LaunchError, match="did not make"):
        network.ensure()


def _image(ref: str, role: str | None) -> dict[str, Any]:
    """A row of `docker image ls` (its labels are what the engine filters by)."""
    repo, _, tag = ref.partition(":")
    labels = f"{images.IMAGE_LABEL}={role}" if role else ""
    return {"Repository": repo, "Tag": tag, "Size": "1GB", "Labels": labels}


@pytest.fixture
def image_rows(engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Our current images, another tree's, a lookalike we did not build, and a base image."""
    monkeypatch.setattr(docker_backend.shutil, "which", lambda name: "/usr/bin/docker")
    agent, bundle = images.agent_image().tag, images.bundle_image().tag
    engine.images = [
        _image(agent, "agent"),
        _image(bundle, "bundle"),
        _image("claude-bottle-agent:0000000000000000", "agent"),  # another tree's, unused
        _image("claude-bottle-bundle:1111111111111111", "bundle"),  # another tree's, in use
        _image("claude-bottle-bundle:<none>", "bundle"),
        _image("claude-bottle-agent:2222222222222222", None),  # same name, not built by us
        _image("debian:bookworm-slim", None),
    ]
    engine.containers = [
        {"Names": "someone", "Image": "claude-bottle-bundle:1111111111111111", "Labels": ""}
    ]
    return [agent, bundle]


def test_cleanup_leaves_images_alone_unless_asked(
    engine: FakeEngine, dirs: Path, image_rows: list[str]
) -> None:
    """Another source tree's or version's images on this engine are its cache, not a
    leftover of ours: a plain `cleanup` lists and removes none."""
    plan = DockerBackend().cleanup_plan(set())
    assert [kind for kind, _ in plan.items if kind == "image"] == []
    assert DockerBackend().cleanup(plan) == []
    assert [call for call in engine.calls if call[0] == "image_rm"] == []


def test_cleanup_images_removes_only_our_unused_images_of_other_inputs(
    engine: FakeEngine, dirs: Path, image_rows: list[str]
) -> None:
    plan = DockerBackend().cleanup_plan(set(), images=True)
    assert plan.items == (
        ("image", "claude-bottle-agent:0000000000000000 (1GB, built from other inputs)"),
    )
    assert DockerBackend().cleanup(plan) == []
    assert engine.calls == [("image_rm", ("claude-bottle-agent:0000000000000000",))]


def test_cleanup_plan_without_docker_is_empty(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_backend.shutil, "which", lambda name: None)
    assert DockerBackend().cleanup_plan(set()).items == ()

    def down(labels: dict[str, str]) -> list[dict[str, Any]]:
        raise docker.DockerError("daemon down", stderr="Cannot connect to the Docker daemon")

    monkeypatch.setattr(docker_backend.shutil, "which", lambda name: "/usr/bin/docker")
    monkeypatch.setattr(docker, "ps", down)
    assert DockerBackend().cleanup_plan(set()).items == ()


def test_stop_removes_every_launch_of_the_bottle_and_its_runtime_dir(
    engine: FakeEngine, dirs: Path
) -> None:
    label = state_label()
    engine.containers = [_row("s-bundle", "s", "i9", "bundle", label)]
    runtime = dirs / "rt" / "s"
    runtime.mkdir(parents=True)
    DockerBackend().stop(stored("docker", "s", runtime_dir=str(runtime)))
    assert engine.calls[:2] == [("stop", ("s-bundle",)), ("rm", ("s-bundle",))]
    assert not runtime.exists()


# --- preflight -----------------------------------------------------------------------


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    answer: dict[str, Any] = {"Server": {"Os": "linux", "ApiVersion": "1.41"}}
    monkeypatch.setattr(docker_backend.shutil, "which", lambda name: "/usr/bin/docker")
    monkeypatch.setattr(docker, "version", lambda: answer)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    yield answer


def test_preflight_ok(client: dict[str, Any]) -> None:
    assert DockerBackend().preflight() == []


def test_preflight_missing_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_backend.shutil, "which", lambda name: None)
    (problem,) = DockerBackend().preflight()
    assert problem.startswith("the docker client is not installed; fix: ")
    assert "apt-get install docker.io" in problem


@pytest.mark.parametrize(
    ("stderr", "start", "fix"),
    [
        (
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
            "Is the docker daemon running?",
            "the Docker daemon is not reachable",
            "systemctl start docker",
        ),
        (
            "permission denied while trying to connect to the Docker daemon socket at "
            "unix:///var/run/docker.sock",
            "no permission to use the Docker daemon",
            "usermod -aG docker",
        ),
    ],
)
def test_preflight_daemon_problems_are_told_apart(
    client: dict[str, Any], monkeypatch: pytest.MonkeyPatch, stderr: str, start: str, fix: str
) -> None:
    def failing() -> dict[str, Any]:
        raise docker.DockerError(
            f"docker version failed: {stderr}", docker.hint_for(stderr), stderr=stderr
        )

    monkeypatch.setattr(docker, "version", failing)
    (problem,) = DockerBackend().preflight()
    assert problem.startswith(start) and fix in problem


@pytest.mark.parametrize(
    ("server", "env", "expected"),
    [
        ({"Os": "windows", "ApiVersion": "1.41"}, None, "runs windows containers"),
        ({"Os": "linux", "ApiVersion": "1.39"}, None, "too old (API 1.39"),
        ({"Os": "linux", "ApiVersion": "1.41"}, "tcp://10.0.0.5:2376", "engine is remote"),
        (
            {"Os": "linux", "ApiVersion": "1.43", "Platform": {"Name": "Docker Desktop 4.2"}},
            None,
            "Docker Desktop 4.2 runs containers in a VM",
        ),
    ],
)
def test_preflight_unusable_engines(
    client: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    server: dict[str, Any],
    env: str | None,
    expected: str,
) -> None:
    client["Server"] = server
    if env:
        monkeypatch.setenv("DOCKER_HOST", env)
    (problem,) = DockerBackend().preflight()
    assert expected in problem and "fix:" in problem


# --- what the bundle container is given ------------------------------------------------


@pytest.mark.parametrize("spec", ["env:MY_CLAUDE", "file:~/keys/anthropic"])
def test_credential_from_env_or_file_is_handed_not_shown(spec: str, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "anthropic").write_text("sk-ant-api03-x\n")
    access = credential_access(spec, str(tmp_path), {})
    assert access == CredentialAccess("handed", (), ())


def test_keychain_binds_claude_code_s_store_writable(tmp_path: Path) -> None:
    store = tmp_path / ".claude"
    store.mkdir()
    access = credential_access("keychain", str(tmp_path), {})
    assert access.mounts == (Mount("bind", str(store), str(store)),)
    assert access.env == (("CLAUDE_CONFIG_DIR", str(store)),)
    other = tmp_path / "cfg"
    other.mkdir()
    chosen = credential_access("keychain", str(tmp_path), {"CLAUDE_CONFIG_DIR": str(other)})
    assert chosen.mounts == (Mount("bind", str(other), str(other)),)


def test_the_handover_holds_host_secrets_and_the_credential(dirs: Path) -> None:
    from claude_bottle.backend.docker.handover import resolve

    (dirs / "ws").mkdir()
    config = Config(credentials=CredentialsConfig(anthropic="env:CLAUDE_CREDS"))
    plan = DockerBackend().plan(LaunchRequest("b", dirs / "ws", config, ("true",)))
    key = "sk-ant-api03-" + "k" * 40
    host = {"MY_API_KEY": "s1", "GITHUB_TOKEN": "s2", "CLAUDE_CREDS": key, "EDITOR": "vi"}
    handover = resolve(plan.injections, plan.anthropic_credential, host, Path(plan.agent.home))
    assert handover.host_secrets == {"MY_API_KEY": "s1", "GITHUB_TOKEN": "s2"}
    assert handover.anthropic == key and handover.injected == {}
    assert plan.bundle is not None and dict(plan.bundle.env) == {"HOME": plan.agent.home}
    assert key not in plan.to_json()


@pytest.mark.parametrize(
    ("config", "host"),
    [
        (Config(), False),
        (Config(egress=EgressConfig(resolve=(ResolvePin("a.test", "127.0.0.1", 80),))), True),
        (Config(egress=EgressConfig(resolve=(ResolvePin("a.test", "::1", 80),))), True),
        (Config(egress=EgressConfig(resolve=(ResolvePin("a.test", "10.0.0.1", 80),))), False),
        (Config(gateway=GatewayConfig(anthropic_upstream="http://127.0.0.1:9999")), True),
        (Config(gateway=GatewayConfig(anthropic_upstream="http://localhost:9999")), True),
    ],
)
def test_host_network_only_for_loopback_destinations(config: Config, host: bool) -> None:
    assert needs_host_network(config) is host


def test_launch_writes_settings_and_no_secret_before_the_engine(
    dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything before the engine is touched: runtime dir, settings, and the home once
    the agent container's chain asks for it; no file in the runtime dir holds a secret
    (they are handed over the control socket)."""
    (dirs / "ws").mkdir()
    monkeypatch.setenv("HOME", str(dirs / "home"))
    monkeypatch.setenv("SOME_SECRET", "=v")
    plan = DockerBackend().plan(LaunchRequest("e", dirs / "ws", Config(), ("true",)))

    class Stop(Exception):
        pass

    seen: dict[str, Any] = {}

    def look_then_stop(*args: Any, **__: object) -> None:
        args[-1]()  # home_ready: what the agent container's chain calls before its run
        runtime = Path(plan.runtime_dir)
        seen["files"] = sorted(p.name for p in runtime.rglob("*") if p.is_file())
        seen["leaks"] = [p for p in runtime.rglob("*") if p.is_file() and b"=v" in p.read_bytes()]
        seen["settings"] = json.loads((runtime / "bundle.json").read_text())
        seen["seeded"] = Path(plan.agent.home_source, ".claude.json").exists()
        raise Stop

    monkeypatch.setattr(launch.Watchdog, "spawn", lambda *_, **__: launch.Watchdog(None))
    monkeypatch.setattr(launch, "_start_with_bundle_container", look_then_stop)
    with pytest.raises(Stop), contextlib.ExitStack() as stack:
        launch.start(plan, stack)
    assert "bundle-env.json" not in seen["files"] and seen["leaks"] == []
    settings = seen["settings"]
    assert settings["proxy_socket"] == "/run/claude-bottle/bundle/proxy.sock"
    assert settings["gateway_socket"] == "/run/claude-bottle/bundle/gateway.sock"
    assert settings["audit_log"] == "/var/lib/claude-bottle/audit.jsonl"
    assert settings["control_socket"] == "/run/claude-bottle/control/control.sock"
    assert seen["seeded"]
    assert not Path(plan.runtime_dir).exists()  # all-or-nothing: the stack removed it


def test_a_launch_failing_while_the_home_mounts_detaches_it_only_once_mounted(
    dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The home image is mounted in a thread beside the launch's other first steps; a
    launch that fails meanwhile waits for that mount before detaching it, so no mount of
    a bottle's home is left behind on the host."""
    from claude_bottle import home_image

    (dirs / "ws").mkdir()
    monkeypatch.setenv("HOME", str(dirs / "home"))
    monkeypatch.setattr(home_image, "unavailable", lambda **_: None)
    monkeypatch.setattr(docker_backend, "_engine_mounts_problem", lambda: None)
    plan = DockerBackend().plan(LaunchRequest("m", dirs / "ws", Config(), ("true",)))
    assert plan.home_image is not None
    mounted: list[Path] = []
    events: list[str] = []
    spawned = threading.Event()

    def prepare(home: Path, size: int) -> Path:
        assert spawned.wait(5)  # still mounting when the watchdog fails
        return home.with_name("home.img")

    def mount(image: Path, home: Path, **_: object) -> None:
        mounted.append(home)
        events.append("mount")

    def detach(home: Path) -> None:
        if home in mounted:
            mounted.remove(home)
            events.append("detach")

    class Stop(Exception):
        pass

    def fail(*_: object, **__: object) -> None:
        spawned.set()
        raise Stop

    monkeypatch.setattr(home_image, "prepare", prepare)
    monkeypatch.setattr(home_image, "mount", mount)
    monkeypatch.setattr(home_image, "detach", detach)
    monkeypatch.setattr(launch.Watchdog, "spawn", fail)
    with pytest.raises(Stop), contextlib.ExitStack() as stack:
        launch.start(plan, stack)
    assert events == ["mount", "detach"] and not mounted


def test_launch_creates_volume_and_network_at_once_and_each_container_when_it_can(
    dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network check does not wait for the volume, nor the bundle for the network
    check; both containers wait for the volume only; no docker client runs between the
    containers' start and ready."""
    (dirs / "ws").mkdir()
    monkeypatch.setenv("HOME", str(dirs / "home"))
    config = Config(egress=EgressConfig(allow=("example.com",)))
    plan = DockerBackend().plan(LaunchRequest("o", dirs / "ws", config, ("true",)))
    assert plan.network
    events: list[str] = []
    network_started = threading.Event()

    def volume_create(name: str, **_: Any) -> str:
        events.append("volume")
        assert network_started.wait(5), "the network waited for the volume"
        return name

    def ensure_network() -> None:
        network_started.set()
        time.sleep(0.05)
        events.append("network")

    def run(options: Sequence[str], image: str, command: Sequence[str] = ()) -> str:
        events.append("run " + options[options.index("--name") + 1].rsplit("-", 1)[-1])
        return "id"

    monkeypatch.setattr(docker, "volume_create", volume_create)
    monkeypatch.setattr(network, "ensure", ensure_network)
    monkeypatch.setattr(docker, "run", run)
    monkeypatch.setattr(launch, "_wait_ready", lambda *args: events.append("ready") or {})
    monkeypatch.setattr(handover, "hand_secrets", lambda *args: events.append("handed"))
    monkeypatch.setattr(launch.Watchdog, "spawn", lambda *args, **kw: launch.Watchdog(None))
    monkeypatch.setattr(launch._Created, "remove", lambda self: None)
    asked: list[str] = []
    with contextlib.ExitStack() as stack:
        bottle, _ = launch.start(plan, stack, preflight=lambda: asked.append("x") or [])
    assert "network" in events  # checked beside the containers' start
    assert asked == []  # the engine is asked what is wrong only when something failed
    assert events.index("run bundle") > events.index("volume")
    assert events.index("run agent") > events.index("volume")
    assert events[-2:] == ["ready", "handed"]  # the secrets once the bundle answers
    assert bottle.processes == {}  # none visible: liveness asks the engine instead


def test_launch_fails_closed_when_runtime_files_exist(dirs: Path) -> None:
    (dirs / "ws").mkdir()
    plan = DockerBackend().plan(LaunchRequest("r", dirs / "ws", Config(), ("true",)))
    Path(plan.runtime_dir).mkdir(parents=True)
    with (
        pytest.raises(LaunchError, match="already has runtime files"),
        contextlib.ExitStack() as stack,
    ):
        launch.start(plan, stack)


def test_host_pid_only_trusts_a_process_it_can_see(monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.getpid()
    assert launch._host_pid(me, "no-such-marker-in-my-cmdline") is None
    assert launch._host_pid(0, "x") is None
    cmdline = Path(f"/proc/{me}/cmdline").read_bytes().split(b"\0")[0].decode()
    ref = launch._host_pid(me, cmdline)
    assert ref is not None and ref["pid"] == me and state.process_alive(ref)


def test_listener_pid_is_the_process_that_listens(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        assert launch._listener_pid(path) == os.getpid()
    with pytest.raises(OSError):
        launch._listener_pid(path)  # nobody listens any more


def test_wait_ready_takes_the_pids_from_the_sockets_and_asks_the_engine_only_when_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control, exec_socket = tmp_path / "control.sock", tmp_path / "exec.sock"
    containers = {"bundle": "b", "bottle": "a"}
    asked: list[list[str]] = []

    def inspect_all(names: Any) -> list[dict[str, Any]]:
        asked.append(list(names))
        return [{"Name": "/b", "State": {"Running": True}}, {"Name": "/a", "State": {}}]

    monkeypatch.setattr(docker, "inspect_all", inspect_all)
    monkeypatch.setattr(docker, "logs", lambda name, tail=20: "relay: cannot listen")
    monkeypatch.setattr(launch.control, "call", lambda *a, **k: {"ok": True})
    monkeypatch.setattr(launch, "_host_pid", lambda pid, marker: {"pid": pid, "marker": marker})
    with socket.socket(socket.AF_UNIX) as one, socket.socket(socket.AF_UNIX) as two:
        one.bind(str(control))
        two.bind(str(exec_socket))
        one.listen()
        two.listen()
        processes = launch._wait_ready(exec_socket, control, containers)
    me = os.getpid()
    assert processes == {
        "bundle": {"pid": me, "marker": "claude_bottle.bundle.server"},
        "bottle": {"pid": me, "marker": "relay.py"},
    }
    assert asked == []  # ready at once: the engine was not asked
    control.unlink()
    with pytest.raises(LaunchError, match="agent container exited while starting"):
        launch._wait_ready(exec_socket, control, containers)  # the bundle never answers
    assert asked == [["b", "a"]]  # one docker inspect for both, half a second in


def test_parallel_runs_concurrently_and_collects_errors() -> None:
    started: list[float] = []

    def slow() -> None:
        started.append(time.monotonic())
        time.sleep(0.2)

    def boom() -> None:
        raise ValueError("boom")

    begin = time.monotonic()
    errors = launch.parallel(slow, slow, boom)
    assert time.monotonic() - begin < 0.35
    assert [type(e) for e in errors] == [ValueError]


def test_an_image_taken_into_use_after_it_was_listed_is_not_a_problem(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another bottle (or another user's) may start from a listed image before cleanup
    removes it: the engine refuses, and the image was not stale after all."""

    def refuse(refs: list[str]) -> None:
        raise docker.DockerError(
            "docker image failed: conflict",
            stderr="Error response from daemon: conflict: unable to remove repository reference "
            '"claude-bottle-bundle:1111" (must force) - container cb3f is using its referenced '
            "image 8dc1",
        )

    monkeypatch.setattr(docker, "image_rm", refuse)
    plan = CleanupPlan(
        "docker", (("image", "claude-bottle-bundle:1111 (1GB, built from older inputs)"),)
    )
    assert DockerBackend().cleanup(plan) == []


def test_a_bundle_run_that_finds_no_shared_network_makes_it_and_runs_again(
    dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (dirs / "ws").mkdir()
    monkeypatch.setenv("HOME", str(dirs / "home"))
    config = Config(egress=EgressConfig(allow=("example.com",)))
    plan = DockerBackend().plan(LaunchRequest("n", dirs / "ws", config, ("true",)))
    runs: list[str] = []
    made: list[str] = []

    def run(options: Sequence[str], image: str, command: Sequence[str] = ()) -> str:
        role = options[options.index("--name") + 1].rsplit("-", 1)[-1]
        runs.append(role)
        if role == "bundle" and runs.count("bundle") == 1:  # removed by a cleanup just now
            raise docker.DockerError(
                "docker run failed",
                stderr="docker: Error response from daemon: network claude-bottle not found.",
            )
        return "id"

    monkeypatch.setattr(docker, "volume_create", lambda name, **_: name)
    monkeypatch.setattr(network, "ensure", lambda: made.append("net"))
    removed: list[str] = []
    monkeypatch.setattr(docker, "rm", lambda names, force=True: removed.extend(names))
    monkeypatch.setattr(docker, "run", run)
    monkeypatch.setattr(launch, "_wait_ready", lambda *args: {})
    monkeypatch.setattr(handover, "hand_secrets", lambda *args: None)
    monkeypatch.setattr(launch.Watchdog, "spawn", lambda *args, **_: launch.Watchdog(None))
    monkeypatch.setattr(launch._Created, "remove", lambda self: None)
    with contextlib.ExitStack() as stack:
        launch.start(plan, stack)
    assert sorted(runs) == ["agent", "bundle", "bundle"]
    assert made == ["net", "net"]  # the check beside the start, and again before the rerun
    assert removed == [plan.bundle.container]  # what the failed run may have left created


def test_duplicate_shared_networks_made_by_a_race_are_removed_but_the_oldest(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The engine lets two concurrent creates make two networks of one name; a name that
    has become ambiguous is repaired: the oldest of ours kept, the unused others removed."""
    monkeypatch.setenv("CLAUDE_BOTTLE_CACHE_DIR", str(tmp_path / "cache"))
    old = {**SHARED, "Id": "old", "Created": "2026-12-07T04:04:47.9Z"}
    new = {**SHARED, "Id": "new", "Created": "2026-12-07T04:04:48.0Z"}
    networks = {"old": old, "new": new}

    def inspect(name: str) -> dict[str, Any] | None:
        if name == "claude-bottle":
            if len(networks) > 1:
                raise docker.DockerError(
                    "x",
                    stderr="Error: 2 matches found based on name: network claude-bottle "
                    "is ambiguous",
                )
            return next(iter(networks.values()))
        return networks.get(name)

    def remove(names: list[str]) -> None:
        engine.calls.append(("network_rm", tuple(names)))
        for name in names:
            networks.pop(name)

    engine.networks = [
        {"ID": key, "Name": "claude-bottle", "Labels": "claude-bottle.shared=engine"}
        for key in networks
    ]
    monkeypatch.setattr(docker, "network_inspect", inspect)
    monkeypatch.setattr(docker, "network_rm", remove)
    network.ensure()
    assert list(networks) == ["old"]
    assert engine.calls == [("network_rm", ("new",))]
