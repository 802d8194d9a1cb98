"""Render the bubblewrap command line for a bottle. Pure: data in, argv out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from claude_bottle.bottle_env import GATEWAY_PORT, SYSTEM_CA_BUNDLE

BOTTLE_RUN = "/run/claude-bottle"  # where the bottle sees its relay, sockets and exec socket


class BwrapSpec(NamedTuple):  # not a dataclass: see bundle/settings.py
    hostname: str
    workspace: str
    home: str  # the path the bottle sees as $HOME
    home_source: str  # host dir backing it (per-bottle, writable)
    bundle_dir: str  # host dir with the bundle's sockets (read-only inside)
    exec_dir: str  # host dir where process 1 creates its exec socket
    relay_bytecode: str  # the relay compiled for `python` (`compiled_relay`)
    python: str
    relay_port: int
    masked: tuple[str, ...]  # host dirs hidden behind an empty tmpfs
    hidden_sockets: tuple[str, ...]  # host unix sockets covered with /dev/null
    toolchain: tuple[str, ...]  # host paths bound read-only at the same path
    read_only: tuple[str, ...]  # user-granted host paths, read-only at the same path
    resolv_conf: str | None  # file to show as /etc/resolv.conf, or None to leave it
    ca_bundle: str | None = None  # host file shown as the system trust store (interception)
    die_with_parent: bool = True
    tmpfs_size: int | None = None  # bytes each tmpfs the bottle can write may hold ([bottle] disk)


def bwrap_argv(spec: BwrapSpec, bwrap: str = "bwrap") -> list[str]:
    argv = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--unshare-net",
        "--as-pid-1",
        "--hostname",
        spec.hostname,
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
    ]
    if spec.die_with_parent:
        argv.insert(1, "--die-with-parent")
    for path in spec.masked:
        argv += ["--tmpfs", path]
    for path in spec.hidden_sockets:
        argv += ["--ro-bind", "/dev/null", path]
    if spec.resolv_conf:
        argv += ["--ro-bind", spec.resolv_conf, "/etc/resolv.conf"]
    if spec.ca_bundle:
        argv += ["--ro-bind", spec.ca_bundle, SYSTEM_CA_BUNDLE]
    # Home first: toolchains under $HOME are bound on top of the bottle's own home.
    argv += ["--bind", spec.home_source, spec.home]
    for path in (*spec.toolchain, *spec.read_only):
        argv += ["--ro-bind", path, path]
    argv += ["--bind", spec.workspace, spec.workspace]
    argv += [
        "--ro-bind",
        spec.bundle_dir,
        f"{BOTTLE_RUN}/bundle",
        "--bind",
        spec.exec_dir,
        f"{BOTTLE_RUN}/exec",
        "--ro-bind",
        spec.relay_bytecode,
        f"{BOTTLE_RUN}/relay.pyc",
        "--chdir",
        spec.workspace,
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",
    ]
    if spec.tmpfs_size is not None:
        argv = _sized_tmpfs(argv, spec.tmpfs_size)
    argv += relay_argv(spec.python, spec.relay_port)
    return argv


def _sized_tmpfs(argv: list[str], size: int) -> list[str]:
    """Every `--tmpfs` preceded by `--size`, so a write past `disk` fails with ENOSPC inside."""
    sized: list[str] = []
    for arg in argv:
        if arg == "--tmpfs":
            sized += ["--size", str(size)]
        sized.append(arg)
    return sized


def relay_argv(python: str, relay_port: int) -> Sequence[str]:
    return [
        "--",
        python,
        "-I",
        "-S",
        f"{BOTTLE_RUN}/relay.pyc",
        "--listen",
        f"{relay_port}={BOTTLE_RUN}/bundle/proxy.sock",
        "--listen",
        f"{GATEWAY_PORT}={BOTTLE_RUN}/bundle/gateway.sock",
        "--exec-socket",
        f"{BOTTLE_RUN}/exec/exec.sock",
        "--hold",
    ]
