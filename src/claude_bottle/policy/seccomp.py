"""The bottle's system-call filter, defined once for every backend.

It is a deny list over a default of "allow", like Flatpak's (`common/flatpak-run.c`,
`setup_seccomp`): an agent runs arbitrary developer tools, and an allow list that
misses one breaks them in ways no one can diagnose. What it denies is the union of
Flatpak's list and the syscalls Docker's default profile (moby `profiles/seccomp/
default.json`) leaves out or grants only with capabilities a bottle never has, plus
what neither covers (docs/isolation.md lists the additions and why).

The same rules become a compiled BPF program for bubblewrap (`--seccomp FD`, built
with libseccomp through `pyseccomp`) and a JSON profile for Docker
(`--security-opt seccomp=...`). Rules name syscalls, never numbers: libseccomp
resolves them for each architecture in `ARCHITECTURES` (a name one of them lacks
is left out of that one's part of the program).
"""

from __future__ import annotations

import errno
import platform
import stat
from typing import Any, NamedTuple

# clone()'s flags are its first argument on every architecture listed below (s390 would
# need index 1); CLONE_NEWTIME (0x80) is not a clone() flag (it overlaps the exit signal).
CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
SET_ID_BITS = (stat.S_ISUID, stat.S_ISGID)
# The terminal ioctls that inject input into (TIOCSTI) or act on (TIOCLINUX) a terminal the
# bottle shares; the values are the asm-generic ones used by x86 and arm.
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
TERMINAL_IOCTL_MASK = 0xFFFFFFFF  # the request is an int: the upper half is not the caller's


class ArgTest(NamedTuple):
    """Matches when ``(argument[position] & mask) == value``."""

    position: int
    mask: int
    value: int


class Rule(NamedTuple):
    syscalls: tuple[str, ...]
    error: int  # the errno the call fails with
    why: str
    arg: ArgTest | None = None
    nested: bool = False  # lifted by `[bottle] nested_sandbox = true`


class Architecture(NamedTuple):
    machine: str  # platform.machine()
    libseccomp: tuple[str, ...]  # pyseccomp.Arch names: the native one first
    docker: tuple[str, ...]  # the same architectures in Docker's profile


