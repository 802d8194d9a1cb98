"""Render the bubblewrap command line for a bottle. Pure: data in, argv out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from claude_bottle.backend.namespace.toolchain import Bind
from claude_bottle.bottle_env import GATEWAY_PORT, GIT_PORT, HOOK_PORT, SYSTEM_CA_BUNDLE
from claude_bottle.workspace_guard import GitMount

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
    toolchain: tuple[Bind, ...]  # host paths bound read-only at the same path
    read_only: tuple[str, ...]  # user-granted host paths, read-only at the same path
    resolv_conf: str | None  # file to show as /etc/resolv.conf, or None to leave it
    ca_bundle: str | None = None  # host file shown as the system trust store (interception)
    die_with_parent: bool = True
    # Started by root: the unprivileged host uid (and gid) the bottle runs as, and the host
    # paths shown to it through idmapped mounts (see unprivileged_exec.py). None otherwise:
    # bubblewrap maps the caller's own uid.
    host_id: int | None = None
    idmapped: tuple[str, ...] = ()
    guard_mounts: tuple[GitMount, ...] = ()  # the bottle's own .git over the workspace's
    tmpfs_size: int | None = None  # bytes each tmpfs the bottle can write may hold ([bottle] disk)


def bwrap_argv(
    spec: BwrapSpec,
    bwrap: str = "bwrap",
    seccomp_fds: Sequence[int] = (),
    lifeline_fd: int | None = None,
) -> list[str]:
    """bubblewrap's argv. Passed on: `seccomp_fds`, readable fds with the compiled filter;
    `lifeline_fd`, a pipe's read end whose end of file stops the bottle (relay.py)."""
    # Started by root, the user namespace is made beforehand (it must not map host uid 0)
    # and given to bwrap by unprivileged_exec.py, which inserts `--userns FD`.
    userns = (
        ["--unshare-user"]
        if spec.host_id is None
        else ["--uid", str(spec.host_id), "--gid", str(spec.host_id)]
    )
    argv = [
        bwrap,
        *userns,
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--unshare-net",
        "--as-pid-1",
        "--new-session",  # no TIOCSTI into a terminal the bottle shares with the host
        "--cap-drop",
        "ALL",
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
    for fd in seccomp_fds:
        argv += ["--add-seccomp-fd", str(fd)]
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
    for path in (*(bind.path for bind in spec.toolchain), *spec.read_only):
        argv += ["--ro-bind", path, path]
    argv += ["--bind", spec.workspace, spec.workspace]
    for mount in spec.guard_mounts:
        argv += ["--ro-bind" if mount.read_only else "--bind", mount.source, mount.target]
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
    if lifeline_fd is not None:
        argv[-1:-1] = ["--lifeline", str(lifeline_fd)]  # before --hold
    return argv


# bubblewrap's options and how many arguments each takes: what `unprivileged_argv` must
# understand to find every bind source. An option missing here is refused, not guessed.
_BIND_OPTIONS = ("--bind", "--ro-bind", "--dev-bind", "--bind-try", "--ro-bind-try")
_OPTION_ARITY = {
    **dict.fromkeys(_BIND_OPTIONS, 2),
    **dict.fromkeys(("--setenv", "--symlink", "--chmod", "--file", "--bind-data"), 2),
    "--ro-bind-data": 2,
    **dict.fromkeys(("--info-fd", "--uid", "--gid", "--cap-drop", "--cap-add", "--hostname"), 1),
    **dict.fromkeys(("--dev", "--proc", "--tmpfs", "--dir", "--remount-ro", "--perms"), 1),
    **dict.fromkeys(("--seccomp", "--add-seccomp-fd", "--chdir", "--unsetenv"), 1),
    **dict.fromkeys(("--size", "--mqueue"), 1),
    **dict.fromkeys(("--die-with-parent", "--as-pid-1", "--new-session", "--clearenv"), 0),
    **dict.fromkeys((f"--unshare-{ns}" for ns in ("pid", "ipc", "uts", "cgroup", "net")), 0),
}
# Where unprivileged_exec.py shows the bind sources to bubblewrap: a tmpfs it mounts over
# /tmp in its own mount namespace (bubblewrap puts its own on the bottle's /tmp). bubblewrap
# resolves sources as the bottle's uid, which could not reach them where they are (root's
# home, the private runtime dir).
STAGE = "/tmp"
_SHARED_SOURCES = ("/", "/dev/null")  # every uid reaches these: bound as they are


def unprivileged_argv(
    spec: BwrapSpec, python: str, helper: str, bwrap: list[str], *, wait_fd: int | None = None
) -> list[str]:
    """`bwrap` as root must start it: through unprivileged_exec.py (`helper`), with every
    bind source staged where the bottle's uid reaches it, idmapped where it must write or
    read root's files; with `wait_fd`, the helper stages nothing before it reads `g` there.
    Unchanged when the bottle runs as the caller's uid."""
    if spec.host_id is None:
        if wait_fd is not None:
            raise ValueError("only root's staging helper waits")
        return bwrap
    helper_argv = [python, "-I", "-S", helper, "--host-id", str(spec.host_id)]
    if wait_fd is not None:
        helper_argv += ["--wait-fd", str(wait_fd)]
    staged: dict[str, str] = {}
    rewritten = [bwrap[0]]
    index = 1
    while index < len(bwrap) and bwrap[index] != "--":
        option = bwrap[index]
        arity = _OPTION_ARITY.get(option)
        if arity is None:
            raise ValueError(f"unprivileged_argv does not know bwrap option {option}")
        args = bwrap[index + 1 : index + 1 + arity]
        if option in _BIND_OPTIONS and args[0] not in _SHARED_SOURCES:
            source = args[0]
            if source not in staged:
                # The source's own path stays in the name: `cleanup` finds the bwrap process
                # of a bottle by the runtime dir in its command line.
                staged[source] = f"{STAGE}/{len(staged)}{source}"
                kind = "idmap" if source in spec.idmapped else "plain"
                helper_argv += ["--stage", f"{kind}:{source}"]
            args = [staged[source], *args[1:]]
        rewritten += [option, *args]
        index += 1 + arity
    return [*helper_argv, "--stage-root", STAGE, "--", *rewritten, *bwrap[index:]]


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
        "--listen",
        f"{GIT_PORT}={BOTTLE_RUN}/bundle/git.sock",
        "--listen",
        f"{HOOK_PORT}={BOTTLE_RUN}/bundle/hook.sock",
        "--exec-socket",
        f"{BOTTLE_RUN}/exec/exec.sock",
        "--hold",
    ]
