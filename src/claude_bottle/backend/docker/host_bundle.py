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
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from claude_bottle import cgroups, state
from claude_bottle.backend.base import BundlePlaces
from claude_bottle.backend.docker import docker
from claude_bottle.backend.docker.bottle_plan import DockerBottlePlan, agent_command, agent_run_args
from claude_bottle.background import Background
from claude_bottle.bundle.launcher import BundleProcess, spawn_bundle, stop_process
from claude_bottle.bundle.settings import BundleSettings
from claude_bottle.errors import LaunchError, MissingDependency

READY_TIMEOUT = 30.0
AGENT_EXIT_TIMEOUT = 20.0
RM_RETRY = 1.0  # between removals of an agent container its client may still be creating


def settings(plan: DockerBottlePlan, runtime: Path, state_dir: Path) -> BundleSettings:
    """The bundle's settings with host paths, as the namespace backend writes them."""
    sockets = runtime / "bundle"
    return plan.bundle_settings(
        BundlePlaces(
            proxy_socket=str(sockets / "proxy.sock"),
            control_socket=str(runtime / "control" / "control.sock"),
            gateway_socket=str(sockets / "gateway.sock"),
            audit_log=str(state_dir / "audit.jsonl"),
            ca_cert=str(sockets / "ca.pem"),
            ca_bundle=str(sockets / "ca-bundle.pem") if plan.egress_intercept else None,
            upstream_ca_file=plan.upstream_ca_file,
            gateway_ca_file=plan.gateway_ca_file,
            anthropic_credential=plan.anthropic_credential,
            git_socket=str(sockets / "git.sock") if plan.git_remotes else None,
            hook_socket=str(sockets / "hook.sock"),
        )
    )


