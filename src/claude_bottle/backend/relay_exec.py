"""Commands in a bottle through its relay's exec protocol (`execproto`), for any backend
whose host can pass file descriptors to the bottle's process 1 over a unix socket.

A backend's bottle holds one `RelayExec` (composition, not a shared base class): the
exec socket, the environment and the working directory commands get, and the relay's
host pid, the only peer the socket may have. Liveness and the kill switch stay the
backend's own.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from claude_bottle.backend.base import ExecResult
from claude_bottle.errors import BottleError
from claude_bottle.execproto import ExecSession
from claude_bottle.terminal import run_in_pty, run_with_pipes

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RelayExec:
    def __init__(
        self,
        name: str,
        *,
        exec_socket: Path,
        env: Mapping[str, str],
        workspace: str,
        relay_pid: int | None,
    ) -> None:
        self.name = name
        self.exec_socket = exec_socket
        self.env = dict(env)
        self.workspace = workspace
        self.relay_pid = relay_pid  # as this host sees it; None: not visible here

    def _session(self, argv: Sequence[str], fds: tuple[int, int, int], tty: bool) -> ExecSession:
        return ExecSession(
            self.exec_socket, argv, self.env, self.workspace, fds, tty, relay_pid=self.relay_pid
        )

    def run_attached(
        self, argv: Sequence[str], tty: bool, on_second_stop: Callable[[], object]
    ) -> int:
        """Run the agent attached to this terminal; its exit status, or 128 + the signal
        when the user's second stop request called `on_second_stop` (kill the bottle)."""
        # Forwarding starts before the command does: a signal that arrives while it is being
        # started (the command may already run and print) waits for it, not kills the CLI.
        deferred = _DeferredSignals(on_second_stop=on_second_stop)
        with _forward_signals(deferred, tty=tty):
            try:
                status = self._attach(argv, tty, deferred)
            except BottleError:
                if deferred.stopped_by is None:
                    raise
                status = 0
        if deferred.stopped_by is not None:  # killed on the user's second request
            return 128 + deferred.stopped_by
        return status

    def _attach(self, argv: Sequence[str], tty: bool, deferred: _DeferredSignals) -> int:
        if tty:

            def start(slave: int) -> ExecSession:
                return deferred.started(self._session(argv, (slave, slave, slave), True))

            return run_in_pty(start, lambda s: s.fileno(), lambda s: s.wait())

        # Never the user's own fds: stdout or stderr may be their terminal.
        def start_piped(fds: tuple[int, int, int]) -> ExecSession:
            return deferred.started(self._session(argv, fds, False))

        return run_with_pipes(start_piped, lambda s: s.fileno(), lambda s: s.wait())

    def exec(self, script: str, timeout: float | None = None) -> ExecResult:
        return self.exec_argv(["/bin/sh", "-c", script], timeout=timeout)

    def exec_argv(
        self, argv: Sequence[str], timeout: float | None = None, stdin_fd: int | None = None
    ) -> ExecResult:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY) if stdin_fd is None else stdin_fd
        try:
            session = self._session(argv, (null, out_w, err_w), False)
        finally:
            os.close(out_w)
            os.close(err_w)
            if stdin_fd is None:
                os.close(null)
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
        deadline = None if timeout is None else time.monotonic() + timeout
        open_fds = [out_r, err_r]
        try:
            while open_fds:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                readable, _, _ = select.select(open_fds, [], [], wait)
                if not readable:
                    session.signal(signal.SIGKILL)
                    raise BottleError(f"command in bottle {self.name} timed out after {timeout}s")
                for fd in readable:
                    data = os.read(fd, 65536)
                    if data:
                        chunks[fd].append(data)
                    else:
                        open_fds.remove(fd)
            status = session.wait()
        finally:
            os.close(out_r)
            os.close(err_r)
        return ExecResult(
            status,
            b"".join(chunks[out_r]).decode(errors="replace"),
            b"".join(chunks[err_r]).decode(errors="replace"),
        )

    def cp_in(self, src: Path, dest: str) -> None:
        with src.open("rb") as handle:
            result = self.exec_argv(
                ["/bin/sh", "-c", 'cat > "$1"', "sh", dest], timeout=60, stdin_fd=handle.fileno()
            )
        if result.returncode != 0:
            raise BottleError(
                f"cannot copy {src} to {dest} in bottle {self.name}: {result.stderr.strip()}"
            )

    def start_detached(self, argv: Sequence[str], log: Path) -> None:
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            session = ExecSession(
                self.exec_socket,
                argv,
                self.env,
                self.workspace,
                (null, out, out),
                False,
                detach=True,
                relay_pid=self.relay_pid,
            )
        finally:
            os.close(null)
            os.close(out)
        session.close()


class _DeferredSignals:
    """Signals for a session that is being started: kept, and delivered once it has.

    The first Ctrl-C or SIGTERM is the command's to handle; a second one, whatever the
    command did with the first, calls `on_second_stop` (which kills the whole bottle)."""

    def __init__(self, on_second_stop: Callable[[], object] = lambda: None) -> None:
        self._session: ExecSession | None = None
        self._pending: list[int] = []
        self._on_second_stop = on_second_stop
        self._stop_requests = 0
        self.stopped_by: int | None = None  # the signal that made us kill the bottle

    def __call__(self, signum: int) -> None:
        if signum in STOP_SIGNALS:
            self._stop_requests += 1
            if self._stop_requests > 1:
                self.stopped_by = signum
                self._on_second_stop()
                return
        if self._session is None:
            self._pending.append(signum)
        else:
            self._session.signal(signum)

    def started(self, session: ExecSession) -> ExecSession:
        self._session = session  # first: a signal arriving from here on goes straight to it
        while self._pending:
            session.signal(self._pending.pop(0))
        return session


class _forward_signals:
    """While active, signals sent to the CLI go to the command in the bottle instead."""

    def __init__(self, forward: Callable[[int], object], tty: bool) -> None:
        self._forward = forward
        # In a pty session Ctrl-C arrives as a byte and reaches the command through its own tty.
        self._signals = [s for s in FORWARDED if not (tty and s == signal.SIGINT)]
        self._previous: dict[int, object] = {}

    def __enter__(self) -> None:
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, lambda n, _f: self._forward(n))

    def __exit__(self, *_: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
