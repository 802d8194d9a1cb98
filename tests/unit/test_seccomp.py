"""The seccomp definition: one list, the same for bubblewrap's BPF and Docker's profile."""

from __future__ import annotations

import errno
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from claude_bottle.policy import seccomp

REQUIRED = (
    "mount",
    "umount2",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "clone3",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
)
NAMESPACE_CALLS = ("mount", "open_tree", "unshare", "setns", "pivot_root")


def test_every_required_call_is_denied_by_default() -> None:
    denied = set(seccomp.denied_syscalls(nested_sandbox=False))
    assert set(REQUIRED) <= denied


def test_nested_sandbox_lifts_only_the_namespace_and_mount_calls() -> None:
    nested = set(seccomp.denied_syscalls(nested_sandbox=True))
    assert not nested & set(NAMESPACE_CALLS)
    assert "clone3" in nested  # its flags stay uninspectable: libc falls back to clone()
    assert {"bpf", "keyctl", "io_uring_setup", "fchmodat2", "userfaultfd"} <= nested


def test_clone_is_denied_for_every_namespace_flag_only() -> None:
    clone = [r for r in seccomp.RULES if r.syscalls == ("clone",)]
    assert {r.arg.value for r in clone if r.arg} == set(seccomp.CLONE_NAMESPACE_FLAGS)
    assert all(r.arg and r.arg.position == 0 and r.arg.mask == r.arg.value for r in clone)


def test_set_id_bits_are_checked_at_the_mode_argument_of_each_call() -> None:
    modes = {
        (r.syscalls[0], r.arg.position, r.arg.value)
        for r in seccomp.RULES
        if r.arg and r.why == "set-id bits"
    }
    for name, position in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2)):
        assert (name, position, 0o4000) in modes
        assert (name, position, 0o2000) in modes


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_bpf_compiles_for_each_architecture(machine: str) -> None:
    named, numbered = seccomp.compile_bpf(nested_sandbox=False, machine=machine)
    assert named and len(named) % 8 == 0 and len(numbered) % 8 == 0  # struct sock_filter
    assert len(seccomp.compile_bpf(nested_sandbox=True, machine=machine)[0]) < len(named)


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(seccomp.UnsupportedArchitecture, match="riscv64"):
        seccomp.compile_bpf(nested_sandbox=False, machine="riscv64")


def test_docker_profile_carries_the_same_rules() -> None:
    profile = seccomp.docker_profile(nested_sandbox=False, machine="x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    entries = profile["syscalls"]
    assert isinstance(entries, list)
    assert len(entries) == len(seccomp.RULES)
    names = {name for entry in entries for name in entry["names"]}
    assert set(REQUIRED) <= names
    chmod = [e for e in entries if e["names"] == ["chmod"]]
    assert {e["args"][0]["valueTwo"] for e in chmod} == {0o4000, 0o2000}
    assert all(e["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" for e in chmod)


LOADER = Path(seccomp.__file__).resolve().parents[1] / "bundle" / "seccomp_exec.py"


def _load_and_run(
    tmp_path: Path, programs: tuple[bytes, ...], *command: str
) -> subprocess.CompletedProcess[str]:
    paths = []
    for index, program in enumerate(programs):
        paths.append(tmp_path / f"seccomp-{index}.bpf")
        paths[-1].write_bytes(program)
    return subprocess.run(
        [sys.executable, "-I", "-S", str(LOADER), *map(str, paths), "--", *command],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe's syscall numbers")
def test_the_loader_runs_the_command_under_the_filter(tmp_path: Path) -> None:
    probe = (
        "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
        "print(libc.syscall(463, -100, b'x', 0, b'security.capability', 0, 0), "
        "ctypes.get_errno(), "
        "libc.syscall(272, 0x10000000), ctypes.get_errno(), "
        "open('/proc/self/status').read().count('NoNewPrivs:\\t1'), "
        "sorted({l.split()[1] for l in open('/proc/self/status') if l.startswith('Cap')}))"
    )
    result = _load_and_run(tmp_path, seccomp.compile_bpf(False), sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    # setxattrat (unknown to Debian 12's libseccomp: the numbered program) and
    # unshare(CLONE_NEWUSER) refused, no-new-privileges set, no capability in any set
    assert result.stdout.split() == [
        *("-1", str(errno.EOPNOTSUPP), "-1", str(errno.EPERM)),
        *("1", "['0000000000000000']"),
    ]


def test_the_loader_runs_nothing_without_a_valid_filter(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = _load_and_run(tmp_path, (b"\x00" * 7,), "touch", str(marker))
    assert result.returncode == 125
    assert "not a BPF program" in result.stderr
    assert not marker.exists()


def test_bubblewrap_gets_the_programs_from_the_cache_after_the_first_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from claude_bottle.backend.namespace import filters

    monkeypatch.setenv("CLAUDE_BOTTLE_CACHE_DIR", str(tmp_path))
    first = filters.seccomp_program_fds(nested_sandbox=False)
    try:
        programs = [os.read(fd, 1 << 20) for fd in first]
    finally:
        for fd in first:
            os.close(fd)
    assert tuple(programs) == seccomp.compile_bpf(nested_sandbox=False)
    cached = filters.cached_programs_dir(nested_sandbox=False)
    assert [p.read_bytes() for p in sorted(cached.iterdir())] == programs
    assert filters.cached_programs_dir(nested_sandbox=True) != cached  # its own variant
