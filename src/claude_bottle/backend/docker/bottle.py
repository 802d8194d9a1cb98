"""A running docker bottle: the relay is process 1 of the agent container.

Commands enter the bottle through the relay's exec protocol (execproto) on a
unix socket the agent container creates in a host directory bound into it,
exactly as in the namespace backend: stdio file descriptors are passed over
the socket, so TTYs, signals and exit statuses behave the same, and a command
needs no `docker exec` round trip. The exec-protocol handle (`RelayExec`) is
shared by every backend whose bottle speaks it; liveness and the kill switch are
docker's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from claude_bottle import cgroups
from claude_bottle.backend.base import Bottle, ExecResult
from claude_bottle.backend.docker import docker
from claude_bottle.backend.relay_exec import RelayExec
from claude_bottle.state import process_alive


class DockerBottle(Bottle):
    def __init__(
        self,
        name: str,
        *,
        exec_socket: Path,
        env: Mapping[str, str],
        workspace: str,
        processes: Mapping[str, dict[str, int]],
        containers: Mapping[str, str],
    ) -> None:
        self.name = name
        self.processes = dict(processes)
        self.containers = dict(containers)
        relay = self.processes.get("bottle")
        self.relay = RelayExec(
            name,
            exec_socket=exec_socket,
            env=env,
            workspace=workspace,
            relay_pid=int(relay["pid"]) if relay else None,
        )

    def exec_claude(self, argv: Sequence[str], tty: bool) -> int:
        return self.relay.run_attached(argv, tty, on_second_stop=self._stop_on_request)

    def exec(self, script: str, timeout: float | None = None) -> ExecResult:
        return self.relay.exec(script, timeout=timeout)

    def cp_in(self, src: Path, dest: str) -> None:
        self.relay.cp_in(src, dest)

    def start_detached(self, argv: Sequence[str], log: Path) -> None:
        self.relay.start_detached(argv, log)
        self.detached = True

    def close(self) -> None:
        """A handle holds no resources; launch's context tears the bottle down."""

    def alive(self) -> str | None:
        """Cheap when the engine is local: the containers' process 1 are host processes."""
        if self.processes:
            for role, ref in self.processes.items():
                if not process_alive(ref):
                    return self._reason(role)
            return None
        for role, container in self.containers.items():
            info = docker.inspect(container)
            if info is None or not info.get("State", {}).get("Running"):
                return self._reason(role)
        return None

    def _reason(self, role: str) -> str:
        if role == "bottle":
            return "the agent container stopped"
        where = "bundle container" if "bundle" in self.containers else "bundle (host process)"
        return f"the {where} stopped (it was the bottle's only way out)"

    def limits_hit(self) -> list[str]:
        """Read from the agent container's cgroup: its process 1 is a host process."""
        ref = self.processes.get("bottle")
        group = cgroups.of_process(int(ref["pid"])) if ref and process_alive(ref) else None
        return cgroups.hits(group) if group is not None else []

    def kill(self) -> None:
        """Fail closed: the agent container dies at once, and every command with it."""
        ref = self.processes.get("bottle")
        if ref and process_alive(ref):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(ref["pid"]), signal.SIGKILL)
                return
        container = self.containers.get("bottle")
        if container:
            with contextlib.suppress(docker.DockerError):
                docker.kill(container)
