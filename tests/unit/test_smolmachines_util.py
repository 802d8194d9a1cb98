"""smolmachines helpers: finding smolvm, its version, preflight, names, subnets, ports."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from pathlib import Path

import pytest

from claude_bottle.backend.smolmachines import util
from claude_bottle.backend.smolmachines.util import (
    Host,
    SmolvmBinary,
    bottle_subnet,
    find_smolvm,
    machine_name,
    parse_version,
    preflight,
)

CPU_WITH_VMX = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n"
CPU_WITHOUT = "processor\t: 0\nflags\t\t: fpu vme de pse sse2 hypervisor\n"


# --- subnets -----------------------------------------------------------------------------


def test_subnet_shape_and_gateway() -> None:
    subnet, gateway = bottle_subnet("demo-abc12")
    network = ipaddress.ip_network(subnet)
    assert network.prefixlen == 24 and network.network_address in ipaddress.ip_network(
        "192.168.0.0/16"
    )
    assert ipaddress.ip_address(gateway) == network.network_address + 1


def test_subnet_is_stable_for_a_slug() -> None:
    assert bottle_subnet("demo-abc12") == bottle_subnet("demo-abc12")
    assert bottle_subnet("demo-abc12") == ("192.168.172.0/24", "192.168.172.1")  # pinned


def test_500_slugs_never_land_on_17_and_spread_out() -> None:
    octets = [int(bottle_subnet(f"slug-{i}")[0].split(".")[2]) for i in range(500)]
    assert 17 not in octets
    assert all(1 <= o <= 254 for o in octets)
    assert len(set(octets)) > 150  # hashing spreads 500 slugs over most of 253 values


def test_every_octet_but_17_is_reachable() -> None:
    octets = {int(bottle_subnet(f"b{i}")[0].split(".")[2]) for i in range(20000)}
    assert octets == set(range(1, 255)) - {17}


# --- ports -------------------------------------------------------------------------------


def test_loopback_port_is_free_when_returned() -> None:
    port = util.allocate_loopback_port()
    assert 1024 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# --- machine names -----------------------------------------------------------------------


def test_machine_name_is_prefixed_bottle_name() -> None:
    assert machine_name("demo-abc12") == "cb-demo-abc12"


@pytest.mark.parametrize("bottle", ["a.b", "x--y", "trail-", "under_score.v2", "a" * 63])
def test_machine_name_is_always_valid_for_smolvm(bottle: str) -> None:
    name = machine_name(bottle)
    assert name.startswith(util.MACHINE_PREFIX)
    assert "--" not in name and not name.endswith("-") and "." not in name
    assert len(name) <= 128
    assert name == machine_name(bottle)


def test_sanitised_names_do_not_collide() -> None:
    assert machine_name("a.b") != machine_name("a_b")
    assert machine_name("x--y") != machine_name("x-y")


# --- finding smolvm and its version --------------------------------------------------------


def test_smolvm_on_path_wins_over_the_wheel() -> None:
    found = find_smolvm(which=lambda _n: "/usr/bin/smolvm", wheel=lambda: "/site/smol/smol-vmm")
    assert found == SmolvmBinary("/usr/bin/smolvm", "PATH") and not found.from_wheel


def test_wheel_cli_when_not_on_path() -> None:
    found = find_smolvm(which=lambda _n: None, wheel=lambda: "/site/smol/smol-vmm")
    assert found == SmolvmBinary("/site/smol/smol-vmm", "smolmachines wheel") and found.from_wheel
    assert find_smolvm(which=lambda _n: None, wheel=lambda: None) is None


def test_wheel_binary_is_found_without_importing_the_package(tmp_path: Path) -> None:
    import sys

    package = tmp_path / "smol"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    binary = package / "smol-vmm"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    sys.path.insert(0, str(tmp_path))
    saved = sys.modules.pop("smol", None)
    try:
        assert util.wheel_binary() == str(binary)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("smol", None)
        if saved is not None:
            sys.modules["smol"] = saved


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("smolvm 1.32.2\n", (1, 32, 2)),
        ("note: no packed assets found\nsmolvm 1.8.0", (1, 8, 0)),
        ("smolvm v0.8.0", (0, 8, 0)),
        ("something else", None),
    ],
)
def test_parse_version(text: str, version: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == version


def test_too_old_version_names_the_needed_one() -> None:
    problem = util.version_problem(SmolvmBinary("/x/smolvm", "PATH"), (0, 8, 0))
    assert problem is not None
    assert "smolvm 0.8.0" in problem and "needs smolvm 1.8.0 or newer" in problem
    assert util.version_problem(SmolvmBinary("/x/smolvm", "PATH"), (1, 32, 2)) is None
    unknown = util.version_problem(SmolvmBinary("/x/smolvm", "PATH"), None)
    assert unknown is not None and "1.8.0" in unknown


def test_version_of_a_binary(tmp_path: Path) -> None:
    fake = tmp_path / "smolvm"
    fake.write_text("#!/bin/sh\necho 'smolvm 1.9.3'\n")
    fake.chmod(0o755)
    assert util.smolvm_version(str(fake)) == (1, 9, 3)
    assert util.smolvm_version(str(tmp_path / "absent")) is None


# --- hypervisor and preflight ---------------------------------------------------------------


def _linux(tmp_path: Path, *, kvm: bool, cpu: str, pvm: bool = False, euid: int = 1000) -> Host:
    (tmp_path / "cpuinfo").write_text(cpu)
    modules = tmp_path / "module"
    modules.mkdir(exist_ok=True)
    if pvm:
        (modules / "kvm_pvm").mkdir()
    device = tmp_path / "kvm"
    if kvm:
        device.write_text("")
        device.chmod(0o666)
    return Host(
        platform="linux",
        machine="x86_64",
        euid=euid,
        kvm=device,
        cpuinfo=tmp_path / "cpuinfo",
        modules=modules,
    )


def test_no_kvm_gives_the_exact_reason(tmp_path: Path) -> None:
    problems = util.hypervisor_problems(_linux(tmp_path, kvm=False, cpu=CPU_WITH_VMX))
    assert len(problems) == 1
    assert problems[0].startswith("no /dev/kvm: microVMs cannot boot on this machine")


def test_software_kvm_without_vmx_is_reported(tmp_path: Path) -> None:
    problems = util.hypervisor_problems(_linux(tmp_path, kvm=True, cpu=CPU_WITHOUT, pvm=True))
    assert len(problems) == 1
    assert "kvm_pvm" in problems[0] and "no vmx/svm" in problems[0]


def test_root_is_reported(tmp_path: Path) -> None:
    problems = util.hypervisor_problems(_linux(tmp_path, kvm=True, cpu=CPU_WITH_VMX, euid=0))
    assert len(problems) == 1 and problems[0].startswith("running as root")


def test_hardware_kvm_for_a_user_is_fine(tmp_path: Path) -> None:
    assert util.hypervisor_problems(_linux(tmp_path, kvm=True, cpu=CPU_WITH_VMX)) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can open any device node")
def test_unreadable_kvm_is_reported(tmp_path: Path) -> None:
    host = _linux(tmp_path, kvm=True, cpu=CPU_WITH_VMX)
    host.kvm.chmod(0o600)
    os.chmod(host.kvm, 0)
    problems = util.hypervisor_problems(host)
    assert problems and "permission denied" in problems[0]


def test_other_platforms() -> None:
    assert "not win32" in util.hypervisor_problems(Host(platform="win32"))[0]
    assert "Apple Silicon" in util.hypervisor_problems(Host(platform="darwin", machine="x86_64"))[0]


def test_preflight_lists_every_missing_piece_at_once(tmp_path: Path) -> None:
    problems = preflight(
        find=lambda: None,
        version_of=lambda _p: None,
        host=_linux(tmp_path, kvm=False, cpu=CPU_WITHOUT),
        which=lambda _n: None,
    )
    assert len(problems) == 3
    assert problems[0].startswith("smolvm is not installed")
    assert "claude-bottle[smolmachines]" in problems[0]
    assert problems[1].startswith("no /dev/kvm")
    assert problems[2].startswith("docker is not installed")


def test_preflight_reports_an_old_smolvm(tmp_path: Path) -> None:
    problems = preflight(
        find=lambda: SmolvmBinary("/opt/smolvm", "PATH"),
        version_of=lambda _p: (1, 7, 9),
        host=_linux(tmp_path, kvm=True, cpu=CPU_WITH_VMX),
        which=lambda _n: "/usr/bin/docker",
    )
    assert problems == [util.version_problem(SmolvmBinary("/opt/smolvm", "PATH"), (1, 7, 9))]


def test_preflight_is_empty_when_ready(tmp_path: Path) -> None:
    assert (
        preflight(
            find=lambda: SmolvmBinary("/opt/smolvm", "PATH"),
            version_of=lambda _p: (1, 32, 2),
            host=_linux(tmp_path, kvm=True, cpu=CPU_WITH_VMX),
            which=lambda _n: "/usr/bin/docker",
        )
        == []
    )
