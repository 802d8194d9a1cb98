"""A docker bottle whose bundle is a host process ([docker] bundle = "host").

The bundle is started exactly as for the namespace backend (prestarted by the entry
point, forked, handed its settings), in its own cgroup where the host has one. Its
socket directory is bound read-only into the agent container at the path the relay
reads, so the agent container is the only container: no network, no volume. The
agent container keeps `--network none`, the read-only root, no capabilities,
no-new-privileges, the seccomp profile and the limits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from claude_bottle import cgroups, state
from claude_bottle.backend.docker import docker
from claude_bottle.backend.docker.bottle_plan import DockerBottlePlan, agent_command, agent_run_args
from claude_bottle.bundle.launcher import BundleProcess, spawn_bundle, stop_process
from claude_bottle.bundle.settings import BundleSettings, Pin
from claude_bottle.errors import LaunchError, MissingDependency

READY_TIMEOUT = 30.0


def settings(plan: DockerBottlePlan, runtime: Path, state_dir: Path) -> BundleSettings:
    """The bundle's settings with host paths, as the namespace backend writes them."""
    sockets = runtime / "bundle"
    return BundleSettings(
        bottle=plan.name,
        proxy_socket=str(sockets / "proxy.sock"),
        control_socket=str(runtime / "control" / "control.sock"),
        audit_log=str(state_dir / "audit.jsonl"),
        allow=plan.egress_allow,
        deny=plan.egress_deny,
        mode=plan.egress_mode,
        pins=tuple(Pin(h, a, p) for h, a, p in plan.egress_pins),
        intercept=plan.egress_intercept,
        intercept_exclude=plan.intercept_exclude,
        ca_cert=str(sockets / "ca.pem"),
        ca_bundle=str(sockets / "ca-bundle.pem") if plan.egress_intercept else None,
        upstream_ca_file=plan.upstream_ca_file,
        gateway_socket=str(sockets / "gateway.sock"),
        anthropic_credential=plan.anthropic_credential,
        anthropic_upstream=plan.anthropic_upstream,
        gateway_ca_file=plan.gateway_ca_file,
        max_tokens_total=plan.max_tokens_total,
        gateway_features=plan.gateway_features,
        gateway_dlp_block=plan.gateway_dlp == "block",
        oauth_token_url=plan.oauth_token_url,
        audit_max=plan.audit_max,
        audit_rate=plan.audit_rate,
        dlp_enabled=plan.dlp_enabled,
        dlp_block=plan.dlp_block,
        dlp_patterns=plan.dlp_patterns,
        dlp_ignore=plan.dlp_ignore,
        dlp_ignore_fingerprints=plan.dlp_ignore_fingerprints,
        limits=plan.limits.audit_detail(),
    )


def start_bundle(
    plan: DockerBottlePlan, runtime: Path, state_dir: Path, stack: contextlib.ExitStack
) -> Callable[[], BundleProcess]:
    """Start the host bundle (the prestarted one when there is one); the call that waits
    until it serves. It is stopped (SIGTERM: its audit log ends with `bundle-stop`) and
    its cgroup removed at teardown."""
    (runtime / "bundle").mkdir(mode=0o755)
    settings_file = runtime / "bundle.json"
    settings(plan, runtime, state_dir).dump(settings_file)
    group = plan.bundle_cgroup
    if group is not None:
        stack.callback(cgroups.remove, group)
        try:
            cgroups.create(group)
        except OSError as exc:
            raise LaunchError(
                f"cannot create the bundle's cgroup ({exc.strerror}: {exc.filename})",
                "see `claude-bottle doctor`; cgroup v1 needs root",
            ) from None
    pending = spawn_bundle(settings_file, state_dir / "bundle.log", die_with_parent=not plan.detach)
    stack.callback(stop_process, pending.process)
    if group is not None:
        try:
            cgroups.move(group, pending.process.pid)
        except OSError as exc:
            raise LaunchError(
                f"cannot move the bundle into its cgroup ({exc.strerror}: {exc.filename})",
                "see `claude-bottle doctor`",
            ) from None
    return pending.wait_ready


def run_agent(
    plan: DockerBottlePlan,
    build: Callable[[str], None],
    preflight: Callable[[], list[str]],
) -> None:
    """`docker run -d` of the agent container; a missing image is built and the run tried
    again. The engine is checked (`docker version`) only when the run fails: a check on
    every start would cost a docker client run on a two-core machine."""
    args = agent_run_args(plan.agent)
    command = agent_command(plan.relay_port, plan.gateway_port)
    try:
        try:
            docker.run(args, plan.agent.image, command)
        except docker.DockerError as exc:
            if "no such image" not in exc.stderr.lower():
                raise
            build(plan.agent.image)
            docker.run(args, plan.agent.image, command)
    except docker.DockerError:
        problems = preflight()
        if problems:
            raise MissingDependency("; ".join(problems)) from None
        raise


def wait_for_relay(exec_socket: Path, container: str, died: Callable[[str, str], None]) -> None:
    """Until the relay (the agent container's process 1) serves exec; fail fast if the
    container exited (one `docker inspect` every 0.5 s while waiting)."""
    started = time.monotonic()
    next_check = started + 0.5
    while not exec_socket.exists():
        now = time.monotonic()
        if now >= next_check:
            next_check = now + 0.5
            info = docker.inspect(container)
            if info is None or not info.get("State", {}).get("Running"):
                died("bottle", container)
        if now > started + READY_TIMEOUT:
            raise LaunchError(
                f"the agent container's relay did not start within {READY_TIMEOUT:.0f}s",
                f"see `docker logs {container}`",
            )
        time.sleep(0.002)  # the command waits for this: poll finely, it is a few stats


def bundle_ref(process: BundleProcess) -> dict[str, int]:
    return state.process_ref(process.pid)
