"""The bundle process: one per bottle, serving the egress proxy, the API gateway and the
control socket.

Started by the CLI as `python -m claude_bottle.bundle.server SETTINGS.json`, or forked
from it (`prestart`). It listens only on unix sockets in the bottle's runtime dir, is
the only writer of the bottle's audit log, and exits on SIGTERM/SIGINT/SIGHUP after
writing a final lifecycle record.

Ready, which the bottle's command waits for, means: the audit log is open and holds
`bundle-start`, the CA certificate the bottle trusts is published, and every socket is
bound and listening. None of that needs asyncio, so this module does it without:
asyncio and `service`, which serves the sockets, load after ready (~60 ms) while the
bottle starts, and connections made meanwhile wait in the sockets' backlogs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, NoReturn

from claude_bottle.bundle.audit import AuditError, AuditLog
from claude_bottle.bundle.audit_limits import AuditBudget
from claude_bottle.bundle.control import Stats
from claude_bottle.bundle.settings import BUNDLE_FILES, BundleSettings

if TYPE_CHECKING:
    from types import FrameType

    from claude_bottle.bundle.ca_pool import PooledCA
    from claude_bottle.bundle.interception import Interception

MAX_HANDOFF = 1 << 20  # settings and log paths, and every injection's secret
PROXY_BACKLOG = 1024  # every process of the bottle may open connections at once
CONTROL_BACKLOG = 100
GATEWAY_BACKLOG = 128
HOOK_BACKLOG = 16  # tool-call hooks: one short connection per hook run
BUNDLE_ADDRESS_SPACE = 2 << 30
"""RLIMIT_AS: a bundle maps ~270 MiB at its peak and holds at most ~100 MiB under
attack (benchmarks/attack_bundle.py); this is the backstop where it has no cgroup."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOPPED = "claude-bottle bundle stopped: "
"""How the bundle's last line in its log starts when it stopped on an error (the CLI
shows the rest when it stops the bottle for it)."""
# What a bundle imports once it serves (inside functions, so that a bundle forked from a
# cold CLI imports them beside the CLI's work rather than before its fork); the warm
# process imports them ahead, for every bundle forked from its runs.
SERVING_MODULES = (
    "claude_bottle.bundle.ca_pool",
    "claude_bottle.bundle.interception",
    "claude_bottle.bundle.tls",
    "concurrent.futures.thread",  # uvloop's default executor
    "cryptography.hazmat.backends.openssl",  # loaded by the first key a CA makes
    "cryptography.hazmat.primitives.serialization.pkcs12",  # the Java trust store
    "ctypes",
    "platformdirs",
    "resource",
    "uvloop",
)


class Opened(NamedTuple):  # not a dataclass: see bundle/settings.py
    """A bundle made ready by `open_bundle`, for `service.Bundle` to serve."""

    settings: BundleSettings
    audit: AuditLog
    interception: Interception | None
    proxy: socket.socket
    control: socket.socket
    gateway: socket.socket | None
    git: socket.socket | None = None  # the git gate, when remotes are configured
    hook: socket.socket | None = None  # tool-call hooks (advisory attribution)
    # The injections' secrets as the CLI handed them; one not here is read from its source.
    injected: dict[str, str] | None = None

    def close(self) -> None:
        for sock in (self.proxy, self.control, self.gateway, self.git, self.hook):
            if sock is not None:
                sock.close()
        self.audit.close()


