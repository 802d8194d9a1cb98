"""Start a bundle as a host process and wait until it serves (shared by host-process backends)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from claude_bottle.bundle import prestart
from claude_bottle.errors import LaunchError

if TYPE_CHECKING:
    from claude_bottle.bundle.settings import InjectionSpec

READY_TIMEOUT = 15.0


class BundleProcess(Protocol):
    """The calls made on a bundle process: a `subprocess.Popen`, or a `ForkedBundle`."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class PendingBundle:
    """A bundle process that has been started but may not serve yet."""

    def __init__(
        self,
        process: BundleProcess,
        ready_fd: int,
        log_file: Path,
        early_log: IO[bytes] | None = None,
    ) -> None:
        self.process = process
        self._ready_fd = ready_fd
        self._log_file = log_file
        self._early_log = early_log  # what a prestarted bundle said before it had a log

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> BundleProcess:
        try:
            ready, _, _ = select.select([self._ready_fd], [], [], timeout)
            answer = os.read(self._ready_fd, 64) if ready else b""
        finally:
            os.close(self._ready_fd)
        early = b""
        if self._early_log is not None:
            self._early_log.seek(0)
            early = self._early_log.read()
            self._early_log.close()
        if answer.startswith(b"ready"):
            return self.process
        stop_process(self.process)
        with contextlib.suppress(OSError):
            early += self._log_file.read_bytes()
        tail = early.decode(errors="replace").strip().splitlines()[-5:]
        raise LaunchError(
            "the bundle (egress proxy) did not start" + (": " + " | ".join(tail) if tail else ""),
            f"see {self._log_file}",
        )


class EarlyBundle:
    """A bundle process started before its bottle is planned.

    Its interpreter start-up and imports (most of its time to ready) overlap with the
    CLI's own; `spawn_bundle` then hands it the settings file through a pipe. Closing
    that pipe unused makes it exit at once.
    """

    def __init__(
        self,
        process: BundleProcess,
        handoff_fd: int,
        ready_fd: int,
        early_log: IO[bytes] | None,
        die_with_parent: bool,
    ) -> None:
        self.process = process
        self.handoff_fd: int | None = handoff_fd
        self.ready_fd = ready_fd
        self.early_log = early_log
        self.die_with_parent = die_with_parent

    def hand_off(
        self, settings_file: Path, log_file: Path, injected: Mapping[str, str]
    ) -> PendingBundle:
        """Tell it its settings and log file, and the injections' secrets (through the
        pipe: they are on no disk and in no process's environment)."""
        assert self.handoff_fd is not None
        message = json.dumps(
            {"settings": str(settings_file), "log": str(log_file), "injected": dict(injected)}
        ).encode()
        try:
            written = 0
            while written < len(message) + 1:  # a pipe may take a long message in parts
                written += os.write(self.handoff_fd, (message + b"\n")[written:])
        except OSError:
            pass  # it died early: wait_ready reports it, with what it said
        finally:
            os.close(self.handoff_fd)
            self.handoff_fd = None
        return PendingBundle(self.process, self.ready_fd, log_file, early_log=self.early_log)

    def discard(self) -> None:
        if self.handoff_fd is not None:
            os.close(self.handoff_fd)
            self.handoff_fd = None
            os.close(self.ready_fd)
            if self.early_log is not None:
                self.early_log.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(1)  # it exits on the closed pipe
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


_early: EarlyBundle | None = None


def prestart_bundle(*, die_with_parent: bool) -> None:
    """Start a bundle now for the next `spawn_bundle` of this process to use: forked
    (`prestart`) where that is safe, else exec'd."""
    global _early
    discard_prestarted()
    if prestart.fork_bundle(die_with_parent=die_with_parent):
        return
    handoff_r, handoff_w = os.pipe()
    ready_r, ready_w = os.pipe()
    # Where it writes until it learns its log file; the EarlyBundle owns it from here.
    import tempfile  # only off the forked path

    early_log = tempfile.TemporaryFile()  # noqa: SIM115
    process: BundleProcess | None
    try:
        process = _popen_bundle(handoff_r, ready_w, early_log, die_with_parent)
    except OSError:
        process = None
    os.close(handoff_r)
    os.close(ready_w)
    if process is None:  # spawn_bundle starts one the ordinary way
        os.close(handoff_w)
        os.close(ready_r)
        early_log.close()
        return
    _early = EarlyBundle(process, handoff_w, ready_r, early_log, die_with_parent)


