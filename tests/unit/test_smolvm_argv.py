"""smolvm argv, pinned: every command line the backend runs, and proof that smolvm parses it.

Each builder's output is pinned here (seed style). Then the very same argv is handed to
the real smolvm CLI from the smolmachines wheel, in a throwaway HOME so nothing of the
user's is touched; it must fail *after* parsing (no such machine, no such file), never
with the parser's usage error. A deliberately stale argv shows the check can fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from unittest import mock

import pytest

from claude_bottle.backend.smolmachines import smolvm
from claude_bottle.backend.smolmachines.launch import machine_spec
from claude_bottle.backend.smolmachines.prepare import Stage, relay_command
from claude_bottle.backend.smolmachines.util import wheel_binary
from claude_bottle.limits import GIB, MIB, Limits, plan_with
from claude_bottle.workspace_guard import GitMount

EXE = "/usr/local/bin/smolvm"
RUN = "claude_bottle.backend.smolmachines.smolvm.subprocess.run"
SPEC = smolvm.MachineSpec(
    name="cb-proj-abcde",
    from_path="/home/alice/.cache/claude-bottle/smolmachines/0f1e.smolmachine",
    command=relay_command(),
    mount_sockets=(
        (
            "/run/user/1000/claude-bottle/proj-abcde/bundle/proxy.sock",
            "/run/claude-bottle/proxy.sock",
        ),
    ),
    volumes=(
        ("/run/user/1000/claude-bottle/proj-abcde/lib", "/opt/claude-bottle", True),
        ("/work/proj", "/work/proj", False),
    ),
    labels=(("claude-bottle", "proj-abcde"),),
    user="1000:1000",
)

# `smolvm machine ls --json` as smolvm 1.32.2 printed it (two created machines, one ours).
RECORDED_LS_JSON = """[
  {
    "block_io": "sync",
    "branchable": false,
    "branchpoint_held": false,
    "cmd": [
      "python3",
      "-I",
      "-S",
      "/opt/claude-bottle/relay.py",
      "--hold"
    ],
    "cpus": 4,
    "created_at": 1795425672,
    "cuda": false,
    "cuda_branch_pool_size": null,
    "cuda_fork_pool_size": null,
    "cuda_vram_limit_mib": null,
    "detached": false,
    "disk_durability": "full",
    "disks": [],
    "entrypoint": [],
    "ephemeral": false,
    "forkable": false,
    "forkpoint_held": false,
    "gpu": false,
    "gpu_vram_mib": null,
    "health_cmd": null,
    "health_interval_secs": null,
    "health_retries": null,
    "health_startup_grace_secs": null,
    "health_timeout_secs": null,
    "image": null,
    "labels": {
      "claude-bottle": "demo-abc12"
    },
    "memory_mib": 8192,
    "mounts": 0,
    "name": "cb-demo-abc12",
    "network": false,
    "overlay_gb": null,
    "parent_machine": null,
    "pid": null,
    "ports": 0,
    "restart_count": 0,
    "restart_max_retries": 0,
    "restart_policy": "never",
    "state": "created",
    "state_reason": null,
    "storage_gb": null
  },
  {
    "block_io": "sync",
    "branchable": false,
    "branchpoint_held": false,
    "cmd": [],
    "cpus": 4,
    "created_at": 1795425672,
    "cuda": false,
    "cuda_branch_pool_size": null,
    "cuda_fork_pool_size": null,
    "cuda_vram_limit_mib": null,
    "detached": false,
    "disk_durability": "full",
    "disks": [],
    "entrypoint": [],
    "ephemeral": false,
    "forkable": false,
    "forkpoint_held": false,
    "gpu": false,
    "gpu_vram_mib": null,
    "health_cmd": null,
    "health_interval_secs": null,
    "health_retries": null,
    "health_startup_grace_secs": null,
    "health_timeout_secs": null,
    "image": null,
    "labels": {},
    "memory_mib": 8192,
    "mounts": 0,
    "name": "other-vm",
    "network": false,
    "overlay_gb": null,
    "parent_machine": null,
    "pid": null,
    "ports": 0,
    "restart_count": 0,
    "restart_max_retries": 0,
    "restart_policy": "never",
    "state": "created",
    "state_reason": null,
    "storage_gb": null
  }
]"""


def test_pack_create_argv() -> None:
    assert smolvm.pack_create_argv(EXE, "/tmp/img/image.tar", "/cache/0f1e") == [
        EXE, "pack", "create", "--image", "/tmp/img/image.tar", "--output", "/cache/0f1e",
    ]  # fmt: skip


def test_machine_create_argv_has_no_network_flag() -> None:
    argv = smolvm.machine_create_argv(EXE, SPEC)
    assert argv == [
        EXE, "machine", "create", "--name", "cb-proj-abcde",
        "--from", "/home/alice/.cache/claude-bottle/smolmachines/0f1e.smolmachine",
        "--label", "claude-bottle=proj-abcde",
        "--mount-socket",
        "/run/user/1000/claude-bottle/proj-abcde/bundle/proxy.sock:/run/claude-bottle/proxy.sock",
        "--volume", "/run/user/1000/claude-bottle/proj-abcde/lib:/opt/claude-bottle:ro",
        "--volume", "/work/proj:/work/proj",
        "--user", "1000:1000",
        "--stop-on-exit",
        "--",
        "python3", "-I", "-S", "/opt/claude-bottle/relay.py",
        "--listen", "3128=/run/claude-bottle/proxy.sock",
        "--listen", "3129=/run/claude-bottle/gateway.sock",
        "--listen", "3130=/run/claude-bottle/git.sock",
        "--listen", "3131=/run/claude-bottle/hook.sock",
        "--ready-file", "/run/claude-bottle/state/ready",
        "--hold",
    ]  # fmt: skip
    own_flags = argv[: argv.index("--")]
    for network_flag in (
        "--net", "--allow-cidr", "--allow-host", "--allow-host-pattern",
        "--outbound-localhost-only", "--guest-subnet", "--network", "--net-backend",
        "--use-host-proxy", "--dns", "--port",
        "--block-private", "--deny-cidr", "--allow-udp", "--credential", "--ssh-agent",
    ):  # fmt: skip
        assert network_flag not in own_flags


def test_launch_spec_mounts_exactly_the_bottle_paths(tmp_path: Path) -> None:
    from claude_bottle.backend.smolmachines.bottle_plan import SmolmachinesBottlePlan

    plan = mock.Mock(spec=SmolmachinesBottlePlan)
    plan.machine, plan.name, plan.user = "cb-p", "p", "1000:1000"
    plan.relay_command = relay_command()
    plan.git_remotes = ()  # no [git.remotes]: no git socket to mount
    plan.workspace, plan.home, plan.home_source = "/work/p", "/home/bottle", "/state/p/home"
    plan.workspace_guard = mock.Mock(
        mounts=(
            GitMount("/state/p/git-shadow", "/work/p/.git", False),
            GitMount("/work/p/.git/objects", "/work/p/.git/objects", False),
        )
    )
    plan.limits = plan_with(Limits(memory=512 * MIB, cpus=1.5), "vm", "vm")
    stage = Stage.at(tmp_path)
    spec = machine_spec(plan, stage, Path("/cache/x.smolmachine"))
    assert (spec.memory_mib, spec.cpus) == (512, 2)  # [bottle] memory and cpus, rounded up
    own = smolvm.machine_create_argv(EXE, spec)[: -len(spec.command) - 1]
    assert own[own.index("--mem") :][:4] == ["--mem", "512", "--cpus", "2"]
    assert spec.mount_sockets == (
        (str(tmp_path / "bundle" / "proxy.sock"), "/run/claude-bottle/proxy.sock"),
        (str(tmp_path / "bundle" / "gateway.sock"), "/run/claude-bottle/gateway.sock"),
        (str(tmp_path / "bundle" / "hook.sock"), "/run/claude-bottle/hook.sock"),
    )
    assert spec.volumes == (
        (str(tmp_path / "lib"), "/opt/claude-bottle", True),
        (str(tmp_path / "bundle"), "/run/claude-bottle/bundle", True),
        (str(tmp_path / "state"), "/run/claude-bottle/state", False),
        ("/work/p", "/work/p", False),
        ("/state/p/git-shadow", "/work/p/.git", False),  # the bottle's own .git, over the real
        ("/work/p/.git/objects", "/work/p/.git/objects", False),
        ("/state/p/home", "/home/bottle", False),
    )
    assert spec.labels == (("claude-bottle", "p"),) and spec.stop_on_exit


def test_launch_spec_sizes_the_guest_disks_to_disk(tmp_path: Path) -> None:
    """[bottle] disk sizes the VM's writable disks (issue 26): smolvm takes whole GiB."""
    plan = mock.Mock()
    plan.workspace_guard = mock.Mock(mounts=())
    plan.git_remotes = ()
    plan.relay_command = relay_command()
    for disk, gib in ((20 * GIB, 20), (20 * GIB + 1, 21), (64 * MIB, 1)):
        plan.limits = plan_with(Limits(memory=GIB, disk=disk), "vm", "vm")
        spec = machine_spec(plan, Stage.at(tmp_path), Path("/cache/x.smolmachine"))
        assert spec.disk_gib == gib
        argv = smolvm.machine_create_argv(EXE, spec)
        own = argv[: argv.index("--")]
        assert own[own.index("--storage") + 1] == str(gib)
        assert own[own.index("--overlay") + 1] == str(gib)