def open_bundle(settings: BundleSettings, injected: dict[str, str] | None = None) -> Opened:
    """Open the audit log, publish the bottle's CA, bind every socket, and record
    `bundle-start`: all the bottle needs before its command runs."""
    audit = AuditLog(
        Path(settings.audit_log),
        settings.bottle,
        AuditBudget(settings.audit_max, settings.audit_rate),
    )
    bound: list[socket.socket] = []
    try:
        interception = _interception(settings)
        old_umask = os.umask(0o077)
        try:
            proxy = _listen(settings.proxy_socket, PROXY_BACKLOG, bound)
            control = _listen(settings.control_socket, CONTROL_BACKLOG, bound)
            gateway = None
            if settings.gateway_socket:
                gateway = _listen(settings.gateway_socket, GATEWAY_BACKLOG, bound)
            git = None
            if settings.git_socket:
                git = _listen(settings.git_socket, CONTROL_BACKLOG, bound)
            hook = None
            if settings.hook_socket:
                hook = _listen(settings.hook_socket, HOOK_BACKLOG, bound)
        finally:
            os.umask(old_umask)
        # The bottle may run as another uid (docker): its sockets must stay connectable.
        os.chmod(settings.proxy_socket, 0o666)
        for shared in (settings.gateway_socket, settings.git_socket, settings.hook_socket):
            if shared:
                os.chmod(shared, 0o666)
        if settings.git_socket:
            _publish_gate_config(settings)
        audit.submit(
            "lifecycle",
            "info",
            rule="bundle-start",
            detail={
                "pid": os.getpid(),
                "allow": list(settings.allow),
                "mode": settings.mode,
                **({"limits": settings.limits} if settings.limits is not None else {}),
            },
        )
    except BaseException:
        for sock in bound:
            sock.close()
        audit.close()
        raise
    return Opened(settings, audit, interception, proxy, control, gateway, git, hook, injected)


def _publish_gate_config(settings: BundleSettings) -> None:
    """The git gate's URL rewrites beside its socket, where the bottle reads them (read-only)
    as git's system config (`git_identity.py`); written anew on every start."""
    from claude_bottle.git_identity import GateRewrite, render_gate_config

    target = Path(settings.git_socket or "").with_name("gitconfig")
    partial = target.with_name(f".gitconfig.{os.getpid()}")
    rewrites = [GateRewrite(remote.name, remote.url) for remote in settings.git_remotes]
    partial.write_bytes(render_gate_config(rewrites))
    os.chmod(partial, 0o644)
    os.replace(partial, target)


def _listen(path: str, backlog: int, bound: list[socket.socket]) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by an earlier bundle of the same bottle
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.append(sock)
    sock.bind(path)
    sock.listen(backlog)
    return sock


def _interception(settings: BundleSettings) -> Interception | None:
    if not (settings.intercept and settings.ca_cert):
        return None
    import functools

    from claude_bottle.bundle.interception import Authority, Interception, upstream_context
    from claude_bottle.policy.allowlist import Allowlist

    cert_file = Path(settings.ca_cert)
    bundle_file = Path(settings.ca_bundle) if settings.ca_bundle else None
    authority: Authority
    # With tunnelled hosts the Java trust store holds the host's roots too: made here.
    pooled = _claim_pooled(settings) if not settings.intercept_exclude else None
    if pooled is not None:
        from claude_bottle.bundle import ca_pool

        ca_pool.publish(pooled, cert_file, bundle_file)
        authority = ca_pool.LazyAuthority(settings.bottle, pooled)
    else:
        from claude_bottle.bundle.tls import CertificateAuthority

        minted = CertificateAuthority(settings.bottle)
        minted.publish(cert_file, bundle_file, tunnelled_hosts=bool(settings.intercept_exclude))
        authority = minted
    return Interception(
        authority,
        functools.partial(upstream_context, settings.upstream_ca_file),
        Allowlist(settings.intercept_exclude),
    )


def _claim_pooled(settings: BundleSettings) -> PooledCA | None:
    if not settings.ca_pool:
        return None
    from claude_bottle.bundle import ca_pool

    return ca_pool.claim(Path(settings.ca_pool))