def prestarted() -> EarlyBundle | None:
    """The bundle prestarted for this process, if any (a forked one is adopted here)."""
    global _early
    forked = prestart.take()
    if forked is not None:
        _early = EarlyBundle(
            ForkedBundle(forked.pid),
            forked.handoff_fd,
            forked.ready_fd,
            os.fdopen(forked.log_fd, "w+b"),
            forked.die_with_parent,
        )
    return _early


def discard_prestarted() -> None:
    """Stop a prestarted bundle nobody used (the backend runs its bundle elsewhere)."""
    global _early
    early, _early = prestarted(), None
    if early is not None:
        early.discard()


def spawn_bundle(
    settings_file: Path,
    log_file: Path,
    *,
    die_with_parent: bool,
    injections: Sequence[InjectionSpec] = (),
) -> PendingBundle:
    """Start the bundle process (the prestarted one when there is one) and hand it its
    settings and the injections' secrets, read here; call `.wait_ready()` before the
    bottle's command runs."""
    global _early
    injected: dict[str, str] = {}
    if injections:
        from claude_bottle.bundle.secret_sources import injected_secrets

        injected = injected_secrets(injections)
    early, _early = prestarted(), None
    if early is not None and (
        early.die_with_parent != die_with_parent or early.process.poll() is not None
    ):
        early.discard()
        early = None
    if early is None:
        early = _exec_bundle(log_file, die_with_parent)
    return early.hand_off(settings_file, log_file, injected)


def _exec_bundle(log_file: Path, die_with_parent: bool) -> EarlyBundle:
    """A bundle started now, the ordinary way, waiting for its settings like a
    prestarted one; it writes to `log_file` from the start."""
    handoff_r, handoff_w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        with log_file.open("ab") as log:
            process = _popen_bundle(handoff_r, ready_w, log, die_with_parent)
    except BaseException:
        os.close(handoff_w)
        os.close(ready_r)
        raise
    finally:
        os.close(handoff_r)
        os.close(ready_w)
    return EarlyBundle(process, handoff_w, ready_r, None, die_with_parent)


def _popen_bundle(
    handoff_fd: int,
    ready_fd: int,
    output: IO[bytes],
    die_with_parent: bool,
) -> subprocess.Popen[bytes]:
    """The bundle process, told where its settings come from and where to say "ready"."""
    argv = [sys.executable, "-m", "claude_bottle.bundle.server", "--handoff-fd", str(handoff_fd)]
    argv += ["--ready-fd", str(ready_fd)]
    if die_with_parent:
        argv += ["--parent-pid", str(os.getpid())]
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        pass_fds=(handoff_fd, ready_fd),
        start_new_session=True,
    )


class ForkedBundle:
    """A bundle forked by `prestart`: the `Popen` calls the launcher and backends use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere; Popen reports 0 as well
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.returncode is None:
                try:
                    _, status = os.waitpid(self.pid, 0)
                except ChildProcessError:  # reaped elsewhere; Popen reports 0 as well
                    status = 0
                self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        deadline = time.monotonic() + timeout
        exited = _exit_notifier(self.pid)
        try:
            while (code := self.poll()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise subprocess.TimeoutExpired([f"bundle {self.pid}"], timeout)
                if exited is not None:
                    select.select([exited], [], [], remaining)
                else:
                    time.sleep(min(remaining, 0.01))
        finally:
            if exited is not None:
                os.close(exited)
        return code

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


def start_bundle(settings_file: Path, log_file: Path, *, die_with_parent: bool) -> BundleProcess:
    return spawn_bundle(settings_file, log_file, die_with_parent=die_with_parent).wait_ready()


def stop_process(process: BundleProcess, timeout: float = 5.0) -> None:
    if process.poll() is not None:
        return
    exited = _exit_notifier(process.pid)
    try:
        process.terminate()
        if exited is not None:
            select.select([exited], [], [], timeout)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    finally:
        if exited is not None:
            os.close(exited)


def _exit_notifier(pid: int) -> int | None:
    """A pidfd that turns readable when `pid` exits (Linux 5.3+), else None.

    Popen.wait(timeout) polls with sleeps growing to 50 ms: a bundle that exits in
    5 ms would cost up to 50 more on every teardown.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None
    return fd
