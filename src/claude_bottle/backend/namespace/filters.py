"""The bottle's seccomp filter as bubblewrap takes it: compiled once, then read from a cache.

Compiling costs ~30 ms (libseccomp is found through `ldconfig`, then the rules are
resolved for three architectures) on every bottle's start-up path; the programs depend
only on policy/seccomp.py, the machine and `nested_sandbox`, so they are kept, like the
relay's bytecode, under the cache dir, keyed by the definition's size and mtime.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
from pathlib import Path

from claude_bottle import paths
from claude_bottle.errors import MissingDependency

DEFINITION = Path(__file__).resolve().parents[2] / "policy" / "seccomp.py"
PROGRAM_COUNT = 2  # named and numbered: see compile_bpf


def cached_programs_dir(nested_sandbox: bool) -> Path:
    source = DEFINITION.stat()
    variant = "nested" if nested_sandbox else "default"
    name = f"{platform.machine()}-{variant}-{source.st_size}-{source.st_mtime_ns}"
    return paths.cache_root() / "seccomp" / name


def _programs(nested_sandbox: bool) -> list[bytes]:
    directory = cached_programs_dir(nested_sandbox)
    with contextlib.suppress(OSError):
        programs = [(directory / f"{i}.bpf").read_bytes() for i in range(PROGRAM_COUNT)]
        if all(programs):
            return programs
    from claude_bottle.policy.seccomp import SeccompUnavailable, compile_bpf

    try:
        programs = list(compile_bpf(nested_sandbox))
    except SeccompUnavailable as exc:
        raise MissingDependency(str(exc)) from None
    partial = directory.with_name(f".{directory.name}.{os.getpid()}")
    try:  # a cache that cannot be written only costs the next start-up the compilation
        paths.make_private_dir(partial)
        for index, program in enumerate(programs):
            (partial / f"{index}.bpf").write_bytes(program)
        os.replace(partial, directory)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return programs


def seccomp_program_fds(nested_sandbox: bool) -> list[int]:
    """Readable fds with the compiled filter, for bwrap's `--add-seccomp-fd` (inheritable)."""
    fds = []
    for program in _programs(nested_sandbox):
        fd = os.memfd_create("claude-bottle-seccomp", 0)
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
        fds.append(fd)
    return fds
