"""[bottle] limits: parsing and validation, the plan, and the cgroup code.

The cgroup v2 tests write to a FAKE cgroup tree in a temporary directory (plain
directories and files standing in for cgroupfs): this machine has cgroup v1 only, so
the v2 path's directory layout and file writes are checked here, not against a kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from claude_bottle import cgroups
from claude_bottle.backend.namespace import limits as ns_limits
from claude_bottle.backend.namespace.bwrap import BwrapSpec, bwrap_argv
from claude_bottle.cli import commands
from claude_bottle.config import load_config
from claude_bottle.errors import ConfigError, MissingDependency
from claude_bottle.limits import (
    GIB,
    MIB,
    Limits,
    LimitsPlan,
    Unapplied,
    format_size,
    host_memory,
    parse_size,
    plan_with,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [("8G", 8 * GIB), ("256M", 256 * MIB), ("512KiB", 512 * 1024), ("1.5G", 3 * GIB // 2)],
)
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "8X", "G"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_sizes_print_in_the_largest_exact_unit() -> None:
    assert [format_size(s) for s in (256 * MIB, 10 * GIB, 1536 * MIB, 1000)] == [
        "256M",
        "10G",
        "1536M",
        "1000",
    ]


def _load(tmp_path: Path, text: str) -> Limits:
    config = tmp_path / "config.toml"
    config.write_text(text)
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    return load_config(
        workspace=workspace, user_config=config, known_backends=("namespace",)
    ).bottle.limits


def test_defaults_and_every_key(tmp_path: Path) -> None:
    assert _load(tmp_path, "") == Limits()
    assert Limits().pids == 4096 and Limits().disk == 10 * GIB and Limits().cpus is None
    got = _load(
        tmp_path,
        '[bottle]\nmemory = "8G"\npids = 256\ncpus = 2\ndisk = "20G"\nrequire_limits = true\n',
    )
    assert got == Limits(memory=8 * GIB, pids=256, cpus=2.0, disk=20 * GIB, require=True)


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ('memory = "lots"', "bottle.memory", "expected a size"),
        ('memory = "1M"', "bottle.memory", "too small"),
        ("memory = 8", "bottle.memory", "expected a string"),
        ('disk = "1K"', "bottle.disk", "too small"),
        ("pids = 3", "bottle.pids", "expected 16 to"),
        ('pids = "4096"', "bottle.pids", "expected an integer"),
        ("cpus = 0", "bottle.cpus", "expected a number of CPUs"),
        ('cpus = "2"', "bottle.cpus", "expected a number"),
        ('require_limits = "yes"', "bottle.require_limits", "expected a boolean"),
    ],
)
def test_bad_values_name_the_file_and_key(
    tmp_path: Path, line: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"[bottle]\n{line}\n")
    message = str(caught.value)
    assert "config.toml" in message and key in message and problem in message, message


def test_memory_defaults_to_half_the_host() -> None:
    plan = plan_with(Limits(), "m", "d")
    assert plan.memory == host_memory() // 2
    assert dict(plan.rows())["memory"] == format_size(host_memory() // 2)


# -- cgroups: detection against FAKE trees ---------------------------------------------


def _fake_v1(root: Path, controllers: tuple[str, ...] = ("memory", "pids", "cpu")) -> Path:
    for controller in controllers:
        (root / controller / "user" / "me").mkdir(parents=True)
        (root / controller / "cgroup.procs").write_text("")
    proc = root / "self-cgroup"
    proc.write_text("".join(f"{i}:{c}:/user/me\n" for i, c in enumerate(controllers, 1)))
    return proc


def _fake_v2(root: Path, own: str, controllers: str = "cpu memory pids") -> Path:
    (root / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    for directory in [root / own.lstrip("/"), *(root / own.lstrip("/")).parents]:
        if directory.is_relative_to(root) and directory != root:
            (directory / "cgroup.controllers").write_text(controllers + "\n")
            (directory / "cgroup.subtree_control").write_text("")
    proc = root / "self-cgroup"
    proc.write_text(f"0::{own}\n")
    return proc


def test_v1_as_root_nests_under_our_own_cgroup(tmp_path: Path) -> None:
    proc = _fake_v1(tmp_path)
    host = cgroups.detect(tmp_path, proc, env={}, euid=0)
    assert host.kind == "v1" and host.missing == ()
    assert dict(host.bases)["memory"] == str(tmp_path / "memory" / "user" / "me")


def test_v1_without_a_cpu_controller_says_cpus_cannot_be_applied(tmp_path: Path) -> None:
    proc = _fake_v1(tmp_path, ("memory", "pids"))
    assert cgroups.detect(tmp_path, proc, env={}, euid=0).missing == ("cpus",)


def test_v1_as_a_user_is_not_usable_and_says_why(tmp_path: Path) -> None:
    proc = _fake_v1(tmp_path)
    host = cgroups.detect(tmp_path, proc, env={}, euid=1000)
    assert host.kind == "none" and "only by root" in host.reason


def test_v2_root_uses_the_hierarchy_root(tmp_path: Path) -> None:
    proc = _fake_v2(tmp_path, "/init.scope")
    host = cgroups.detect(tmp_path, proc, env={}, euid=0)
    assert host == cgroups.CgroupHost("v2", (("unified", str(tmp_path)),))


@pytest.mark.skipif(os.geteuid() != 0, reason="the FAKE tree's ownership is set with chown")
def test_v2_user_uses_its_highest_owned_ancestor(tmp_path: Path) -> None:
    delegated = "/user.slice/user-1000.slice/user@1000.service"
    proc = _fake_v2(tmp_path, f"{delegated}/app.slice/term.scope")
    for directory in (tmp_path / delegated.lstrip("/")).rglob("*"):
        os.chown(directory, 1000, 1000)
    os.chown(tmp_path / delegated.lstrip("/"), 1000, 1000)
    host = cgroups.detect(tmp_path, proc, env={}, euid=1000)
    assert host == cgroups.CgroupHost("v2", (("unified", str(tmp_path / delegated.lstrip("/"))),))


def test_v2_without_memory_falls_through(tmp_path: Path) -> None:
    proc = _fake_v2(tmp_path / "unified", "/", controllers="hugetlb")
    (tmp_path / "self").write_text(proc.read_text())
    host = cgroups.detect(tmp_path, tmp_path / "self", env={}, euid=0)
    assert host.kind == "none" and "cgroup v2" in host.reason


def test_a_systemd_user_session_is_used_when_reachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    env = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"}
    assert cgroups.detect(tmp_path, tmp_path / "none", env=env, euid=1000).kind == "systemd"


# -- cgroups: the file writes, against FAKE trees -----------------------------------------


def test_v2_create_enables_controllers_and_writes_limits(tmp_path: Path) -> None:
    _fake_v2(tmp_path, "/")
    host = cgroups.CgroupHost("v2", (("unified", str(tmp_path)),))
    group = cgroups.for_bottle(host, "b", Limits(memory=256 * MIB, pids=256, cpus=1.5))
    assert group is not None
    bottle = tmp_path / "claude-bottle" / "b"
    bottle.mkdir(parents=True)
    (bottle / "memory.swap.max").write_text("max")  # as the kernel makes it, with swap
    cgroups.create(group)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (bottle / "memory.max").read_text() == str(256 * MIB)
    assert (bottle / "memory.swap.max").read_text() == "0"
    assert (bottle / "pids.max").read_text() == "256"
    assert (bottle / "cpu.max").read_text() == "150000 100000"


def test_v1_create_writes_one_dir_per_controller(tmp_path: Path) -> None:
    _fake_v1(tmp_path)
    host = cgroups.detect(tmp_path, tmp_path / "self-cgroup", env={}, euid=0)
    group = cgroups.for_bottle(host, "b", Limits(memory=64 * MIB, pids=100, cpus=0.5))
    assert group is not None
    cgroups.create(group)
    dirs = {c: Path(d) for c, d in group.dirs}
    assert (dirs["memory"] / "memory.limit_in_bytes").read_text() == str(64 * MIB)
    assert (dirs["pids"] / "pids.max").read_text() == "100"
    assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text() == "50000"
    assert not (dirs["memory"] / "memory.memsw.limit_in_bytes").exists()  # no swap accounting
    assert all(d.parent.name == "claude-bottle" for d in dirs.values())


def test_join_argv_moves_the_shell_in_before_it_becomes_the_command(tmp_path: Path) -> None:
    procs = []
    for controller in ("memory", "pids"):
        (tmp_path / controller).mkdir()
        procs.append(tmp_path / controller / "cgroup.procs")
    group = cgroups.BottleCgroup(
        1, tuple((c, str(tmp_path / c)) for c in ("memory", "pids")), 0, 0, None
    )
    out = subprocess.run(
        cgroups.join_argv(group, ["/bin/sh", "-c", "echo $$"]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert [p.read_text().strip() for p in procs] == [out, out]  # the same pid, exec'd


def test_join_argv_fails_closed_when_the_cgroup_refuses(tmp_path: Path) -> None:
    group = cgroups.BottleCgroup(1, (("memory", str(tmp_path / "gone")),), 0, 0, None)
    result = subprocess.run(cgroups.join_argv(group, ["/bin/echo", "ran"]), capture_output=True)
    assert result.returncode == 125 and b"ran" not in result.stdout


def test_hits_read_the_kernels_counters(tmp_path: Path) -> None:
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (tmp_path / "pids.events").write_text("max 7\n")
    v1 = cgroups.BottleCgroup(
        1, (("memory", str(tmp_path)), ("pids", str(tmp_path))), 256 * MIB, 256, None
    )
    assert cgroups.hits(v1) == [
        "the bottle hit its memory limit (256M): 2 process(es) in it were killed; "
        "raise [bottle] memory to allow more",
        "the bottle hit its pids limit (256): 7 new process(es) were refused; "
        "raise [bottle] pids to allow more",
    ]
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    (tmp_path / "pids.events").write_text("max 0\n")
    v2 = cgroups.BottleCgroup(2, (("unified", str(tmp_path)),), 256 * MIB, 256, None)
    assert cgroups.hits(v2) == []


def test_only_bottle_cgroups_may_be_removed_from_a_record() -> None:
    assert cgroups.is_bottle_cgroup("/sys/fs/cgroup/pids/claude-bottle/x")
    assert not cgroups.is_bottle_cgroup("/sys/fs/cgroup/pids/claude-bottle/../../x")
    assert not cgroups.is_bottle_cgroup("/home/me/claude-bottle/x")
    raw = {"version": 1, "dirs": [["pids", "/etc"]], "memory": 1, "pids": 1, "cpus": None}
    assert cgroups.from_record(raw) is None
    raw["dirs"] = [["pids", "/sys/fs/cgroup/pids/claude-bottle/x"]]
    assert cgroups.from_record(raw) is not None
    assert cgroups.from_record("junk") is None


# -- the namespace backend's other mechanisms -----------------------------------------------


def test_systemd_scope_carries_every_limit() -> None:
    argv = cgroups.systemd_argv("u", Limits(memory=GIB, pids=64, cpus=1.5), ["bwrap"])
    assert argv[:4] == ["systemd-run", "--user", "--scope", "--quiet"]
    for prop in ("MemoryMax=1073741824", "MemorySwapMax=0", "TasksMax=64", "CPUQuota=150%"):
        assert f"--property={prop}" in argv
    assert argv[-2:] == ["--", "bwrap"]


RLIMITS = (
    "import resource as r; print(r.getrlimit(r.RLIMIT_NPROC)[0], r.getrlimit(r.RLIMIT_DATA)[0])"
)


def test_without_a_cgroup_rlimits_apply_and_plan_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    none = cgroups.CgroupHost("none", reason="FAKE: no cgroup")
    plan, confinement = ns_limits._rlimits(Limits(memory=GIB, pids=64, cpus=1.0), none)
    keys = {u.key for u in plan.unapplied}
    assert {"memory", "cpus"} <= keys
    assert any("counts toward memory" in n for n in plan.notes)
    assert confinement.cgroup is None
    probe = subprocess.run(
        [*confinement.launcher, sys.executable, "-c", RLIMITS],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == ["64", str(GIB)]


def test_bwrap_sizes_every_tmpfs() -> None:
    spec = BwrapSpec(
        hostname="h",
        workspace="/w",
        home="/home/u",
        home_source="/s/home",
        bundle_dir="/r/bundle",
        exec_dir="/r/exec",
        relay_bytecode="/c/relay.pyc",
        python="/usr/bin/python3",
        relay_port=3128,
        masked=("/home/u/.ssh",),
        hidden_sockets=(),
        toolchain=(),
        read_only=(),
        resolv_conf=None,
        tmpfs_size=64 * MIB,
    )
    argv = bwrap_argv(spec)
    tmpfs = [i for i, arg in enumerate(argv) if arg == "--tmpfs"]
    assert len(tmpfs) == 4  # /tmp, /var/tmp, /run and the hidden dir
    assert all(argv[i - 2 : i] == ["--size", str(64 * MIB)] for i in tmpfs)
    assert "--size" not in bwrap_argv(spec._replace(tmpfs_size=None))


# -- run: what cannot be applied is said, or refused ---------------------------------------


def _plan(require: bool) -> types.SimpleNamespace:
    limits = LimitsPlan(
        "FAKE", GIB, 64, 1.0, GIB, require, "d", (Unapplied("cpus", "no cpu controller"),)
    )
    return types.SimpleNamespace(limits=limits)


def test_run_says_which_limit_it_cannot_apply(capsys: pytest.CaptureFixture[str]) -> None:
    commands._check_limits(_plan(require=False))  # type: ignore[arg-type]
    assert "limits not applied (FAKE): cpus: no cpu controller" in capsys.readouterr().err


def test_require_limits_refuses_to_start() -> None:
    with pytest.raises(MissingDependency, match="require_limits") as caught:
        commands._check_limits(_plan(require=True))  # type: ignore[arg-type]
    assert caught.value.exit_code == 3


def test_cleanup_lists_only_this_state_roots_dead_bottles(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "state-a", tmp_path / "state-b"
    parent = tmp_path / "pids" / cgroups.PARENT
    for name in ("live", "dead"):
        for root in (ours, theirs):
            for suffix in ("", cgroups.BUNDLE_SUFFIX):
                (parent / (cgroups.group_name(name, root) + suffix)).mkdir(parents=True)
    host = cgroups.CgroupHost("v1", (("pids", str(tmp_path / "pids")),))
    dead = str(parent / cgroups.group_name("dead", ours))
    assert cgroups.leftovers(host, {"live"}, ours) == [dead, dead + cgroups.BUNDLE_SUFFIX]
    assert cgroups.group_name("dead", ours) != cgroups.group_name("dead", theirs)
