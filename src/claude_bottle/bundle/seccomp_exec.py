"""Load a compiled seccomp filter, then execute a command under it.

Usage (inside a bottle; standalone, stdlib only, run as ``python3 -I -S seccomp_exec.py``)::

    seccomp_exec.py PROGRAM [PROGRAM...] -- CMD [ARGS...]

Each PROGRAM is a file holding a classic BPF program as libseccomp exports it (the host
compiles policy/seccomp.py's rules); all are loaded. Where no sandbox tool loads the
filter for us (the smolmachines guest, whose commands its own init starts), this drops
every capability, sets no-new-privileges, installs the filters on itself and executes
CMD, which inherits all three and cannot undo them.

Exit codes of its own: 125 when the filter cannot be read or loaded (the command is then
never run), 126/127 when the command cannot be executed (like a shell).
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_LAST_POSSIBLE = 63
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_INSTRUCTION_SIZE = 8  # struct sock_filter
MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS
EXIT_FILTER = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


class SockFprog(ctypes.Structure):
    _fields_ = (
        ("len", ctypes.c_ushort),
        ("filter", ctypes.c_void_p),
    )


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"claude-bottle: {message}\n")
    return code


def drop_capabilities(libc: ctypes.CDLL) -> str | None:
    """Empty the bounding set (where we may: it needs CAP_SETPCAP) and every capability set,
    so that the command holds none, whoever it runs as."""
    for cap in range(CAP_LAST_POSSIBLE + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last, EPERM unprivileged
    header = CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()  # all zero
    if libc.capset(ctypes.byref(header), data) != 0:
        return f"capset: {os.strerror(ctypes.get_errno())}"
    return None


def load_filters(programs: list[bytes]) -> str | None:
    """Drop capabilities, then install every program on this process; why not, if not."""
    for program in programs:
        count, rest = divmod(len(program), BPF_INSTRUCTION_SIZE)
        if rest or not 0 < count <= MAX_INSTRUCTIONS:
            return f"not a BPF program ({len(program)} bytes)"
    libc = ctypes.CDLL(None, use_errno=True)
    problem = drop_capabilities(libc)
    if problem is not None:
        return problem
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"no-new-privileges: {os.strerror(ctypes.get_errno())}"
    for program in programs:
        buffer = ctypes.create_string_buffer(program, len(program))
        fprog = SockFprog(
            len(program) // BPF_INSTRUCTION_SIZE, ctypes.cast(buffer, ctypes.c_void_p)
        )
        if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
            return f"seccomp: {os.strerror(ctypes.get_errno())}"
    return None


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else 0
    paths, command = argv[:split], argv[split + 1 :]
    if not paths or not command:
        return _fail("usage: seccomp_exec.py PROGRAM [PROGRAM...] -- CMD [ARGS...]", EXIT_FILTER)
    programs = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                programs.append(handle.read(MAX_INSTRUCTIONS * BPF_INSTRUCTION_SIZE + 1))
        except OSError as exc:
            return _fail(f"cannot read the seccomp filter {path}: {exc.strerror}", EXIT_FILTER)
    problem = load_filters(programs)
    if problem is not None:
        return _fail(f"cannot load the seccomp filter: {problem}", EXIT_FILTER)
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        return _fail(f"{command[0]}: command not found", EXIT_NOT_FOUND)
    except OSError as exc:
        return _fail(f"{command[0]}: {exc.strerror}", EXIT_CANNOT_EXECUTE)
    return EXIT_CANNOT_EXECUTE  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