def test_machine_start_stop_delete_argv() -> None:
    assert smolvm.machine_start_argv(EXE, "cb-x") == [EXE, "machine", "start", "--name", "cb-x"]
    assert smolvm.machine_stop_argv(EXE, "cb-x") == [EXE, "machine", "stop", "--name", "cb-x"]
    assert smolvm.machine_stop_argv(EXE, "cb-x", timeout=0) == [
        EXE, "machine", "stop", "--name", "cb-x", "--timeout", "0",
    ]  # fmt: skip
    assert smolvm.machine_delete_argv(EXE, "cb-x") == [
        EXE, "machine", "delete", "--name", "cb-x", "--force",
    ]  # fmt: skip


def test_machine_exec_argv_captured_and_interactive() -> None:
    assert smolvm.machine_exec_argv(
        EXE, "cb-x", ["/bin/sh", "-c", "echo hi"], env={"A": "1", "B": "two words"},
        workdir="/work/p", user="1000:1000", timeout=30,
    ) == [
        EXE, "machine", "exec", "--name", "cb-x",
        "--env", "A=1", "--env", "B=two words",
        "--workdir", "/work/p", "--user", "1000:1000", "--timeout", "30s",
        "--", "/bin/sh", "-c", "echo hi",
    ]  # fmt: skip
    assert smolvm.machine_exec_argv(
        EXE, "cb-x", ["claude", "--help"], interactive=True, tty=True
    ) == [
        EXE,
        "machine",
        "exec",
        "--name",
        "cb-x",
        "--interactive",
        "--tty",
        "--",
        "claude",
        "--help",
    ]


