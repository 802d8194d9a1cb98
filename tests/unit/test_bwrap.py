"""The bwrap command line is the namespace bottle's whole security boundary: pin it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_bottle.backend.base import LaunchRequest
from claude_bottle.backend.namespace.backend import NamespaceBackend
from claude_bottle.backend.namespace.bwrap import BwrapSpec, bwrap_argv
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
    toolchain=("/home/alice/.nvm/versions/node/v20.1.0",),
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
    plain = plan.bwrap._replace(guard_mounts=())  # records inside records: checked below
    assert {**data["bwrap"], "guard_mounts": []} == json.loads(json.dumps(plain._asdict()))
    assert data["bwrap"]["guard_mounts"] == [m._asdict() for m in plan.bwrap.guard_mounts]
    assert data["bwrap"]["workspace"] == str(tmp_path / "ws")
    assert data["bwrap"]["masked"] == list(plan.bwrap.masked)
    assert data["egress_allow"] == ["api.anthropic.com"]
