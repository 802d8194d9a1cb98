"""`[bottle]` resource limits with the real mechanisms (issue 26), on every backend.

A fork bomb, a memory hog and a disk filler, each bounded by the test itself (at most
5,000 processes, 1 GiB, 100 MiB), so a bottle whose limits failed cannot take the
machine down either. Each checks the bottle stops at its limit, `run` says which
limit it hit, and the bundle (outside the bottle's cgroup) keeps answering.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from claude_bottle import cgroups
from tests.integration.conftest import BottleEnv, real_python

LIMITS = """
    [bottle]
    memory = "256M"
    pids = 256
    disk = "64M"
"""
WAIT = 60.0  # bound on every wait below


def _configure(bottle_env: BottleEnv) -> None:
    bottle_env.config.write_text(bottle_env.config.read_text() + LIMITS)


def _python(bottle_env: BottleEnv) -> str:
    return "python3" if bottle_env.backend == "docker" else real_python()


def _probe(bottle_env: BottleEnv, code: str) -> str:
    probe = bottle_env.workspace / f"probe_{secrets.token_hex(3)}.py"
    probe.write_text(code)
    return str(probe)


def _host_processes(marker: str | None = None) -> int:
    """Processes on the host; with `marker`, only the fork bomb's `sleep <marker>`."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        if marker is None:
            count += 1
            continue
        try:
            if (entry / "cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                count += 1
        except OSError:
            pass
    return count


def _wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the bottle ended early ({process.returncode}): {out} {err}")
        assert time.monotonic() < deadline, "the fork bomb never reported"
        time.sleep(0.1)


FORK_BOMB = """
import os, sys, time
marker, peak, go = sys.argv[1], sys.argv[2], sys.argv[3]
children = []
for _ in range(5000):  # bounded by the test: a bottle without limits stops here
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.execv("/bin/sleep", ["sleep", marker])
    children.append(pid)
with open(peak + ".tmp", "w") as f:
    f.write(str(len(children)))
os.rename(peak + ".tmp", peak)
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.1)
for pid in children:
    os.kill(pid, 9)
"""


def test_fork_bomb_stops_at_pids_and_the_bundle_keeps_answering(bottle_env: BottleEnv) -> None:
    _configure(bottle_env)
    marker = f"3{secrets.randbelow(10**6)}.5"  # `sleep` seconds, unique to this test
    peak = bottle_env.workspace / "peak"
    go = bottle_env.workspace / "go"
    baseline = _host_processes()
    probe = _probe(bottle_env, FORK_BOMB)
    script = f"exec {_python(bottle_env)} -I -S {probe} {marker} {peak} {go}"
    process = bottle_env.start(script)
    try:
        _wait_for(peak, process)
        forked = int(peak.read_text())
        assert 0 < forked < 256, forked  # the relay, the shell and python count too
        assert 0 < _host_processes(marker) <= forked  # the last may still be exec'ing
        # A second process asks the bundle for its counters while the bottle is at its limit.
        listed = bottle_env.cli("ls", "--json", timeout=WAIT)
        rows = {row["name"]: row for row in json.loads(listed.stdout)}
        assert rows["t"]["state"] == "running" and rows["t"]["tokens"] is not None, rows
    finally:
        go.touch()
        _, err = process.communicate(timeout=WAIT)
    assert process.returncode == 0, err
    assert "the bottle hit its pids limit (256)" in err and "[bottle] pids" in err, err
    deadline = time.monotonic() + WAIT
    while _host_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _host_processes(marker) == 0
    # Other tests share this machine: the count returns to its baseline within their noise.
    assert _host_processes() < baseline + forked // 2


MEMORY_HOG = """
held = []
for _ in range(16):  # 1 GiB in 64 MiB pieces, each written so it is really held
    held.append(b"\\x01" * (64 << 20))
print("held 1 GiB")
"""


def test_memory_hog_is_killed_inside_and_run_says_which_limit(bottle_env: BottleEnv) -> None:
    _configure(bottle_env)
    result = bottle_env.run(_python(bottle_env), "-I", "-S", _probe(bottle_env, MEMORY_HOG))
    assert "held 1 GiB" not in result.stdout
    assert result.returncode == 128 + 9, (result.returncode, result.stderr)
    assert "the bottle hit its memory limit (256M)" in result.stderr, result.stderr
    assert "raise [bottle] memory" in result.stderr
    assert "stopped" not in result.stderr  # the bundle (its way out) never went down
    log = bottle_env.state_dir() / "audit.jsonl"
    verified = bottle_env.cli("audit", "verify", str(log))
    assert verified.returncode == 0, verified.stderr
    first = json.loads(log.read_text().splitlines()[0])
    assert first["rule"] == "bundle-start"
    assert first["detail"]["limits"]["memory"] == 256 << 20
    assert first["detail"]["limits"]["pids"] == 256


def test_after_a_memory_overrun_the_bottle_and_its_bundle_still_serve(
    bottle_env: BottleEnv,
) -> None:
    _configure(bottle_env)
    hog = _probe(bottle_env, MEMORY_HOG)
    result = bottle_env.sh(
        f"{_python(bottle_env)} -I -S {hog}; echo hog=$?; "
        "curl -sS --max-time 10 http://allowed.test/after-the-hog"
    )
    assert "hog=137" in result.stdout, (result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    assert any(r.path == "/after-the-hog" for r in bottle_env.upstream.requests)
    assert "the bottle hit its memory limit (256M)" in result.stderr


def test_plan_shows_the_limits_and_the_mechanism(bottle_env: BottleEnv) -> None:
    _configure(bottle_env)
    shown = bottle_env.cli("plan", "--json", "--backend", bottle_env.backend, "--", "true")
    assert shown.returncode == 0, shown.stderr
    limits = json.loads(shown.stdout)["limits"]
    assert (limits["memory"], limits["pids"], limits["disk"]) == (256 << 20, 256, 64 << 20)
    assert limits["mechanism"] and limits["cpus"] is None


def test_write_past_disk_fails_with_enospc_inside(bottle_env: BottleEnv) -> None:
    _configure(bottle_env)
    name = f"filler-{secrets.token_hex(4)}"
    result = bottle_env.sh(f"dd if=/dev/zero of=/tmp/{name} bs=1M count=100; echo dd=$?")
    assert "No space left on device" in result.stderr, result.stderr
    assert "dd=1" in result.stdout
    assert list(bottle_env.root.rglob(name)) == []  # not in the state, runtime or workspace
    assert not (Path("/tmp") / name).exists() and not (Path("/var/tmp") / name).exists()


def test_require_limits_refuses_what_the_host_cannot_apply(bottle_env: BottleEnv) -> None:
    host = cgroups.detect()
    if bottle_env.backend != "namespace" or "cpus" not in host.missing:
        pytest.skip("every limit can be applied here; nothing to refuse")
    bottle_env.config.write_text(
        bottle_env.config.read_text() + "[bottle]\ncpus = 1.0\nrequire_limits = true\n"
    )
    result = bottle_env.sh("true")
    assert result.returncode == 3 and "require_limits" in result.stderr


LIMIT_FILES = {
    "memory": ("memory.limit_in_bytes", str(256 << 20)),
    "pids": ("pids.max", "256"),
    "cpu": ("cpu.cfs_quota_us", "50000"),
    "unified": ("memory.max", str(256 << 20)),
}


def _check_own_cgroup(bottle_env: BottleEnv, host: cgroups.CgroupHost) -> None:
    """While the bottle runs its cgroup holds its limits; the CLI and the bundle are
    outside it; at teardown it is gone."""
    _configure(bottle_env)
    bottle_env.config.write_text(bottle_env.config.read_text() + "cpus = 0.5\n")
    name = cgroups.group_name("t", Path(bottle_env.env["CLAUDE_BOTTLE_STATE_DIR"]))
    bottle = {c: Path(base) / cgroups.PARENT / name for c, base in host.bases}
    process = bottle_env.start("touch started; exec sleep 30")
    try:
        _wait_for(bottle_env.workspace / "started", process)
        for controller, (file, value) in LIMIT_FILES.items():
            if controller in bottle:
                assert (bottle[controller] / file).read_text().strip() == value
        inside = set()
        for directory in bottle.values():
            inside |= set((directory / "cgroup.procs").read_text().split())
        record = json.loads((bottle_env.state_dir() / "bottle.json").read_text())
        outside = {str(process.pid), str(record["processes"]["bundle"]["pid"])}
        assert inside and not inside & outside  # the CLI and the bundle run outside it
        for directory in bottle.values():  # the bundle in its own small cgroup beside it
            procs = Path(f"{directory}{cgroups.BUNDLE_SUFFIX}/cgroup.procs").read_text().split()
            assert procs == [str(record["processes"]["bundle"]["pid"])]
    finally:
        process.terminate()
        process.communicate(timeout=WAIT)
    bundle = [Path(f"{d}{cgroups.BUNDLE_SUFFIX}") for d in bottle.values()]
    assert not any(d.exists() for d in [*bottle.values(), *bundle])  # removed at teardown


def test_cgroup_holds_the_limits_and_is_removed_at_teardown(bottle_env: BottleEnv) -> None:
    if bottle_env.backend != "namespace":
        pytest.skip("the bottle's own cgroup is the namespace backend's mechanism")
    host = cgroups.detect()
    if host.kind not in ("v1", "v2"):
        pytest.skip(f"no cgroup this test can inspect here: {host.describe()}")
    _check_own_cgroup(bottle_env, host)


def test_stop_removes_a_detached_bottles_cgroup_and_cleanup_finds_a_crashed_ones(
    bottle_env: BottleEnv,
) -> None:
    if bottle_env.backend != "namespace":
        pytest.skip("the bottle's own cgroup is the namespace backend's mechanism")
    host = cgroups.detect()
    if host.kind not in ("v1", "v2"):
        pytest.skip(f"no cgroup this test can inspect here: {host.describe()}")
    _configure(bottle_env)
    state_root = Path(bottle_env.env["CLAUDE_BOTTLE_STATE_DIR"])

    def dirs(name: str) -> list[Path]:
        group = cgroups.group_name(name, state_root)
        bottle = [Path(base) / cgroups.PARENT / group for _, base in host.bases]
        return bottle + [Path(f"{d}{cgroups.BUNDLE_SUFFIX}") for d in bottle]

    detached = bottle_env.run("sleep", "60", name="d", extra=("--detach",))
    assert detached.returncode == 0, detached.stderr
    assert all(d.is_dir() for d in dirs("d"))
    assert bottle_env.cli("stop", "d").returncode == 0
    assert not any(d.exists() for d in dirs("d"))

    process = bottle_env.start("touch started; exec sleep 60", name="c")
    _wait_for(bottle_env.workspace / "started", process)
    process.kill()  # the CLI dies without tearing down: its cgroup is left behind
    process.communicate(timeout=WAIT)
    assert all(d.is_dir() for d in dirs("c"))
    try:
        listed = bottle_env.cli("cleanup", "--dry-run")
        cgroup_lines = [line for line in listed.stdout.splitlines() if "  cgroup  " in line]
        assert sorted(line.split()[-1] for line in cgroup_lines) == sorted(map(str, dirs("c")))
    finally:  # `cleanup` itself would also remove other suites' stale images: not run here
        leftover = cgroups.BottleCgroup(1, tuple(("", str(d)) for d in dirs("c")), 0, 0, None)
        assert cgroups.remove(leftover) == []


def test_cgroup_v2_path_runs_where_the_host_has_it(bottle_env: BottleEnv) -> None:
    host = cgroups.detect()
    if host.kind != "v2":
        pytest.skip(
            f"cgroup v2 path not exercised on this host ({host.describe()}); "
            "its file writes are covered against a fake tree in tests/unit/test_limits.py"
        )
    if bottle_env.backend != "namespace":
        pytest.skip("the cgroup v2 path is the namespace backend's")
    _check_own_cgroup(bottle_env, host)
