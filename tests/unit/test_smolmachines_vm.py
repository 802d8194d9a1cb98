"""A real microVM bottle: runs only where a VM can boot, and says exactly why it skips otherwise.

These boot a smolvm machine from the agent image (packing it on first use), so they need
hardware virtualisation (KVM with VT-x/AMD-V, or Hypervisor.framework), smolvm, docker
and the agent image. They check the structural property: inside the VM there is no
network interface but loopback, names do not resolve, and the only way out is the relay
on 127.0.0.1:3128 to the bundle, which refuses what the policy does not allow.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.backend.base import Bottle, LaunchRequest
from claude_bottle.backend.smolmachines import SmolmachinesBackend, util
from claude_bottle.config.model import Config


def vm_skip_reason() -> str | None:
    """The first reason a microVM cannot boot here, without its fix (None when it can)."""
    problems = util.hypervisor_problems()
    if problems:
        return problems[0].split("; fix:")[0]
    missing = util.preflight()
    return missing[0].split("; fix:")[0] if missing else None


REASON = vm_skip_reason()


def test_skip_reason_is_honest_about_this_machine() -> None:
    """Whatever the class below does, its reason must match what this host has."""
    can_boot = util.hypervisor_problems() == [] and util.preflight() == []
    assert (REASON is None) == can_boot
    if not Path("/dev/kvm").exists() and os.uname().sysname == "Linux":
        assert REASON == util.NO_KVM == "no /dev/kvm: microVMs cannot boot on this machine"


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
class TestRealMicroVM:
    @pytest.fixture(scope="class")
    def bottle(self) -> Iterator[Bottle]:
        root = Path(tempfile.mkdtemp(prefix="cbvm-"))
        saved = {
            k: os.environ.get(k) for k in ("CLAUDE_BOTTLE_STATE_DIR", "CLAUDE_BOTTLE_RUNTIME_DIR")
        }
        os.environ["CLAUDE_BOTTLE_STATE_DIR"] = str(root / "state")
        os.environ["CLAUDE_BOTTLE_RUNTIME_DIR"] = str(root / "run")
        workspace = root / "ws"
        workspace.mkdir()
        backend = SmolmachinesBackend()
        request = LaunchRequest(f"vm-{os.getpid()}", workspace, Config(), ("true",))
        try:
            with backend.launch(backend.plan(request)) as bottle:
                yield bottle
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def test_smoke_exec(self, bottle: Bottle) -> None:
        result = bottle.exec("echo hello-from-vm; exit 3")
        assert (result.returncode, result.stdout) == (3, "hello-from-vm\n")

    def test_only_loopback(self, bottle: Bottle) -> None:
        result = bottle.exec("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
        assert result.stdout.split() == ["lo"]

    def test_no_dns(self, bottle: Bottle) -> None:
        assert bottle.exec("getent hosts example.com", timeout=20).returncode != 0

    def test_no_route_out(self, bottle: Bottle) -> None:
        probe = "import socket; socket.create_connection(('1.1.1.1', 443), 5)"
        result = bottle.exec(f'python3 -c "{probe}"', timeout=20)
        assert result.returncode != 0
        assert "unreachable" in result.stderr.lower() or "refused" in result.stderr.lower()

    def test_relay_reaches_the_bundle_which_refuses_unlisted_hosts(self, bottle: Bottle) -> None:
        result = bottle.exec(
            "curl -s -o /dev/null -w '%{http_code}' http://not-allowed.example/", timeout=30
        )
        assert result.stdout == "403"

    def test_cp_in(self, bottle: Bottle, tmp_path: Path) -> None:
        source = tmp_path / "f.txt"
        source.write_text("copied\n")
        bottle.cp_in(source, "/tmp/f.txt")
        assert bottle.exec("cat /tmp/f.txt").stdout == "copied\n"
