"""A running smolmachines bottle: a microVM whose workload is the relay, the bundle beside it.

Commands run through `smolvm machine exec`, which joins the relay's container: same
loopback, same mounts. The host cannot use the exec protocol of the other backends here:
it hands the command its stdio as file descriptors (SCM_RIGHTS), and descriptors do not
cross vsock, the only channel between host and guest.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from claude_bottle import state
from claude_bottle.backend.base import Bottle, ExecResult
from claude_bottle.backend.smolmachines import smolvm
from claude_bottle.backend.smolmachines.bottle_plan import GUEST_SECCOMP
from claude_bottle.errors import BottleError

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def process_alive(ref: Mapping[str, Any] | None) -> bool:
    """`state.process_alive`, or a plain existence check where there is no /proc (macOS)."""
    if not ref:
        return False
    if Path("/proc/self").exists():
        return state.process_alive(dict(ref))
    try:
        os.kill(int(ref["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SmolmachinesBottle(Bottle):
    def __init__(
        self,
        name: str,
        *,
        machine: str,
        smolvm_path: str,
        env: Mapping[str, str],
        workspace: str,
        processes: Mapping[str, dict[str, int]],
        user: str | None = None,
        filter_stderr: bool = False,
    ) -> None:
        self.name = name
        self.machine = machine
        self.smolvm_path = smolvm_path
        self.env = dict(env)
        self.workspace = workspace
        self.processes = dict(processes)
        self.user = user
        self.filter_stderr = filter_stderr  # the wheel's smol-vmm prints a note on every call

    def _exec_argv(self, argv: Sequence[str], *, interactive: bool, tty: bool) -> list[str]:
        """smolvm's argv for an agent command: in the guest, under the bottle's filter."""
        return smolvm.machine_exec_argv(
            self.smolvm_path,
            self.machine,
            [*GUEST_SECCOMP, *argv],
            env=self.env,
            workdir=self.workspace,
            user=self.user,
            interactive=interactive,
            tty=tty,
        )

    def alive(self) -> str | None:
        for role, ref in self.processes.items():
            if not process_alive(ref):
                what = "the bundle (its only way out)" if role == "bundle" else "the microVM"
                return f"{what} stopped"
        return None

    def exec_claude(self, argv: Sequence[str], tty: bool) -> int:
        command = self._exec_argv(argv, interactive=True, tty=tty)
        # With a tty smolvm must stay in the terminal's foreground group to read it; Ctrl-C
        # then reaches the command as a byte. Without one, signals are forwarded by hand.
        process = subprocess.Popen(
            command,
            env=smolvm.smolvm_env(),
            stderr=subprocess.PIPE if self.filter_stderr else None,
            start_new_session=not tty,
        )
        pump = _start_stderr_pump(process.stderr) if process.stderr is not None else None
        forwarded = [s for s in FORWARDED if not (tty and s == signal.SIGINT)]
        with _forward_signals(process.send_signal, forwarded):
            status = process.wait()
        if pump is not None:
            pump.join(5)
        return 128 - status if status < 0 else status

    def exec(self, script: str, timeout: float | None = None) -> ExecResult:
        limit = None if timeout is None else max(1, math.ceil(timeout))
        try:
            result = smolvm.machine_exec(
                self.smolvm_path,
                self.machine,
                ["/bin/sh", "-c", script],
                env=self.env,
                workdir=self.workspace,
                user=self.user,
                timeout=limit,
            )
        except smolvm.SmolvmError as exc:
            raise BottleError(f"command in bottle {self.name} failed: {exc.message}") from exc
        return ExecResult(result.returncode, result.stdout, result.stderr)

    def cp_in(self, src: Path, dest: str) -> None:
        try:
            smolvm.machine_cp(self.smolvm_path, src, self.machine, dest)
        except smolvm.SmolvmError as exc:
            raise BottleError(
                f"cannot copy {src} to {dest} in bottle {self.name}: {exc.stderr.strip()}"
            ) from exc

    def start_detached(self, argv: Sequence[str], log: Path) -> None:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            subprocess.Popen(
                self._exec_argv(argv, interactive=False, tty=False),
                env=smolvm.smolvm_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        finally:
            os.close(out)
        self.detached = True

    def kill(self) -> None:
        with contextlib.suppress(smolvm.SmolvmError):
            smolvm.machine_stop(self.smolvm_path, self.machine, timeout=0)

    def close(self) -> None:
        """A handle holds no resources; launch's context tears the bottle down."""


def _start_stderr_pump(stream: IO[bytes]) -> threading.Thread:
    """Copy smolvm's stderr to ours, minus the wheel binary's note."""

    def pump() -> None:
        out = sys.stderr.buffer
        for line in iter(stream.readline, b""):
            if not line.startswith(smolvm.WHEEL_NOTE.encode()):
                out.write(line)
                out.flush()
        stream.close()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


class _forward_signals:
    """While active, these signals go to the smolvm client (and through it to the command)."""

    def __init__(self, forward: Callable[[int], object], signals: Sequence[signal.Signals]) -> None:
        self._forward = forward
        self._signals = signals
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, lambda n, _f: self._forward(n))

    def __exit__(self, *_: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