ARCHITECTURES = (
    Architecture(
        "x86_64", ("X86_64", "X86", "X32"), ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
    ),
    Architecture("aarch64", ("AARCH64", "ARM"), ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM")),
)

EPERM = errno.EPERM
ENOSYS = errno.ENOSYS  # "not implemented": libc and tools fall back to an older call

RULES: tuple[Rule, ...] = (
    # --- mounts and namespaces (Flatpak; Docker grants them only with CAP_SYS_ADMIN) ---
    Rule(("mount", "umount", "umount2", "pivot_root", "chroot"), EPERM, "mount table", nested=True),
    Rule(
        ("open_tree", "move_mount", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr"),
        ENOSYS,
        "the new mount API",
        nested=True,
    ),
    Rule(("unshare", "setns"), EPERM, "new or other namespaces", nested=True),
    *(
        Rule(("clone",), EPERM, "clone into a new namespace", ArgTest(0, flag, flag), nested=True)
        for flag in CLONE_NAMESPACE_FLAGS
    ),
    # clone3 passes its flags in memory, where a filter cannot look: ENOSYS makes libc use
    # clone(), whose flags are checked above (Flatpak and Docker do the same).
    Rule(("clone3",), ENOSYS, "flags a filter cannot inspect"),
    # --- kernel attack surface no agent needs (Docker's default leaves these out) ---
    Rule(("bpf",), EPERM, "eBPF programs"),
    Rule(("perf_event_open",), EPERM, "performance counters (kernel address leaks)"),
    Rule(("keyctl", "add_key", "request_key"), EPERM, "kernel keyrings (not namespaced)"),
    Rule(("kexec_load", "kexec_file_load", "reboot"), EPERM, "replacing the kernel"),
    Rule(
        ("init_module", "finit_module", "delete_module", "create_module"),
        EPERM,
        "kernel modules",
    ),
    Rule(("get_kernel_syms", "query_module", "uselib", "nfsservctl", "_sysctl"), EPERM, "obsolete"),
    Rule(("userfaultfd",), EPERM, "stalls kernel threads for race exploits"),
    Rule(("io_uring_setup", "io_uring_enter", "io_uring_register"), EPERM, "io_uring"),
    Rule(("open_by_handle_at",), EPERM, "opens files by handle, around path checks"),
    Rule(("syslog",), EPERM, "the kernel log"),
    Rule(("acct", "quotactl", "swapon", "swapoff", "lookup_dcookie"), EPERM, "host administration"),
    Rule(("settimeofday", "clock_settime", "clock_adjtime", "stime"), EPERM, "the host's clock"),
    Rule(("iopl", "ioperm", "vm86", "vm86old", "modify_ldt"), EPERM, "hardware and 16-bit code"),
    Rule(("move_pages", "migrate_pages"), EPERM, "other processes' memory placement"),
    Rule(("fanotify_init",), EPERM, "filesystem-wide monitoring"),
    # --- the terminal ---
    *(
        Rule(("ioctl",), EPERM, "typing into the terminal", ArgTest(1, TERMINAL_IOCTL_MASK, req))
        for req in (TIOCSTI, TIOCLINUX)
    ),
    # --- setuid/setgid files: a file the bottle writes in the workspace belongs to the
    # user outside; with a set-id bit it would run with their identity ---
    *(
        Rule((name,), EPERM, "set-id bits", ArgTest(index, bit, bit))
        for name, index in (
            ("chmod", 1),
            ("fchmod", 1),
            ("fchmodat", 2),
            ("fchmodat2", 2),
            ("creat", 1),
            ("open", 2),
            ("openat", 3),
            ("mknod", 1),
            ("mknodat", 2),
        )
        for bit in SET_ID_BITS
    ),
    # File capabilities: with nested_sandbox a namespace root could write security.capability
    # on a workspace file, and through the idmapped workspace of a bottle started by root its
    # root would be host root. A filter cannot read the name, so extended attributes are
    # refused as a filesystem without them would (cp -a and tar carry on).
    Rule(
        ("setxattr", "lsetxattr", "fsetxattr", "setxattrat"),
        errno.EOPNOTSUPP,
        "file capabilities (security.capability)",
    ),
    # openat2 passes its mode in memory: refuse it, libc's open() uses openat.
    Rule(("openat2",), ENOSYS, "a mode a filter cannot inspect"),
    # --- process 1 (the relay): never traced, whatever the dumpable flag says ---
    Rule(("ptrace",), EPERM, "tracing process 1", ArgTest(1, 0xFFFFFFFF, 1)),
    Rule(
        ("process_vm_writev", "process_vm_readv"),
        EPERM,
        "process 1's memory",
        ArgTest(0, 0xFFFFFFFF, 1),
    ),
)


class SeccompUnavailable(Exception):
    """The filter cannot be built here; the message names what is missing and the fix."""


class UnsupportedArchitecture(SeccompUnavailable):
    pass


def architecture(machine: str | None = None) -> Architecture:
    machine = machine or platform.machine()
    for arch in ARCHITECTURES:
        if arch.machine == machine:
            return arch
    raise UnsupportedArchitecture(
        f"no system-call filter is defined for {machine} "
        f"(defined: {', '.join(a.machine for a in ARCHITECTURES)}); "
        "fix: use a host of a listed architecture"
    )


def active_rules(nested_sandbox: bool) -> tuple[Rule, ...]:
    return tuple(r for r in RULES if not (nested_sandbox and r.nested))


def denied_syscalls(nested_sandbox: bool) -> tuple[str, ...]:
    """Every syscall some rule applies to, sorted (for plan and docs)."""
    return tuple(sorted({name for r in active_rules(nested_sandbox) for name in r.syscalls}))


# System calls newer than some libseccomp that builds the filter (Debian 12 ships 2.5.4),
# by their number in the kernel's unified table, which x86_64 and aarch64 share.
UNIFIED_NUMBERS = {"setxattrat": 463}
UNKNOWN_TO_LIBSECCOMP = -1  # __NR_SCMP_ERROR


def compile_bpf(nested_sandbox: bool, machine: str | None = None) -> tuple[bytes, bytes]:
    """The filter as two classic BPF programs, both to be loaded (bwrap `--add-seccomp-fd`).

    The first names every call libseccomp knows, for each architecture of the machine. The
    second refuses by number the calls this libseccomp does not know (`UNIFIED_NUMBERS`,
    for the native architecture; it lets other architectures' calls through to the first):
    a deny list that silently skipped them would let them in. Often it refuses nothing.
    """
    arch = architecture(machine)
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError):  # RuntimeError: no libseccomp.so found
        raise SeccompUnavailable(
            "libseccomp, which builds the bottle's system-call filter, is not installed; "
            "fix: sudo apt-get install libseccomp2"
        ) from None
    native = getattr(pyseccomp.Arch, arch.libseccomp[0])
    cross = native != pyseccomp.system_arch()  # built for another machine (tests)
    every_arch = [getattr(pyseccomp.Arch, name) for name in arch.libseccomp]

    def known(name: str) -> bool:
        # -1 is "no such name"; a name an architecture lacks (umount on x86_64) resolves to
        # a negative pseudo-number libseccomp leaves out of that architecture's part.
        return bool(pyseccomp.resolve_syscall(native, name) != UNKNOWN_TO_LIBSECCOMP)

    def new_filter() -> Any:
        filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        # A filter starts with this machine's architecture; one built for another swaps it.
        if cross:
            filt.add_arch(native)
            filt.remove_arch(pyseccomp.Arch.NATIVE)
        return filt

    named = new_filter()
    # Secondary architectures (32-bit x86, x32, arm): their calls filtered, not all killed.
    for extra in every_arch[1:]:
        named.add_arch(extra)
    numbered = new_filter()
    numbered.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.ALLOW)
    for rule in active_rules(nested_sandbox):
        args = (
            ()
            if rule.arg is None
            else (
                pyseccomp.Arg(
                    rule.arg.position, pyseccomp.MASKED_EQ, rule.arg.mask, rule.arg.value
                ),
            )
        )
        for name in rule.syscalls:
            if known(name):
                named.add_rule(pyseccomp.ERRNO(rule.error), name, *args)
            elif name in UNIFIED_NUMBERS and cross:
                continue  # libseccomp takes raw numbers for the native architecture only
            elif name in UNIFIED_NUMBERS:
                numbered.add_rule(pyseccomp.ERRNO(rule.error), UNIFIED_NUMBERS[name], *args)
            else:
                raise SeccompUnavailable(
                    f"this libseccomp does not know the system call {name} and no number is "
                    "listed for it; fix: update libseccomp2"
                )
    return _export(named), _export(numbered)


def _export(filt: Any) -> bytes:
    import tempfile

    with tempfile.TemporaryFile() as out:
        filt.export_bpf(out)
        out.seek(0)
        return out.read()


def docker_profile(nested_sandbox: bool, machine: str | None = None) -> dict[str, object]:
    """The same filter as a Docker seccomp profile (`--security-opt seccomp=<file>`).

    Docker replaces its default profile with this one, which denies everything the
    default denies to a container without capabilities (the bottle has none).
    """
    arch = architecture(machine)
    entries: list[dict[str, object]] = []
    for rule in active_rules(nested_sandbox):
        entry: dict[str, object] = {
            "names": list(rule.syscalls),
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": rule.error,
            "comment": rule.why,
        }
        if rule.arg is not None:
            entry["args"] = [
                {
                    "index": rule.arg.position,
                    "value": rule.arg.mask,
                    "valueTwo": rule.arg.value,
                    "op": "SCMP_CMP_MASKED_EQ",
                }
            ]
        entries.append(entry)
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": list(arch.docker),
        "syscalls": entries,
    }
