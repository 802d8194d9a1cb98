"""Thin wrapper over the smolvm CLI: one argv builder and one runner per subcommand used.

The builders are pure (tests pin their output and feed it to the real CLI's parser);
the runners execute them. `machine_exec` returns the command's result whatever its
status; every other runner raises `SmolvmError` (with the return code and stderr)
when smolvm fails. smolvm names machines with `--name` everywhere (`exec` knows
only the long form), and `machine cp` takes `NAME:PATH` positionals.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from claude_bottle.errors import BottleError

# Printed by the wheel's `smol-vmm` on every call (its file name is not `smolvm`).
WHEEL_NOTE = "note: no packed assets found for "


class SmolvmError(BottleError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        words = [a for a in argv[1:3] if not a.startswith("-")]
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(
            f"smolvm {' '.join(words)} failed (exit {returncode}): {detail}",
            "see `claude-bottle doctor`; smolvm's own log: smolvm machine logs --name <machine>",
        )


@dataclasses.dataclass(frozen=True)
class SmolvmResult:
    returncode: int
    stdout: str
    stderr: str


@dataclasses.dataclass(frozen=True)
class MachineSpec:
    """What `machine create` gets: a machine from a packed image, no network device."""

    name: str
    from_path: str  # the .smolmachine sidecar written by `pack create`
    command: tuple[str, ...]  # the persistent workload (the relay)
    mount_sockets: tuple[tuple[str, str], ...] = ()  # (host unix socket, guest path)
    volumes: tuple[tuple[str, str, bool], ...] = ()  # (host dir, guest dir, read-only)
    labels: tuple[tuple[str, str], ...] = ()
    user: str | None = None  # uid[:gid] the workload runs as
    stop_on_exit: bool = True  # the relay ending stops the machine: fail closed
    memory_mib: int | None = None  # the VM's memory ([bottle] memory)
    cpus: int | None = None  # its vCPUs ([bottle] cpus, rounded up)
    disk_gib: int | None = None  # its storage and overlay disks ([bottle] disk, rounded up)


@dataclasses.dataclass(frozen=True)
class MachineInfo:
    """One entry of `machine ls --json`."""

    name: str
    state: str  # created | running | stopped | ...
    pid: int | None
    labels: dict[str, str]


def clean_stderr(text: str) -> str:
    return "".join(
        line for line in text.splitlines(keepends=True) if not line.startswith(WHEEL_NOTE)
    )


def smolvm_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """smolvm's environment: the caller's, plus VMM confinement on Linux unless set.

    `smol-vmm _boot-vm` treats unset SMOLVM_SECCOMP/SMOLVM_LANDLOCK as off; smolvm's
    server and its Python SDK default both to enforce, and so do we.
    """
    env = dict(os.environ if base is None else base)
    if sys.platform.startswith("linux"):
        env.setdefault("SMOLVM_SECCOMP", "enforce")
        env.setdefault("SMOLVM_LANDLOCK", "enforce")
    return env


# --- argv builders (pure) ------------------------------------------------------------


def pack_create_argv(smolvm: str, image: str, output: str) -> list[str]:
    """`image` is a `docker save` archive; smolvm writes `output` and `output.smolmachine`."""
    return [smolvm, "pack", "create", "--image", image, "--output", output]


def machine_create_argv(smolvm: str, spec: MachineSpec) -> list[str]:
    argv = [smolvm, "machine", "create", "--name", spec.name, "--from", spec.from_path]
    for key, value in spec.labels:
        argv += ["--label", f"{key}={value}"]
    for host, guest in spec.mount_sockets:
        argv += ["--mount-socket", f"{host}:{guest}"]
    for host, guest, read_only in spec.volumes:
        argv += ["--volume", f"{host}:{guest}" + (":ro" if read_only else "")]
    if spec.user:
        argv += ["--user", spec.user]
    if spec.stop_on_exit:
        argv.append("--stop-on-exit")
    if spec.memory_mib is not None:
        argv += ["--mem", str(spec.memory_mib)]
    if spec.cpus is not None:
        argv += ["--cpus", str(spec.cpus)]
    if spec.disk_gib is not None:
        # The guest's writable disks: --storage holds the container's layers and writes,
        # --overlay the VM rootfs's changes. smolvm takes whole GiB.
        argv += ["--storage", str(spec.disk_gib), "--overlay", str(spec.disk_gib)]
    # No --net and none of the flags that imply it: the machine gets no network device.
    return [*argv, "--", *spec.command]


def machine_start_argv(smolvm: str, name: str) -> list[str]:
    return [smolvm, "machine", "start", "--name", name]


def machine_stop_argv(smolvm: str, name: str, timeout: int | None = None) -> list[str]:
    argv = [smolvm, "machine", "stop", "--name", name]
    if timeout is not None:
        argv += ["--timeout", str(timeout)]
    return argv


def machine_delete_argv(smolvm: str, name: str) -> list[str]:
    return [smolvm, "machine", "delete", "--name", name, "--force"]


def machine_exec_argv(
    smolvm: str,
    name: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
    interactive: bool = False,
    tty: bool = False,
    timeout: int | None = None,
) -> list[str]:
    argv = [smolvm, "machine", "exec", "--name", name]
    for key, value in (env or {}).items():
        argv += ["--env", f"{key}={value}"]
    if workdir:
        argv += ["--workdir", workdir]
    if user:
        argv += ["--user", user]
    if interactive:
        argv.append("--interactive")
    if tty:
        argv.append("--tty")
    if timeout is not None:
        argv += ["--timeout", f"{timeout}s"]
    return [*argv, "--", *command]


def machine_cp_argv(smolvm: str, src: str, name: str, dest: str) -> list[str]:
    return [smolvm, "machine", "cp", src, f"{name}:{dest}"]


def machine_ls_argv(smolvm: str) -> list[str]:
    return [smolvm, "machine", "ls", "--json"]


def machine_logs_argv(smolvm: str, name: str, tail: int) -> list[str]:
    return [smolvm, "machine", "logs", "--name", name, "--tail", str(tail)]


# --- runners -------------------------------------------------------------------------


def _run(argv: Sequence[str], *, timeout: float | None = None, check: bool = True) -> SmolvmResult:
    try:
        completed = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
            env=smolvm_env(),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise SmolvmError(argv, 127, f"{argv[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise SmolvmError(argv, 124, f"timed out after {timeout}s") from exc
    result = SmolvmResult(completed.returncode, completed.stdout, clean_stderr(completed.stderr))
    if check and result.returncode != 0:
        raise SmolvmError(argv, result.returncode, result.stderr)
    return result


def pack_create(smolvm: str, image: Path, output: Path) -> SmolvmResult:
    return _run(pack_create_argv(smolvm, str(image), str(output)))


def machine_create(smolvm: str, spec: MachineSpec) -> SmolvmResult:
    return _run(machine_create_argv(smolvm, spec), timeout=600)


def machine_start(smolvm: str, name: str) -> SmolvmResult:
    return _run(machine_start_argv(smolvm, name), timeout=300)


def machine_stop(smolvm: str, name: str, timeout: int | None = None) -> SmolvmResult:
    return _run(machine_stop_argv(smolvm, name, timeout), timeout=120)


def machine_delete(smolvm: str, name: str) -> SmolvmResult:
    return _run(machine_delete_argv(smolvm, name), timeout=120)


def machine_exec(
    smolvm: str,
    name: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
    timeout: int | None = None,
) -> SmolvmResult:
    """Run a command in the machine and capture it; its status is returned, never raised."""
    argv = machine_exec_argv(
        smolvm, name, command, env=env, workdir=workdir, user=user, timeout=timeout
    )
    return _run(argv, timeout=None if timeout is None else timeout + 30, check=False)


def machine_cp(smolvm: str, src: Path, name: str, dest: str) -> SmolvmResult:
    return _run(machine_cp_argv(smolvm, str(src), name, dest), timeout=600)


def machine_ls(smolvm: str) -> list[MachineInfo]:
    return parse_machine_list(_run(machine_ls_argv(smolvm), timeout=60).stdout)


def machine_logs(smolvm: str, name: str, tail: int = 20) -> str:
    result = _run(machine_logs_argv(smolvm, name, tail), timeout=30, check=False)
    return result.stdout if result.returncode == 0 else ""


def parse_machine_list(stdout: str) -> list[MachineInfo]:
    """Parse `machine ls --json`: a JSON array of machine objects (see the recorded sample)."""
    try:
        data: Any = json.loads(stdout or "[]")
    except ValueError as exc:
        raise SmolvmError(["smolvm", "machine", "ls"], 0, f"unreadable JSON: {exc}") from exc
    if not isinstance(data, list):
        raise SmolvmError(["smolvm", "machine", "ls"], 0, "expected a JSON array")
    machines = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        pid = item.get("pid")
        labels = item.get("labels") or {}
        machines.append(
            MachineInfo(
                name=item["name"],
                state=str(item.get("state", "unknown")),
                pid=pid if isinstance(pid, int) and pid > 0 else None,
                labels={str(k): str(v) for k, v in labels.items()}
                if isinstance(labels, dict)
                else {},
            )
        )
    return machines
