"""Helpers of the smolmachines backend: find smolvm, preflight, names, subnets, ports.

Everything here is cheap and side-effect free except `smolvm_version` (runs
`smolvm --version`) and `allocate_loopback_port` (binds a socket for a moment).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import platform as platform_module
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# Oldest smolvm with everything the backend passes: machine names as `--name` flags
# (1.0.1), `--mount-socket` kept by `machine create --from` (1.6.13) and `--label` (1.7.5);
# 1.8.0 is the first release carrying all three. Tested against 1.32.2.
MIN_SMOLVM_VERSION = (1, 8, 0)
TESTED_SMOLVM_VERSION = "1.32.2"

# The smolmachines wheel ships the smolvm CLI as `smol/smol-vmm` (no console script).
WHEEL_PACKAGE = "smol"
WHEEL_BINARY = "smol-vmm"

MACHINE_PREFIX = "cb-"  # every machine this backend creates is named cb-<slug>
LABEL = "claude-bottle"  # --label claude-bottle=<bottle name>: maps a machine back to its bottle
SKIPPED_OCTET = 17  # 192.168.17.0/24 clashes with VPN clients and Docker Desktop setups

NO_KVM = "no /dev/kvm: microVMs cannot boot on this machine"
INSTALL_HINT = "pip install 'claude-bottle[smolmachines]' (or put smolvm on PATH)"

_VERSION_RE = re.compile(r"\bsmolvm\s+v?(\d+)\.(\d+)\.(\d+)")
_SMOLVM_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_]|-(?!-))*(?<!-)$")
_SMOLVM_NAME_MAX = 128


@dataclasses.dataclass(frozen=True)
class SmolvmBinary:
    path: str
    source: str  # "PATH" or "smolmachines wheel"

    @property
    def from_wheel(self) -> bool:
        return self.source != "PATH"


def wheel_binary() -> str | None:
    """The smolvm CLI inside an installed smolmachines wheel, without importing the package."""
    try:
        spec = importlib.util.find_spec(WHEEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / WHEEL_BINARY
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_smolvm(
    which: Callable[[str], str | None] = shutil.which,
    wheel: Callable[[], str | None] = wheel_binary,
) -> SmolvmBinary | None:
    """`smolvm` on PATH wins; otherwise the CLI shipped in the smolmachines wheel."""
    on_path = which("smolvm")
    if on_path:
        return SmolvmBinary(on_path, "PATH")
    bundled = wheel()
    if bundled:
        return SmolvmBinary(bundled, "smolmachines wheel")
    return None


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = _VERSION_RE.search(text)
    if match is None:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def format_version(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


def smolvm_version(binary: str) -> tuple[int, int, int] | None:
    try:
        result = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(result.stdout) or parse_version(result.stderr)


def version_problem(binary: SmolvmBinary, version: tuple[int, int, int] | None) -> str | None:
    needed = format_version(MIN_SMOLVM_VERSION)
    if version is None:
        return (
            f"cannot tell which smolvm {binary.path} is (`--version` gave no version); "
            f"claude-bottle needs smolvm {needed} or newer; fix: pip install -U smolmachines"
        )
    if version < MIN_SMOLVM_VERSION:
        return (
            f"smolvm {format_version(version)} ({binary.path}) is too old: claude-bottle needs "
            f"smolvm {needed} or newer (--mount-socket with --from, --label); "
            "fix: pip install -U smolmachines"
        )
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def cpu_has_virtualisation(cpuinfo: str) -> bool:
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"vmx", "svm"})


@dataclasses.dataclass(frozen=True)
class Host:
    """What the hypervisor checks look at; tests pass their own."""

    platform: str = sys.platform
    machine: str = platform_module.machine()
    euid: int = dataclasses.field(default_factory=lambda: os.geteuid())
    kvm: Path = Path("/dev/kvm")
    cpuinfo: Path = Path("/proc/cpuinfo")
    modules: Path = Path("/sys/module")


def hypervisor_problems(host: Host | None = None) -> list[str]:
    """Why a microVM cannot boot here (empty when it should)."""
    host = host or Host()
    if host.platform == "darwin":
        if host.machine != "arm64":
            return ["smolvm runs on Apple Silicon Macs only (Hypervisor.framework on arm64)"]
        probe = subprocess.run(
            ["sysctl", "-n", "kern.hv_support"], capture_output=True, text=True, check=False
        )
        if probe.stdout.strip() != "1":
            return ["Hypervisor.framework is unavailable (sysctl kern.hv_support is not 1)"]
        return []
    if not host.platform.startswith("linux"):
        return [
            "the smolmachines backend needs Linux with KVM or an Apple Silicon Mac, "
            f"not {host.platform}"
        ]
    if not host.kvm.exists():
        return [
            f"{NO_KVM}; fix: enable VT-x/AMD-V (or nested virtualisation) and load kvm_intel or "
            "kvm_amd, or use --backend namespace"
        ]
    problems = []
    x86 = host.machine in ("x86_64", "AMD64", "i686")
    if x86 and not cpu_has_virtualisation(_read(host.cpuinfo)):
        software = " (it is kvm_pvm, a software KVM)" if (host.modules / "kvm_pvm").exists() else ""
        problems.append(
            f"/dev/kvm exists{software} but this CPU has no hardware virtualisation (no vmx/svm "
            "flag): libkrun guests do not boot here; fix: use a host with VT-x/AMD-V or nested "
            "virtualisation, or --backend namespace"
        )
    if host.euid == 0:
        problems.append(
            "running as root: smolvm drops each VM to its own uid (2000000+), which cannot reach "
            "the bottle's private sockets and mounts; fix: run claude-bottle as a normal user in "
            "the kvm group"
        )
    elif not os.access(host.kvm, os.R_OK | os.W_OK):
        problems.append(
            "cannot open /dev/kvm (permission denied); fix: sudo usermod -aG kvm $USER, "
            "then log in again"
        )
    return problems


def preflight(
    *,
    find: Callable[[], SmolvmBinary | None] = find_smolvm,
    version_of: Callable[[str], tuple[int, int, int] | None] = smolvm_version,
    host: Host | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> list[str]:
    """Every missing piece at once, each with its fix."""
    problems: list[str] = []
    binary = find()
    if binary is None:
        problems.append(f"smolvm is not installed; fix: {INSTALL_HINT}")
    else:
        problem = version_problem(binary, version_of(binary.path))
        if problem:
            problems.append(problem)
    problems += hypervisor_problems(host)
    if which("docker") is None:
        problems.append(
            "docker is not installed: it exports the agent image (docker save) that smolvm packs "
            "into a machine; fix: install Docker Engine or Docker Desktop"
        )
    return problems


def bottle_subnet(slug: str) -> tuple[str, str]:
    """A stable per-bottle /24 (192.168.X.0/24, X in 1..254 but never 17) and its gateway .1."""
    digest = int.from_bytes(hashlib.sha256(slug.encode()).digest()[:8], "big")
    octet = 1 + digest % 253  # 1..253
    if octet >= SKIPPED_OCTET:
        octet += 1  # 1..16, 18..254: uniform, and 17 never appears
    return f"192.168.{octet}.0/24", f"192.168.{octet}.1"


def allocate_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (someone may take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def machine_name(bottle: str) -> str:
    """The smolvm machine of a bottle: cb-<name>, made valid for smolvm when it is not.

    smolvm names allow letters, digits, '_' and single '-' (no '.', no '--', no trailing
    '-'); bottle names allow more, so such names get a readable form plus a short hash.
    """
    plain = MACHINE_PREFIX + bottle
    if _SMOLVM_NAME_RE.fullmatch(plain) and len(plain) <= _SMOLVM_NAME_MAX:
        return plain
    cleaned = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9_-]", "_", bottle)).strip("-")
    tag = hashlib.sha256(bottle.encode()).hexdigest()[:6]
    return f"{MACHINE_PREFIX}{cleaned[:48]}-{tag}".replace("--", "-")