def test_machine_exec_keeps_flag_like_command_words_after_the_separator() -> None:
    argv = smolvm.machine_exec_argv(EXE, "cb-x", ["--name", "-e"])
    assert argv[-3:] == ["--", "--name", "-e"]


def test_machine_cp_ls_logs_argv() -> None:
    assert smolvm.machine_cp_argv(EXE, "/host/f", "cb-x", "/work/p/f") == [
        EXE, "machine", "cp", "/host/f", "cb-x:/work/p/f",
    ]  # fmt: skip
    assert smolvm.machine_ls_argv(EXE) == [EXE, "machine", "ls", "--json"]
    assert smolvm.machine_logs_argv(EXE, "cb-x", 5) == [
        EXE, "machine", "logs", "--name", "cb-x", "--tail", "5",
    ]  # fmt: skip


# --- runners: errors and results ------------------------------------------------------


def _completed(rc: int, out: str = "", err: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess([], rc, out, err)


def test_exec_returns_the_commands_failure_as_a_result() -> None:
    with mock.patch(RUN, return_value=_completed(42, "o", "e\n")) as run:
        result = smolvm.machine_exec(EXE, "cb-x", ["false"])
    assert result == smolvm.SmolvmResult(42, "o", "e\n")
    assert run.call_args.args[0] == [EXE, "machine", "exec", "--name", "cb-x", "--", "false"]


def test_other_subcommands_raise_with_returncode_and_stderr() -> None:
    err = "note: no packed assets found for 'smol-vmm' (...)\nError: vm not found: cb-x\n"
    with (
        mock.patch(RUN, return_value=_completed(1, "", err)),
        pytest.raises(smolvm.SmolvmError) as caught,
    ):
        smolvm.machine_start(EXE, "cb-x")
    assert caught.value.returncode == 1
    assert caught.value.stderr == "Error: vm not found: cb-x\n"  # the wheel's note is dropped
    assert "machine start failed (exit 1): Error: vm not found: cb-x" in str(caught.value)


def test_missing_binary_is_a_smolvm_error() -> None:
    with pytest.raises(smolvm.SmolvmError) as caught:
        smolvm.machine_ls("/nonexistent/smolvm")
    assert caught.value.returncode == 127


def test_smolvm_env_confines_the_vmm_unless_told_otherwise() -> None:
    env = smolvm.smolvm_env({"PATH": "/bin", "SMOLVM_SECCOMP": "audit"})
    if os.uname().sysname == "Linux":
        assert env["SMOLVM_SECCOMP"] == "audit" and env["SMOLVM_LANDLOCK"] == "enforce"
    assert env["PATH"] == "/bin"


def test_parse_recorded_machine_ls_json() -> None:
    machines = smolvm.parse_machine_list(RECORDED_LS_JSON)
    assert machines == [
        smolvm.MachineInfo("cb-demo-abc12", "created", None, {"claude-bottle": "demo-abc12"}),
        smolvm.MachineInfo("other-vm", "created", None, {}),
    ]


def test_parse_running_entry_and_empty_list() -> None:
    running = RECORDED_LS_JSON.replace('"pid": null', '"pid": 4242', 1).replace(
        '"state": "created"', '"state": "running"', 1
    )
    assert smolvm.parse_machine_list(running)[0] == smolvm.MachineInfo(
        "cb-demo-abc12", "running", 4242, {"claude-bottle": "demo-abc12"}
    )
    assert smolvm.parse_machine_list("[]\n") == []
    with pytest.raises(smolvm.SmolvmError):
        smolvm.parse_machine_list("No machines found")


# --- the real smolvm parser accepts every argv ------------------------------------------

REAL = wheel_binary()
needs_real = pytest.mark.skipif(
    REAL is None,
    reason="the smolmachines wheel is not installed (pip install smolmachines): "
    "cannot check argv against the real smolvm parser",
)


@pytest.fixture
def real_smolvm(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The wheel's smolvm with HOME and XDG dirs in tmp_path, so it sees no real machines."""
    assert REAL is not None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    for var in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        env[var] = str(tmp_path / var.lower())
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    return REAL, env


def _parse(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL
    )
    return result


def _assert_parsed(result: subprocess.CompletedProcess[str]) -> None:
    usage_errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 2, result.stderr
    assert not usage_errors and "Usage:" not in result.stderr, result.stderr


def _all_argv(exe: str, tmp: Path) -> dict[str, list[str]]:
    spec = dataclasses.replace(
        SPEC, from_path=str(tmp / "missing.smolmachine"), memory_mib=512, cpus=2, disk_gib=3
    )
    return {
        "pack create": smolvm.pack_create_argv(exe, str(tmp / "missing.tar"), str(tmp / "o" / "x")),
        "machine create": smolvm.machine_create_argv(exe, spec),
        "machine start": smolvm.machine_start_argv(exe, "cb-absent"),
        "machine stop": smolvm.machine_stop_argv(exe, "cb-absent", timeout=5),
        "machine delete": smolvm.machine_delete_argv(exe, "cb-absent"),
        "machine exec": smolvm.machine_exec_argv(
            exe, "cb-absent", ["/bin/sh", "-c", "echo hi"], env={"A": "1"},
            workdir="/work/p", user="1000:1000", timeout=30,
        ),
        "machine exec -it": smolvm.machine_exec_argv(
            exe, "cb-absent", ["claude"], env={"TERM": "xterm"}, interactive=True, tty=True
        ),
        "machine cp": smolvm.machine_cp_argv(exe, str(tmp / "f"), "cb-absent", "/work/p/f"),
        "machine ls": smolvm.machine_ls_argv(exe),
        "machine logs": smolvm.machine_logs_argv(exe, "cb-absent", 3),
    }  # fmt: skip


@needs_real
@pytest.mark.parametrize(
    "which",
    [
        "pack create", "machine create", "machine start", "machine stop", "machine delete",
        "machine exec", "machine exec -it", "machine cp", "machine ls", "machine logs",
    ],
)  # fmt: skip
def test_real_smolvm_parses_our_argv(
    which: str, real_smolvm: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    exe, env = real_smolvm
    (tmp_path / "f").write_text("x")
    result = _parse(_all_argv(exe, tmp_path)[which], env)
    _assert_parsed(result)
    if which == "machine ls":
        assert result.returncode == 0 and smolvm.parse_machine_list(result.stdout) == []
    else:  # it got past the parser and failed on the missing machine or file
        assert result.returncode == 1 and "Error:" in result.stderr, result.stderr


@needs_real
def test_real_smolvm_rejects_a_stale_argv(real_smolvm: tuple[str, dict[str, str]]) -> None:
    """The seeds' `machine delete -f NAME` (positional name, smolvm 0.8) no longer parses."""
    exe, env = real_smolvm
    result = _parse([exe, "machine", "delete", "-f", "cb-absent"], env)
    assert result.returncode == 2
    assert "error: unexpected argument 'cb-absent' found" in result.stderr


@needs_real
def test_real_smolvm_lists_what_it_created(real_smolvm: tuple[str, dict[str, str]]) -> None:
    """`machine create` works without a hypervisor; `ls --json` reads back as we parse it."""
    exe, env = real_smolvm
    spec = smolvm.MachineSpec(name="cb-probe", from_path="", command=("true",))
    argv = smolvm.machine_create_argv(exe, spec)
    argv.remove("--from")
    argv.remove("")
    argv[argv.index("--") : argv.index("--")] = ["--label", "claude-bottle=probe"]
    created = _parse(argv, env)
    assert created.returncode == 0, created.stderr
    listed = _parse(smolvm.machine_ls_argv(exe), env)
    assert smolvm.parse_machine_list(listed.stdout) == [
        smolvm.MachineInfo("cb-probe", "created", None, {"claude-bottle": "probe"})
    ]
    deleted = _parse(smolvm.machine_delete_argv(exe, "cb-probe"), env)
    assert deleted.returncode == 0, deleted.stderr
    assert smolvm.parse_machine_list(_parse(smolvm.machine_ls_argv(exe), env).stdout) == []


@needs_real
def test_real_smolvm_records_the_disk_sizes(real_smolvm: tuple[str, dict[str, str]]) -> None:
    """The flags `disk` maps to are the ones smolvm stores as the VM's disk sizes."""
    exe, env = real_smolvm
    spec = smolvm.MachineSpec(name="cb-disk", from_path="", command=("true",), disk_gib=3)
    argv = smolvm.machine_create_argv(exe, spec)
    argv.remove("--from")
    argv.remove("")
    created = _parse(argv, env)
    assert created.returncode == 0, created.stderr
    (entry,) = json.loads(_parse(smolvm.machine_ls_argv(exe), env).stdout)
    assert (entry["storage_gb"], entry["overlay_gb"]) == (3, 3)
    assert _parse(smolvm.machine_delete_argv(exe, "cb-disk"), env).returncode == 0


@needs_real
def test_real_smolvm_version_is_supported() -> None:
    from claude_bottle.backend.smolmachines.util import MIN_SMOLVM_VERSION, smolvm_version

    assert REAL is not None
    version = smolvm_version(REAL)
    assert version is not None and version >= MIN_SMOLVM_VERSION
