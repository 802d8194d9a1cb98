"""The bwrap command line is the namespace bottle's whole security boundary: pin it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_bottle.backend.base import LaunchRequest
from claude_bottle.backend.namespace.backend import NamespaceBackend
from claude_bottle.backend.namespace.bwrap import BwrapSpec, bwrap_argv, unprivileged_argv
from claude_bottle.backend.namespace.toolchain import Bind
from claude_bottle.config.model import Config

SPEC = BwrapSpec(
    hostname="proj-abcde",
    workspace="/work/proj",
    home="/home/alice",
    home_source="/home/alice/.local/state/claude-bottle/bottles/proj-abcde/home",
    bundle_dir="/run/user/1000/claude-bottle/proj-abcde/bundle",
    exec_dir="/run/user/1000/claude-bottle/proj-abcde/exec",
    relay_bytecode="/home/alice/.cache/claude-bottle/relay/relay-a70d0d0a-41000-1.pyc",
    python="/usr/bin/python3.11",
    relay_port=3128,
    masked=("/home", "/root"),
    hidden_sockets=("/var/lib/app/app.sock",),
    toolchain=(Bind("/home/alice/.nvm/versions/node/v20.1.0", "PATH"),),
    read_only=("/home/alice/src/lib",),
    resolv_conf="/run/user/1000/claude-bottle/proj-abcde/resolv.conf",
)


def test_argv_is_pinned() -> None:
    assert bwrap_argv(SPEC) == [
        "bwrap",
        "--die-with-parent",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--unshare-net",
        "--as-pid-1",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "proj-abcde",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/var/tmp",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/home",
        "--tmpfs",
        "/root",
        "--ro-bind",
        "/dev/null",
        "/var/lib/app/app.sock",
        "--ro-bind",
        "/run/user/1000/claude-bottle/proj-abcde/resolv.conf",
        "/etc/resolv.conf",
        "--bind",
        "/home/alice/.local/state/claude-bottle/bottles/proj-abcde/home",
        "/home/alice",
        "--ro-bind",
        "/home/alice/.nvm/versions/node/v20.1.0",
        "/home/alice/.nvm/versions/node/v20.1.0",
        "--ro-bind",
        "/home/alice/src/lib",
        "/home/alice/src/lib",
        "--bind",
        "/work/proj",
        "/work/proj",
        "--ro-bind",
        "/run/user/1000/claude-bottle/proj-abcde/bundle",
        "/run/claude-bottle/bundle",
        "--bind",
        "/run/user/1000/claude-bottle/proj-abcde/exec",
        "/run/claude-bottle/exec",
        "--ro-bind",
        "/home/alice/.cache/claude-bottle/relay/relay-a70d0d0a-41000-1.pyc",
        "/run/claude-bottle/relay.pyc",
        "--chdir",
        "/work/proj",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",
        "--",
        "/usr/bin/python3.11",
        "-I",
        "-S",
        "/run/claude-bottle/relay.pyc",
        "--listen",
        "3128=/run/claude-bottle/bundle/proxy.sock",
        "--listen",
        "3129=/run/claude-bottle/bundle/gateway.sock",
        "--listen",
        "3130=/run/claude-bottle/bundle/git.sock",
        "--listen",
        "3131=/run/claude-bottle/bundle/hook.sock",
        "--exec-socket",
        "/run/claude-bottle/exec/exec.sock",
        "--hold",
    ]


def test_every_namespace_is_unshared() -> None:
    argv = bwrap_argv(SPEC)
    for flag in (
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--unshare-net",
    ):
        assert flag in argv
    assert "--share-net" not in argv


def test_home_and_toolchains_are_mounted_over_the_masks_in_order() -> None:
    argv = bwrap_argv(SPEC)
    mask = argv.index("/home")
    home = argv.index("/home/alice")
    toolchain = argv.index("/home/alice/.nvm/versions/node/v20.1.0")
    assert mask < home < toolchain


def test_detached_bottle_does_not_die_with_the_cli() -> None:
    argv = bwrap_argv(SPEC._replace(die_with_parent=False))
    assert "--die-with-parent" not in argv


def test_no_resolv_conf_override_when_none() -> None:
    argv = bwrap_argv(SPEC._replace(resolv_conf=None))
    assert "/etc/resolv.conf" not in argv


def test_plan_json_carries_the_spec_by_field_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLAUDE_BOTTLE_RUNTIME_DIR", str(tmp_path / "rt"))
    (tmp_path / "ws").mkdir()
    request = LaunchRequest("proj-abcde", tmp_path / "ws", Config(), ("true",))
    plan = NamespaceBackend().plan(request)
    data = json.loads(plan.to_json())
    expected = json.loads(json.dumps(plan.bwrap._asdict()))
    # Records inside records are objects with named fields too.
    expected["toolchain"] = [bind._asdict() for bind in plan.bwrap.toolchain]
    expected["guard_mounts"] = [mount._asdict() for mount in plan.bwrap.guard_mounts]
    assert data["bwrap"] == expected
    assert data["bwrap"]["workspace"] == str(tmp_path / "ws")
    assert data["bwrap"]["masked"] == list(plan.bwrap.masked)
    assert data["egress_allow"] == ["api.anthropic.com"]


def test_seccomp_and_lifeline_fds_are_passed_on() -> None:
    argv = bwrap_argv(SPEC, seccomp_fds=(6, 7), lifeline_fd=8)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--add-seccomp-fd"] == ["6", "7"]
    relay = argv[argv.index("--") :]
    assert relay[-3:] == ["--lifeline", "8", "--hold"]


ROOT_SPEC = SPEC._replace(
    workspace="/root/proj",
    home="/root",
    home_source="/root/.local/state/claude-bottle/bottles/proj-abcde/home",
    bundle_dir="/tmp/claude-bottle-0/proj-abcde/bundle",
    exec_dir="/tmp/claude-bottle-0/proj-abcde/exec",
    toolchain=(Bind("/root/.nvm/versions/node/v20.1.0", "PATH"),),
    read_only=(),
    resolv_conf="/tmp/claude-bottle-0/proj-abcde/resolv.conf",
    host_id=2_000_000_000,
    idmapped=(
        "/root/proj",
        "/root/.local/state/claude-bottle/bottles/proj-abcde/home",
        "/tmp/claude-bottle-0/proj-abcde/exec",
        "/root/.nvm/versions/node/v20.1.0",
    ),
)


def test_started_by_root_the_bottle_gets_its_own_uid_and_no_fresh_user_namespace() -> None:
    argv = bwrap_argv(ROOT_SPEC)
    assert "--unshare-user" not in argv  # the helper passes a namespace without host uid 0
    assert argv[argv.index("--uid") + 1] == "2000000000"
    assert argv[argv.index("--gid") + 1] == "2000000000"


def test_started_by_root_every_bind_source_is_staged_and_writable_ones_idmapped() -> None:
    bwrap = bwrap_argv(ROOT_SPEC)
    argv = unprivileged_argv(ROOT_SPEC, "/usr/bin/python3", "/x/unprivileged_exec.py", bwrap)
    split = argv.index("--")
    helper, command = argv[:split], argv[split + 1 :]
    assert helper[:6] == [
        "/usr/bin/python3",
        "-I",
        "-S",
        "/x/unprivileged_exec.py",
        "--host-id",
        "2000000000",
    ]
    stages = [helper[i + 1] for i, a in enumerate(helper) if a == "--stage"]
    assert "idmap:/root/proj" in stages
    assert "idmap:/tmp/claude-bottle-0/proj-abcde/exec" in stages
    assert "plain:/tmp/claude-bottle-0/proj-abcde/bundle" in stages  # read-only, world-readable
    # Sources are rewritten to their staged place; destinations, and "/" itself, are not.
    sources = [command[i + 1] for i, a in enumerate(command) if a in ("--bind", "--ro-bind")]
    assert "/" in sources and "/dev/null" in sources
    staged = [s for s in sources if s not in ("/", "/dev/null")]
    assert staged and all(s.startswith("/tmp/") and s[5].isdigit() for s in staged)
    binds = [tuple(command[i : i + 3]) for i, a in enumerate(command) if a == "--bind"]
    assert ("--bind", "/tmp/0/root/proj", "/root/proj") in binds or any(
        src.endswith("/root/proj") and dest == "/root/proj" for _, src, dest in binds
    )
    assert command[command.index("--") :] == bwrap[bwrap.index("--") :]


def test_the_stage_refuses_a_bwrap_option_it_does_not_know() -> None:
    bwrap = bwrap_argv(ROOT_SPEC)
    bwrap.insert(1, "--bind-fd")
    with pytest.raises(ValueError, match="--bind-fd"):
        unprivileged_argv(ROOT_SPEC, "/usr/bin/python3", "/x/h.py", bwrap)


def test_not_started_by_root_the_argv_is_bwrap_itself() -> None:
    bwrap = bwrap_argv(SPEC)
    assert unprivileged_argv(SPEC, "/usr/bin/python3", "/x/h.py", bwrap) is bwrap


def test_a_waiting_helper_is_told_its_fd_and_only_root_has_one() -> None:
    bwrap = bwrap_argv(ROOT_SPEC)
    argv = unprivileged_argv(ROOT_SPEC, "/usr/bin/python3", "/x/h.py", bwrap, wait_fd=9)
    helper = argv[: argv.index("--")]
    assert helper[helper.index("--wait-fd") + 1] == "9"
    with pytest.raises(ValueError, match="waits"):
        unprivileged_argv(SPEC, "/usr/bin/python3", "/x/h.py", bwrap_argv(SPEC), wait_fd=9)