def _stop_on_signals(opened: Opened) -> None:
    """Until `service` takes the stop signals over: stop at once, as it would.

    A short command can end before asyncio has loaded; its bottle's teardown should
    not wait for that. The main thread only imports meanwhile and holds none of the
    audit log's locks, so the handler may write.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        code = 0
        try:
            opened.audit.submit(
                "lifecycle", "info", rule="bundle-stop", detail={**Stats().__dict__}
            )
            opened.audit.close()
        except AuditError as exc:
            print(f"{STOPPED}{exc}", file=sys.stderr)
            code = 1
        sys.stderr.flush()
        os._exit(code)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)


def _limit_self() -> None:
    """The bundle's own rlimits: files and address space, whatever it was started with.

    The bundle runs outside its bottle's limits (a bottle that eats its own must leave
    its bundle responsive); where the host offers no cgroup for it (docker's host
    placement, a host without cgroups) these keep a bottle from making it take the
    host's memory or descriptors. Its own bounds (connection slots, held bytes) stay
    well within them."""
    import resource

    for which, wanted in (
        (resource.RLIMIT_NOFILE, BUNDLE_FILES),
        (resource.RLIMIT_AS, BUNDLE_ADDRESS_SPACE),
    ):
        _, hard = resource.getrlimit(which)
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(which, (limit, limit))


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM us when the launching CLI dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


class Handoff(NamedTuple):
    """What the CLI hands a bundle it started: where its settings and log are, and the
    injections' secrets by variable (read once, by the CLI)."""

    settings: Path
    log: Path
    injected: dict[str, str]


def _await_handoff(fd: int) -> Handoff | None:
    """Block until the CLI says where the settings and the log are (one JSON line on
    `fd`); None when it closes the pipe first (the launch was abandoned)."""
    # What getting ready costs most, done while the CLI is still planning the bottle:
    # the allowlist, and cryptography (~45 ms) unless a CA minted ahead waits in the pool.
    # (Only namespace bottles take pooled CAs so far: a docker or microVM bottle's host
    # bundle then loads cryptography after the handoff, while its container or VM boots.)
    import claude_bottle.policy.allowlist
    from claude_bottle.bundle import ca_pool

    if not ca_pool.entries(ca_pool.pool_dir()):
        import claude_bottle.bundle.tls  # noqa: F401

    data = b""
    with os.fdopen(fd, "rb") as pipe:
        while b"\n" not in data and len(data) < MAX_HANDOFF:
            chunk = pipe.read1(MAX_HANDOFF)
            if not chunk:
                break
            data += chunk
    if b"\n" not in data:
        return None
    handoff = json.loads(data)
    injected = {str(env): str(secret) for env, secret in handoff.get("injected", {}).items()}
    return Handoff(Path(handoff["settings"]), Path(handoff["log"]), injected)


def _log_to(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="claude-bottle-bundle")
    parser.add_argument("settings", type=Path, nargs="?")
    parser.add_argument(
        "--handoff-fd", type=int, help="started early: read where settings and log are from it"
    )
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--parent-pid", type=int, help="exit when this process dies")
    args = parser.parse_args(argv)
    if (args.settings is None) == (args.handoff_fd is None):
        parser.error("give a settings file or --handoff-fd, not both")
    serve(
        args.settings or args.handoff_fd,
        ready_fd=args.ready_fd,
        parent_pid=args.parent_pid,
    )


def serve(settings: Path | int, *, ready_fd: int | None, parent_pid: int | None) -> NoReturn:
    """Serve until stopped, then leave the process. `settings` is the settings file, or
    the descriptor a prestarted bundle learns it from (`--handoff-fd`)."""
    _limit_self()
    if parent_pid:
        _die_with_parent()
        if os.getppid() != parent_pid:
            sys.exit(1)  # the parent died before we could watch it
    injected: dict[str, str] = {}
    if isinstance(settings, int):
        handoff = _await_handoff(settings)
        if handoff is None:
            os._exit(0)
        settings, injected = handoff.settings, handoff.injected
        _log_to(handoff.log)
    try:
        opened = open_bundle(BundleSettings.load(settings), injected)
    except AuditError as exc:
        sys.exit(f"{STOPPED}{exc}")
    _stop_on_signals(opened)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    import uvloop

    from claude_bottle.bundle.service import Bundle

    try:
        # libuv's event loop: per proxied request about a fifth less CPU than asyncio's
        # own, and a third less added latency on a new connection (docs/benchmarks.md).
        uvloop.run(Bundle(opened).run())
    except AuditError as exc:
        sys.exit(f"{STOPPED}{exc}")
    # Everything is closed and the audit log is fsync'd; tearing the interpreter down
    # (freeing every module) would add a tenth of a second to each bottle's teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