class HostBundleLaunch:
    """One launch's host bundle and agent container, and their teardown (side by side:
    the agent container killed and removed, the bundle stopped so its audit log ends
    with `bundle-stop`, then its cgroup removed)."""

    def __init__(self, plan: DockerBottlePlan, runtime: Path, state_dir: Path) -> None:
        self.plan = plan
        self.runtime = runtime
        self.state_dir = state_dir
        self.bundle: BundleProcess | None = None
        self.cgroup_made = False
        self.joining: Background | None = None  # the bundle's move into its cgroup
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_log = state_dir / "agent-container.log"
        self.relay: dict[str, int] | None = None  # the agent container's process 1

    def start_bundle(self) -> Callable[[], BundleProcess]:
        """Start the host bundle (the prestarted one when there is one); the call that
        waits until it serves."""
        plan, runtime = self.plan, self.runtime
        settings_file = runtime / "bundle.json"
        settings(plan, runtime, self.state_dir).dump(settings_file)
        group = plan.bundle_cgroup
        if group is not None:
            self.cgroup_made = True
            try:
                cgroups.create(group)
            except OSError as exc:
                raise LaunchError(
                    f"cannot create the bundle's cgroup ({exc.strerror}: {exc.filename})",
                    "see `claude-bottle doctor`; cgroup v1 needs root",
                ) from None
        log = self.state_dir / "bundle.log"
        pending = spawn_bundle(
            settings_file, log, die_with_parent=not plan.detach, injections=plan.injections
        )
        self.bundle = pending.process
        if group is None:
            return pending.wait_ready
        pid = pending.process.pid

        def move() -> None:
            try:
                cgroups.move(group, pid)
            except OSError as exc:
                raise LaunchError(
                    f"cannot move the bundle into its cgroup ({exc.strerror}: {exc.filename})",
                    "see `claude-bottle doctor`",
                ) from None

        # A cgroup v1 move waits for the kernel (~8 ms: an RCU grace period): meanwhile
        # the agent container starts. Joined before the bundle serves the bottle anything.
        self.joining = Background(move)
        joining = self.joining

        def ready() -> BundleProcess:
            joining.join()
            return pending.wait_ready()

        return ready

    def run_agent(self) -> None:
        """`docker run --rm` of the agent container, attached, as a plain `docker run` is:
        one client for create, start and remove. It ends when the relay (process 1) does.
        Started before the bundle is handed its settings: the engine's part is the longest,
        and the relay connects to the bundle's sockets only per connection."""
        (self.runtime / "bundle").mkdir(mode=0o755, exist_ok=True)  # bound: must exist
        args = agent_run_args(self.plan.agent)
        command = agent_command(self.plan.relay_port, self.plan.gateway_port)
        with self.agent_log.open("ab") as log:
            self.agent = docker.run_process(args, self.plan.agent.image, command, log)

    def rerun_agent(self) -> None:
        """Remove the agent container (its client ends once the engine has removed it,
        which frees its name) and run it again."""
        self._remove_agent()
        self.relay = None
        # Killed, the relay left its socket: `wait_for_relay` must wait for the new one.
        (self.runtime / "exec" / "exec.sock").unlink(missing_ok=True)
        self.run_agent()

    def wait_for_relay(
        self, build: Callable[[str], None], preflight: Callable[[], list[str]]
    ) -> None:
        """Until the relay serves exec. A missing image is built and the container run
        again; an engine problem is named by preflight (`docker version`), which is run
        only then: a check on every start would cost a docker client run."""
        exec_socket = self.runtime / "exec" / "exec.sock"
        deadline = time.monotonic() + READY_TIMEOUT
        rebuilt = False
        while not exec_socket.exists():
            assert self.agent is not None
            if self.agent.poll() is not None:
                said = _tail(self.agent_log)
                if not rebuilt and _missing_image(said):
                    rebuilt = True
                    build(self.plan.agent.image)
                    self.run_agent()
                    deadline = time.monotonic() + READY_TIMEOUT
                    continue
                problems = preflight()
                if problems:
                    raise MissingDependency("; ".join(problems))
                raise LaunchError(
                    f"the agent container exited while starting: {said or 'no output'}",
                    f"see {self.agent_log}",
                )
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"the agent container's relay did not start within {READY_TIMEOUT:.0f}s",
                    f"see {self.agent_log}",
                )
            time.sleep(0.002)  # the command waits for this: poll finely, it is a few stats

    def remove(self) -> None:
        from claude_bottle.backend.docker.launch import parallel

        parallel(self._remove_agent, self._stop_bundle)

    def _remove_agent(self) -> None:
        agent, self.agent = self.agent, None
        if agent is None:
            return
        container = self.plan.agent.container
        if self.relay is not None and state.signal_process(self.relay, signal.SIGKILL):
            # the engine removes it (--rm), then the client ends
            state.wait_child(agent, AGENT_EXIT_TIMEOUT)
        if agent.poll() is None or self.relay is None:
            # Its client may still be creating it (a start that failed early): a removal
            # that comes first finds nothing, and the container starts after it. So again,
            # every RM_RETRY, until the client has ended (once the engine removed it).
            deadline = time.monotonic() + AGENT_EXIT_TIMEOUT
            while True:
                with contextlib.suppress(docker.DockerError):
                    docker.rm([container])
                if state.wait_child(agent, RM_RETRY) or time.monotonic() > deadline:
                    break
        if agent.poll() is None:
            agent.kill()
            agent.wait()
            with contextlib.suppress(docker.DockerError):
                docker.rm([container])  # one the client asked for before it was killed

    def _stop_bundle(self) -> None:
        if self.joining is not None:
            self.joining.join(quietly=True)  # a move still under way, before the stop
        if self.bundle is not None:
            stop_process(self.bundle)
        if self.cgroup_made and self.plan.bundle_cgroup is not None:
            cgroups.remove(self.plan.bundle_cgroup)


def _missing_image(said: str) -> bool:
    text = said.lower()
    return "no such image" in text or "unable to find image" in text


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-3:])
