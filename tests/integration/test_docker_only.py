"""What only the docker backend has to prove: its containers, networks and volumes.

The shared suite (test_isolation.py and friends) proves the bottle's guarantees for every
backend. These tests look at the docker resources themselves: the agent container's
hardening as the engine reports it, that it cannot reach the bundle's network or the
engine's socket, that the engine's bundle network gives the bundle a way out, that killing
the bundle container cuts egress, and that nothing labelled with the bottle survives
`stop`, `cleanup` or a CLI killed with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.bundle.settings import BUNDLE_FILES
from claude_bottle.cgroups import BUNDLE_MEMORY, BUNDLE_PIDS
from tests.integration.conftest import BottleEnv, backend_unavailable
from tests.integration.upstream import RecordingHTTPServer

pytestmark = pytest.mark.integration

LABEL = "claude-bottle.bottle"


@pytest.fixture
def backend() -> str:
    """Every test here runs the docker backend (this overrides conftest's parametrized one)."""
    try:
        reason = backend_unavailable("docker")
    except Exception as exc:  # not registered yet
        pytest.skip(f"docker backend unavailable: {exc}")
    if reason:
        pytest.skip(f"docker backend unavailable here: {reason}")
    return "docker"


@pytest.fixture(autouse=True)
def _bundle_container_unless_said(bottle_env: BottleEnv) -> None:
    """These tests look at the bundle container's topology unless they ask for the host
    placement (`bottle_env.docker_bundle = "host"` in the test)."""
    bottle_env.docker_bundle = "container"


# This test's state-root label: other suites on this machine run bottles of the same
# names, so what a test looks for is what carries its own state root's label too.
_own_state: list[str] = []


@pytest.fixture(autouse=True)
def _remove_what_a_failed_test_left(bottle_env: BottleEnv) -> Iterator[None]:
    """Tests must not leak into each other: after each, remove what carries its state label."""
    root = str((bottle_env.root / "state").resolve())
    label = f"claude-bottle.state={hashlib.sha256(root.encode()).hexdigest()[:12]}"
    _own_state[:] = [label]
    yield
    _own_state.clear()
    for ls, rm in (
        (["ps", "--all", "--quiet"], ["rm", "--force"]),
        (["network", "ls", "--quiet"], ["network", "rm"]),
        (["volume", "ls", "--quiet"], ["volume", "rm", "--force"]),
    ):
        found = _docker(*ls, "--filter", f"label={label}").split()
        if found:
            subprocess.run(["docker", *rm, *found], capture_output=True, timeout=60)


def _docker(*args: str) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _labelled(kind: str, name: str) -> list[str]:
    """Names of every container / network / volume labelled with this bottle's name (and
    this test's state root)."""
    fmt = {"container": "{{.Names}}", "network": "{{.Name}}", "volume": "{{.Name}}"}[kind]
    args = {
        "container": ["ps", "--all"],
        "network": ["network", "ls"],
        "volume": ["volume", "ls"],
    }[kind]
    own = [arg for label in _own_state for arg in ("--filter", f"label={label}")]
    out = _docker(*args, "--filter", f"label={LABEL}={name}", *own, "--format", fmt)
    return out.split()


def _leftovers(name: str) -> dict[str, list[str]]:
    return {kind: _labelled(kind, name) for kind in ("container", "network", "volume")}


def _wait_for_no_leftovers(name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    left = _leftovers(name)
    while any(left.values()):
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(0.2)
        left = _leftovers(name)


def _inspect(container: str) -> dict[str, Any]:
    data = json.loads(_docker("container", "inspect", container))
    assert isinstance(data, list) and data
    result: dict[str, Any] = data[0]
    return result


def _record(be: BottleEnv, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((be.state_dir(name) / "bottle.json").read_text())
    return data


def _detach(be: BottleEnv, name: str, script: str = "sleep 300") -> dict[str, Any]:
    started = be.cli(
        "run", "--backend", "docker", "--name", name, "--detach", "--", "/bin/sh", "-c", script
    )
    assert started.returncode == 0, started.stderr
    return _record(be, name)


def _bridge_config(be: BottleEnv, upstream: RecordingHTTPServer, host_ip: str) -> None:
    """No loopback pin: the bundle gets its own bridge network."""
    be.write_config(f"""
        [egress]
        allow = ["allowed.test"]
        [egress.resolve]
        "allowed.test" = "{host_ip}:{upstream.port}"
        [gateway]
        anthropic_upstream = "https://api.anthropic.com"
    """)


def _host_ip() -> str:
    """This host's address on its default route (reachable from a bridge network)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.123", 9))  # no packet is sent for UDP connect
        address = str(probe.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("this host has no non-loopback address")
    return address


@pytest.fixture
def open_upstream() -> Iterator[RecordingHTTPServer]:
    server = RecordingHTTPServer(host="0.0.0.0")
    yield server
    server.close()


def test_agent_container_is_hardened_and_labelled(bottle_env: BottleEnv) -> None:
    secret = "hostsecret-" + "Q7xV9" * 6
    bottle_env.env["MY_API_KEY"] = secret
    record = _detach(bottle_env, "h")
    agent = _inspect(record["containers"]["bottle"])
    host = agent["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] > 0 and host["Memory"] > 0
    assert host["Privileged"] is False
    assert agent["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert agent["Config"]["Labels"][LABEL] == "h"
    mounts = {m["Destination"]: m for m in agent["Mounts"]}
    assert mounts["/run/claude-bottle/bundle"]["RW"] is False  # the sockets, read-only
    assert mounts[str(bottle_env.workspace)]["RW"] is True
    assert not any("docker.sock" in m["Source"] for m in agent["Mounts"])
    bundle = _inspect(record["containers"]["bundle"])
    assert bundle["HostConfig"]["ReadonlyRootfs"] is True
    assert bundle["HostConfig"]["CapDrop"] == ["ALL"]
    # Issue 27 item 2: the bundle has its own limits; the agent's do not contain what the
    # bottle makes the bundle hold.
    assert bundle["HostConfig"]["Memory"] == BUNDLE_MEMORY
    assert bundle["HostConfig"]["PidsLimit"] == BUNDLE_PIDS
    files = {u["Name"]: (u["Soft"], u["Hard"]) for u in bundle["HostConfig"]["Ulimits"]}
    assert files["nofile"] == (BUNDLE_FILES, BUNDLE_FILES)
    # The user's secret values reach the bundle (for DLP) through a file that is gone once
    # it has started, never through the containers' configuration.
    assert secret not in json.dumps(bundle) and secret not in json.dumps(agent)
    assert not (Path(record["runtime_dir"]) / "bundle-env.json").exists()
    kinds = _leftovers("h")
    assert len(kinds["container"]) == 2 and len(kinds["volume"]) == 1
    assert bottle_env.cli("stop", "h").returncode == 0
    _wait_for_no_leftovers("h")


def test_bridge_network_is_the_bundle_s_way_out_and_the_agent_cannot_reach_it(
    bottle_env: BottleEnv, open_upstream: RecordingHTTPServer
) -> None:
    _bridge_config(bottle_env, open_upstream, _host_ip())
    record = _detach(bottle_env, "b")
    bundle = _inspect(record["containers"]["bundle"])
    (network,) = bundle["NetworkSettings"]["Networks"]
    # The engine's one bundle network, kept between bottles; its containers cannot reach
    # each other (one bottle's bundle is not another's way in).
    assert network == record["network"] == "claude-bottle"
    shared = json.loads(_docker("network", "inspect", network))[0]
    assert shared["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert shared["Labels"]["claude-bottle.shared"] == "engine"
    bundle_ip = bundle["NetworkSettings"]["Networks"][network]["IPAddress"]
    gateway_ip = bundle["NetworkSettings"]["Networks"][network]["Gateway"]
    assert bundle_ip and gateway_ip
    (bottle_env.workspace / "reach.sh").write_text(
        "curl -sS --max-time 10 http://allowed.test/bridged\n"
        f"for target in {bundle_ip}:3128 {bundle_ip}:80 {gateway_ip}:2375 "
        f"{gateway_ip}:{open_upstream.port}; do\n"
        '  if curl -sS --noproxy "*" --max-time 3 -o /dev/null "http://$target/" 2>/dev/null;'
        ' then echo "REACHED $target"; else echo "unreachable $target"; fi\n'
        "done\n"
        "ls -la /var/run/docker.sock /run/docker.sock 2>&1 | grep -c 'No such file'\n"
        "find / -xdev -name 'docker*.sock' 2>/dev/null | wc -l\n"
    )
    record["command"] = ["/bin/sh", str(bottle_env.workspace / "reach.sh")]
    (bottle_env.state_dir("b") / "bottle.json").write_text(json.dumps(record))
    result = bottle_env.cli("resume", "b")
    out = result.stdout
    assert "hello from upstream /bridged" in out, result.stderr  # out through the bridge
    assert "REACHED" not in out, out
    assert out.count("unreachable") == 4
    assert out.strip().splitlines()[-2:] == ["2", "0"]  # no engine socket anywhere
    assert [r.path for r in open_upstream.requests] == ["/bridged"]
    assert bottle_env.cli("stop", "b").returncode == 0
    _wait_for_no_leftovers("b")


def test_killing_the_bundle_container_cuts_egress_and_stops_the_run(
    bottle_env: BottleEnv,
) -> None:
    flag = bottle_env.workspace / "go"
    proc = bottle_env.start(
        "curl -sS --max-time 5 http://allowed.test/before; echo started; "
        f"while [ ! -e {flag} ]; do sleep 0.05; done; "
        "curl -sS --max-time 5 http://allowed.test/after; sleep 30",
        name="k",
    )
    assert proc.stdout is not None
    assert "hello from upstream /before" in proc.stdout.readline()
    assert proc.stdout.readline().strip() == "started"
    record = _record(bottle_env, "k")
    _docker("kill", record["containers"]["bundle"])
    flag.write_text("")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 125, (out, err)
    assert "bundle container stopped" in err
    assert "/after" not in out
    assert [r.path for r in bottle_env.upstream.requests] == ["/before"]
    _wait_for_no_leftovers("k")


def test_sigkilled_cli_leaves_nothing_behind(bottle_env: BottleEnv) -> None:
    proc = bottle_env.start("echo started; sleep 300", name="z")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    assert len(_labelled("container", "z")) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    _wait_for_no_leftovers("z")  # the watchdog tore it down
    cleaned = bottle_env.cli("cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert (bottle_env.state_dir("z") / "audit.jsonl").exists()


def test_cleanup_removes_what_a_crash_left(
    bottle_env: BottleEnv, open_upstream: RecordingHTTPServer
) -> None:
    _bridge_config(bottle_env, open_upstream, _host_ip())
    record = _detach(bottle_env, "c")
    assert record["network"]
    # An engine restart (or anything else) takes the containers down behind our back.
    for container in record["containers"].values():
        _docker("kill", container)
    deadline = time.monotonic() + 10
    state = ""
    while state != "crashed":
        assert time.monotonic() < deadline, state
        rows = json.loads(bottle_env.cli("ls", "--json").stdout)
        state = {r["name"]: r["state"] for r in rows}["c"]
        time.sleep(0.1)
    listed = bottle_env.cli("cleanup", "--dry-run")
    assert listed.returncode == 0, listed.stderr
    # (the engine's shared bundle network is listed only while no bottle at all uses it)
    for name in (*record["containers"].values(), record["volume"]):
        assert name in listed.stdout
    assert len(_labelled("container", "c")) == 2  # a dry run removes nothing
    cleaned = bottle_env.cli("cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    _wait_for_no_leftovers("c", timeout=5)
    assert "nothing to clean up" in bottle_env.cli("cleanup").stdout


def test_a_normal_run_removes_everything_before_it_returns(bottle_env: BottleEnv) -> None:
    result = bottle_env.sh("echo inside")
    assert result.returncode == 0 and result.stdout.strip() == "inside", result.stderr
    assert _leftovers("t") == {"container": [], "network": [], "volume": []}


def test_files_written_in_the_workspace_belong_to_the_user(bottle_env: BottleEnv) -> None:
    result = bottle_env.sh("echo made > made-in-bottle; mkdir -p sub && touch sub/f")
    assert result.returncode == 0, result.stderr
    for path in (bottle_env.workspace / "made-in-bottle", bottle_env.workspace / "sub" / "f"):
        assert path.stat().st_uid == os.getuid()
        assert path.stat().st_gid == os.getgid()


# --- host placement: the bundle is a host process ---------------------------------------


def _process_gone(ref: dict[str, int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{ref['pid']}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_host_placement_is_one_hardened_container_and_a_host_bundle(
    bottle_env: BottleEnv,
) -> None:
    bottle_env.docker_bundle = "host"
    secret = "hostsecret-" + "Z3kP8" * 6
    bottle_env.env["MY_API_KEY"] = secret
    record = _detach(
        bottle_env, "hp", "curl -sS --max-time 5 http://allowed.test/via-host; sleep 300"
    )
    assert record["placement"] == "host"
    assert list(record["containers"]) == ["bottle"]
    assert _leftovers("hp") == {
        "container": [record["containers"]["bottle"]],
        "network": [],
        "volume": [],
    }
    agent = _inspect(record["containers"]["bottle"])
    host = agent["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert any(opt.startswith("seccomp=") for opt in host["SecurityOpt"])
    assert host["PidsLimit"] > 0 and host["Memory"] > 0
    mounts = {m["Destination"]: m for m in agent["Mounts"]}
    sockets = mounts["/run/claude-bottle/bundle"]
    assert sockets["Type"] == "bind" and sockets["RW"] is False
    assert sockets["Source"] == str(Path(record["runtime_dir"]) / "bundle")
    assert secret not in json.dumps(agent)
    bundle = record["processes"]["bundle"]
    cmdline = Path(f"/proc/{bundle['pid']}/cmdline").read_bytes()
    assert b"claude_bottle" in cmdline or b"claude-bottle" in cmdline
    deadline = time.monotonic() + 15
    while not bottle_env.upstream.requests:
        assert time.monotonic() < deadline, "the bottle's request never arrived"
        time.sleep(0.05)
    assert [r.path for r in bottle_env.upstream.requests] == ["/via-host"]
    assert bottle_env.cli("stop", "hp").returncode == 0
    _wait_for_no_leftovers("hp")
    assert _process_gone(bundle)
    audit = (bottle_env.state_dir("hp") / "audit.jsonl").read_text().splitlines()
    assert json.loads(audit[-1])["rule"] == "bundle-stop"


def test_host_placement_killing_the_bundle_stops_the_run(bottle_env: BottleEnv) -> None:
    bottle_env.docker_bundle = "host"
    flag = bottle_env.workspace / "go"
    proc = bottle_env.start(
        "curl -sS --max-time 5 http://allowed.test/before; echo started; "
        f"while [ ! -e {flag} ]; do sleep 0.05; done; "
        "curl -sS --max-time 5 http://allowed.test/after; sleep 30",
        name="hk",
    )
    assert proc.stdout is not None
    assert "hello from upstream /before" in proc.stdout.readline()
    assert proc.stdout.readline().strip() == "started"
    record = _record(bottle_env, "hk")
    os.kill(record["processes"]["bundle"]["pid"], signal.SIGKILL)
    flag.write_text("")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 125, (out, err)
    assert "bundle (host process) stopped" in err
    assert "/after" not in out
    assert [r.path for r in bottle_env.upstream.requests] == ["/before"]
    _wait_for_no_leftovers("hk")


def test_host_placement_sigkilled_cli_leaves_nothing_behind(bottle_env: BottleEnv) -> None:
    bottle_env.docker_bundle = "host"
    proc = bottle_env.start("echo started; sleep 300", name="hz")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    record = _record(bottle_env, "hz")
    assert len(_labelled("container", "hz")) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    _wait_for_no_leftovers("hz")  # the watchdog tore the agent container down
    assert _process_gone(record["processes"]["bundle"])  # it dies with the CLI
    cleaned = bottle_env.cli("cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not Path(record["runtime_dir"]).exists()


def test_plan_and_doctor_say_where_auto_puts_the_bundle(bottle_env: BottleEnv) -> None:
    bottle_env.docker_bundle = None  # the default: auto
    shown = bottle_env.cli("plan", "--backend", "docker", "--json", "--", "true")
    assert shown.returncode == 0, shown.stderr
    plan = json.loads(shown.stdout)
    assert plan["placement"] in ("host", "container")
    assert plan["placement_reason"].startswith("auto: ")
    assert (plan["bundle"] is None) is (plan["placement"] == "host")
    doctor = bottle_env.cli("doctor")
    assert f"bundle placement (auto): {plan['placement']}; auto: " in doctor.stdout


def test_the_socket_probe_reaches_a_host_socket_from_a_real_container() -> None:
    """On this native engine the probe auto relies on succeeds (a VM's would not)."""
    from claude_bottle.backend.docker import images, placement

    image = images.agent_image().tag
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
        pytest.skip("the agent image is not built")
    assert placement.probe_bind(image, os.getuid(), os.getgid()) is None
