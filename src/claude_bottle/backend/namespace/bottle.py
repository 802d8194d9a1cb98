"""A running namespace bottle: process 1 (the relay) inside bubblewrap, the bundle beside it."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from claude_bottle import cgroups
from claude_bottle.backend.base import Bottle, ExecResult
from claude_bottle.backend.relay_exec import RelayExec
from claude_bottle.state import process_alive


class NamespaceBottle(Bottle):
    def __init__(
        self,
        name: str,
        *,
        exec_socket: Path,
        env: Mapping[str, str],
        workspace: str,
        processes: Mapping[str, dict[str, int]],
        cgroup: cgroups.BottleCgroup | None = None,
    ) -> None:
        self.name = name
        self.cgroup = cgroup
        self.processes = dict(processes)
        relay = self.processes.get("bottle")
        self.relay = RelayExec(
            name,
            exec_socket=exec_socket,
            env=env,
            workspace=workspace,
            relay_pid=int(relay["pid"]) if relay else None,
        )

    def alive(self) -> str | None:
        for role, ref in self.processes.items():
            if not process_alive(ref):
                what = "the bundle (its only way out)" if role == "bundle" else "the bottle"
                return f"{what} stopped"
        return None

    def limits_hit(self) -> list[str]:
        return cgroups.hits(self.cgroup) if self.cgroup is not None else []

    def exec_claude(self, argv: Sequence[str], tty: bool) -> int:
        return self.relay.run_attached(argv, tty, on_second_stop=self._stop_on_request)

    def exec(self, script: str, timeout: float | None = None) -> ExecResult:
        return self.relay.exec(script, timeout=timeout)

    def cp_in(self, src: Path, dest: str) -> None:
        self.relay.cp_in(src, dest)

    def start_detached(self, argv: Sequence[str], log: Path) -> None:
        self.relay.start_detached(argv, log)
        self.detached = True

    def kill(self) -> None:
        ref = self.processes.get("bottle")
        if ref and process_alive(ref):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(ref["pid"]), signal.SIGKILL)

    def close(self) -> None:
        """A handle holds no resources; launch's context tears the bottle down."""
