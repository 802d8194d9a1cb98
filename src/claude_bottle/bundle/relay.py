"""Process 1 of a bottle: loopback TCP relay to the bundle's unix sockets, plus init duties.

Usage (inside the bottle; standalone, stdlib only, run as ``python3 -I -S relay.py``)::

    relay.py --listen PORT=SOCKET_PATH [--listen PORT=SOCKET_PATH ...]
             [--ready-file PATH] [--exec-socket PATH] (--hold | -- CMD [ARGS...])

The relay binds every listener on 127.0.0.1:PORT, optionally writes "ready" to the
ready file, then forks CMD (default signal dispositions, looked up on PATH). Each
accepted TCP connection is relayed to a new connection to the listener's unix socket,
bytes copied both ways with half-close propagated; when the unix socket cannot be
reached the client is simply closed. As process 1 it reaps every child (orphans too),
forwards SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 (and SIGINT unless the terminal already
delivers it to the command) and exits with the command's status (128+N when a signal
killed it). It never writes to stdout; stderr carries only fatal errors.

With --exec-socket it also serves the host's exec protocol on that unix socket: the
host sends one JSON line {"argv", "env", "cwd", "tty", "detach"} with three stdio file
descriptors attached (SCM_RIGHTS); the relay forks the command in a new session (the
pty, when tty is set, becomes its controlling terminal), answers {"pid": N}, delivers
{"signal": N} lines to it, and sends {"exit": STATUS} when it ends. A session whose host
side hangs up gets SIGHUP (then SIGKILL), unless it was started detached. With --hold
there is no main command: the relay serves until SIGTERM, SIGHUP or SIGINT.

Exit codes of the relay itself: 125 for usage or listen errors, 126/127 when the command
cannot be executed (like a shell).

This file must not import anything outside the standard library: it runs inside the
bottle, where claude_bottle is not installed.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import termios
from collections.abc import Callable, Sequence
from typing import NoReturn

PROG = "claude-bottle"
LISTEN_HOST = "127.0.0.1"
LISTEN_BACKLOG = 512
EXIT_RELAY_ERROR = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

WRITE_HIGH_WATER = 1024 * 1024  # pause the other side when this much is queued
WRITE_LOW_WATER = 256 * 1024
BUSY_RETRY_SECONDS = 10.0  # how long to keep retrying a unix socket whose backlog is full
FD_LIMIT_TARGET = 65536
EXEC_REQUEST_MAX = 1024 * 1024  # one exec request line (argv + env)
EXEC_HANGUP_GRACE = 3.0  # SIGHUP, then SIGKILL this much later

FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


class UsageError(Exception):
    """Bad command line; main() reports it on one line and exits 125."""


@dataclasses.dataclass(frozen=True)
class Listener:
    port: int
    socket_path: str


@dataclasses.dataclass(frozen=True)
class Options:
    listeners: tuple[Listener, ...]
    ready_file: str | None
    command: tuple[str, ...]  # empty with --hold
    exec_socket: str | None = None


# --- pure helpers ---------------------------------------------------------------------


def parse_listen(spec: str) -> Listener:
    """Parse ``PORT=SOCKET_PATH``."""
    port_text, sep, path = spec.partition("=")
    if not sep or not path:
        raise UsageError(f"--listen expects PORT=SOCKET_PATH, got {spec!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"--listen: invalid port {port_text!r} (1-65535)")
    return Listener(int(port_text), path)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="relay.py",
        add_help=False,
        usage="relay.py --listen PORT=SOCKET_PATH [...] [--ready-file PATH] "
        "[--exec-socket PATH] (--hold | -- CMD [ARGS...])",
    )
    parser.add_argument("--listen", action="append", default=[], metavar="PORT=SOCKET_PATH")
    parser.add_argument("--ready-file", default=None, metavar="PATH")
    parser.add_argument("--exec-socket", default=None, metavar="PATH")
    parser.add_argument("--hold", action="store_true")
    return parser


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the relay's arguments (without argv[0]); everything after the first ``--`` is CMD."""
    args = list(argv)
    split = args.index("--") if "--" in args else len(args)
    own, command = args[:split], args[split + 1 :]
    ns = _parser().parse_args(own)
    if ns.hold and command:
        raise UsageError("--hold takes no command")
    if not ns.hold and split == len(args):
        raise UsageError("missing '--' before the command")
    if not ns.hold and not command:
        raise UsageError("no command given after '--'")
    if ns.exec_socket == "":
        raise UsageError("--exec-socket must not be empty")
    listeners = tuple(parse_listen(spec) for spec in ns.listen)
    if not listeners:
        raise UsageError("at least one --listen PORT=SOCKET_PATH is required")
    ports = [item.port for item in listeners]
    if len(set(ports)) != len(ports):
        raise UsageError("each --listen port may be given only once")
    ready_file: str | None = ns.ready_file
    if ready_file == "":
        raise UsageError("--ready-file must not be empty")
    return Options(listeners, ready_file, tuple(command), ns.exec_socket)


def exit_status(wait_status: int) -> int:
    """Map a waitpid() status to a shell-style exit code (128+N for a signal)."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return EXIT_RELAY_ERROR  # stopped/continued are never requested; be defensive


def exec_failure_code(err: OSError) -> int:
    """Exit code a shell uses when it cannot run a command: 127 not found, else 126."""
    if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
        return EXIT_NOT_FOUND
    return EXIT_CANNOT_EXECUTE


def sigint_reaches_command(
    fd: int = 0,
    isatty: Callable[[int], bool] = os.isatty,
    tcgetpgrp: Callable[[int], int] = os.tcgetpgrp,
    getpgrp: Callable[[], int] = os.getpgrp,
) -> bool:
    """True when a terminal Ctrl-C already hits the command (we are in the foreground group)."""
    try:
        return isatty(fd) and tcgetpgrp(fd) == getpgrp()
    except OSError:
        return False


# --- setup ----------------------------------------------------------------------------


def _fail(message: str, code: int = EXIT_RELAY_ERROR) -> NoReturn:
    with contextlib.suppress(OSError):
        os.write(2, f"{PROG}: {message}\n".encode(errors="replace"))
    os._exit(code)


def bind_listeners(listeners: Sequence[Listener]) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for item in listeners:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LISTEN_HOST, item.port))
                sock.listen(LISTEN_BACKLOG)
            except OSError as err:
                raise OSError(
                    err.errno, f"relay cannot listen on {LISTEN_HOST}:{item.port}: {err.strerror}"
                ) from None
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def write_ready_file(path: str) -> None:
    """Write "ready\\n" atomically (temporary file in the same directory, then rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, b"ready\n")
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _raise_fd_limit() -> tuple[int, int] | None:
    """Allow many concurrent connections; returns the original limit for the command."""
    try:
        import resource
    except ImportError:  # pragma: no cover - always present on Linux
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = FD_LIMIT_TARGET if hard == resource.RLIM_INFINITY else min(hard, FD_LIMIT_TARGET)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return soft, hard
    except (OSError, ValueError):
        pass
    return None


def _exec_child(
    command: Sequence[str],
    old_mask: set[int | signal.Signals],
    fd_limit: tuple[int, int] | None,
    setup: Callable[[], None] | None = None,
    env: dict[str, str] | None = None,
) -> NoReturn:
    """In the forked child: restore a pristine signal state, run `setup`, exec the command."""
    code = EXIT_CANNOT_EXECUTE
    try:
        signal.set_wakeup_fd(-1)
        for sig in signal.valid_signals():
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
        if fd_limit is not None:
            import resource

            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_NOFILE, fd_limit)
        if setup is not None:
            setup()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        try:
            if env is None:
                os.execvp(command[0], list(command))
            else:
                os.execvpe(command[0], list(command), env)
        except OSError as err:
            code = exec_failure_code(err)
            reason = err.strerror or str(err)
            _fail(f"cannot run {command[0]}: {reason}", code)
    except BaseException as exc:
        _fail(f"cannot run {command[0]}: {exc}", code)
    os._exit(code)


# --- relaying ------------------------------------------------------------------------


class _Half(asyncio.Protocol):
    """One side of a relayed connection; bytes it receives go to its peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.eof = False  # this side told us it sends no more
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)

    def _peer_transport(self) -> asyncio.Transport | None:
        peer = self.peer
        if peer is None or peer.lost or peer.transport is None or peer.transport.is_closing():
            return None
        return peer.transport

    def data_received(self, data: bytes) -> None:
        out = self._peer_transport()
        if out is not None:
            out.write(data)

    def eof_received(self) -> bool:
        if self.eof:
            return True
        self.eof = True
        out = self._peer_transport()
        if out is None:
            return False
        out.write_eof()
        peer = self.peer
        if peer is not None and peer.eof:  # both directions finished
            out.close()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        out = self._peer_transport()
        if out is not None:
            if exc is None:
                out.close()  # flushes what is queued, then closes
            else:
                out.abort()

    def pause_writing(self) -> None:
        out = self._peer_transport()
        if out is not None:
            out.pause_reading()

    def resume_writing(self) -> None:
        out = self._peer_transport()
        peer = self.peer
        if out is not None and peer is not None and not peer.eof:
            out.resume_reading()


class _Client(_Half):
    """The accepted TCP side: connects its own unix-socket peer before reading anything."""

    def __init__(self, loop: asyncio.AbstractEventLoop, socket_path: str) -> None:
        super().__init__()
        self._loop = loop
        self._socket_path = socket_path
        self._task: asyncio.Task[None] | None = None
        # Python < 3.11.3 reads even when connection_made() paused the transport: keep
        # what arrives before the unix-socket peer exists, and hand it over once it does.
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        self._task = self._loop.create_task(self._connect())

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._early.append(data)
            return
        super().data_received(data)

    def eof_received(self) -> bool:
        if self.peer is None:
            self._early_eof = True
            return True
        return super().eof_received()

    async def _connect(self) -> None:
        transport = self.transport
        assert transport is not None
        try:
            sock = await self._connect_unix()
        except OSError:
            transport.close()  # bundle gone: fail closed
            return
        if self.lost or transport.is_closing():
            sock.close()
            return
        upstream = _Half()
        try:
            await self._loop.create_unix_connection(lambda: upstream, sock=sock)
        except OSError:
            sock.close()
            transport.close()
            return
        if self.lost or transport.is_closing():
            if upstream.transport is not None:
                upstream.transport.close()
            return
        upstream.peer = self
        self.peer = upstream
        early, self._early = self._early, []
        if early and upstream.transport is not None:
            upstream.transport.write(b"".join(early))
        if self._early_eof:
            self.eof_received()
            return
        transport.resume_reading()

    async def _connect_unix(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        deadline = self._loop.time() + BUSY_RETRY_SECONDS
        delay = 0.001
        try:
            while True:
                try:
                    sock.connect(self._socket_path)
                    return sock
                except InterruptedError:
                    continue
                except BlockingIOError:
                    # A unix listener with a full backlog answers EAGAIN: it is busy, not gone.
                    if self.lost or self._loop.time() >= deadline:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
        except BaseException:
            sock.close()
            raise


# --- process 1 -----------------------------------------------------------------------


class _Init:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.child: int | None = None
        self.done: asyncio.Future[int] = loop.create_future()

        self.hold = False
        self.sessions: dict[int, _ExecConnection] = {}

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            if pid == self.child and not self.done.done():
                self.done.set_result(exit_status(status))
            session = self.sessions.pop(pid, None)
            if session is not None:
                session.exited(exit_status(status))

    def forward(self, sig: signal.Signals) -> None:
        if self.hold:
            if sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT) and not self.done.done():
                self.done.set_result(0)
            return
        if sig == signal.SIGINT and sigint_reaches_command():
            return
        if self.child is None or self.done.done():
            return
        with contextlib.suppress(OSError):
            os.kill(self.child, sig)


# --- exec server ---------------------------------------------------------------------


class _ExecServer:
    """Starts commands for the host inside this bottle (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        init: _Init,
        path: str,
        old_mask: set[int | signal.Signals],
        fd_limit: tuple[int, int] | None,
    ) -> None:
        self.loop = loop
        self.init = init
        self.old_mask = old_mask
        self.fd_limit = fd_limit
        # Bind and listen under a temporary name, then rename: the host waits for `path`
        # to appear, and must never find it before it accepts connections.
        staging = f"{path}.{os.getpid()}.tmp"
        for stale in (path, staging):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)
        try:
            self.sock.bind(staging)
        finally:
            os.umask(old_umask)
        self.sock.listen(64)
        os.rename(staging, path)
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.setblocking(False)
        _ExecConnection(self, conn)

    def spawn(self, request: dict[str, object], fds: list[int]) -> int:
        argv, env, cwd, tty = _validate_exec_request(request, fds)

        def setup() -> None:
            os.setsid()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            if tty:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            os.closerange(3, FD_LIMIT_TARGET)
            os.chdir(cwd)

        handled = (*FORWARDED_SIGNALS, signal.SIGINT, signal.SIGCHLD)
        signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        try:
            pid = os.fork()
            if pid == 0:
                _exec_child(argv, self.old_mask, self.fd_limit, setup, env)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        return pid


def _validate_exec_request(
    request: dict[str, object], fds: list[int]
) -> tuple[list[str], dict[str, str], str, bool]:
    argv = request.get("argv")
    env = request.get("env", {})
    cwd = request.get("cwd") or "/"
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty list of strings")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("env must map strings to strings")
    if not isinstance(cwd, str):
        raise ValueError("cwd must be a string")
    if len(fds) != 3:
        raise ValueError("expected exactly three file descriptors (stdin, stdout, stderr)")
    return argv, env, cwd, bool(request.get("tty"))


class _ExecConnection:
    """One host connection: a request line (with fds), then signal lines; exit status back."""

    def __init__(self, server: _ExecServer, conn: socket.socket) -> None:
        self.server = server
        self.conn: socket.socket | None = conn
        self.buffer = b""
        self.fds: list[int] = []
        self.pid: int | None = None
        self.detach = False
        self.finished = False
        server.loop.add_reader(conn.fileno(), self._readable)

    def _send(self, message: dict[str, object]) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send(json.dumps(message).encode() + b"\n")

    def _close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.server.loop.remove_reader(conn.fileno())
            conn.close()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []

    def _readable(self) -> None:
        assert self.conn is not None
        try:
            data, ancdata, _flags, _addr = self.conn.recvmsg(
                65536, socket.CMSG_SPACE(4 * array.array("i").itemsize)
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancdata = b"", []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % array.array("i").itemsize
                self.fds.extend(array.array("i", payload[:usable]))
        if not data:
            self._hangup()
            return
        self.buffer += data
        if self.pid is None and b"\n" not in self.buffer:
            if len(self.buffer) > EXEC_REQUEST_MAX:
                self._send({"error": "request too large"})
                self._close()
            return
        while b"\n" in self.buffer and self.conn is not None:
            line, _, self.buffer = self.buffer.partition(b"\n")
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("expected a JSON object")
            if self.pid is None:
                self._start(message)
            elif isinstance(message.get("signal"), int) and not self.finished:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, message["signal"])
        except (ValueError, OSError) as err:
            self._send({"error": str(err)[:300]})
            self._close()

    def _start(self, request: dict[str, object]) -> None:
        fds, self.fds = self.fds, []
        try:
            pid = self.server.spawn(request, fds)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.pid = pid
        self.detach = bool(request.get("detach"))
        self.server.init.sessions[pid] = self
        self._send({"pid": pid})
        self.server.init.reap()  # it may already have exited

    def exited(self, status: int) -> None:
        self.finished = True
        self._send({"exit": status})
        self._close()

    def _hangup(self) -> None:
        self._close()
        pid = self.pid
        if pid is None or self.finished or self.detach:
            return
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGHUP)

        def kill() -> None:
            if not self.finished:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)

        self.server.loop.call_later(EXEC_HANGUP_GRACE, kill)


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    return None


def run(options: Options) -> int:
    try:
        listen_socks = bind_listeners(options.listeners)
    except OSError as err:
        _fail(str(err.strerror or err))
    if options.ready_file is not None:
        try:
            write_ready_file(options.ready_file)
        except OSError as err:
            _fail(f"relay cannot write ready file {options.ready_file}: {err.strerror or err}")
    fd_limit = _raise_fd_limit()

    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(_quiet_exception_handler)
    asyncio.set_event_loop(loop)
    init = _Init(loop)

    servers: list[asyncio.AbstractServer] = []
    for item, sock in zip(options.listeners, listen_socks, strict=True):

        def factory(path: str = item.socket_path) -> asyncio.Protocol:
            return _Client(loop, path)

        servers.append(
            loop.run_until_complete(loop.create_server(factory, sock=sock, backlog=LISTEN_BACKLOG))
        )

    handled = (*FORWARDED_SIGNALS, signal.SIGINT, signal.SIGCHLD)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    for sig in (*FORWARDED_SIGNALS, signal.SIGINT):
        loop.add_signal_handler(sig, init.forward, sig)
    loop.add_signal_handler(signal.SIGCHLD, init.reap)
    signal.signal(signal.SIGWINCH, signal.SIG_IGN)

    if options.exec_socket is not None:
        try:
            _ExecServer(loop, init, options.exec_socket, old_mask, fd_limit)
        except OSError as err:
            _fail(f"relay cannot serve {options.exec_socket}: {err.strerror or err}")
    if options.command:
        pid = os.fork()
        if pid == 0:
            _exec_child(options.command, old_mask, fd_limit)
        init.child = pid
    else:
        init.hold = True
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    init.reap()  # in case SIGCHLD was already consumed

    status = loop.run_until_complete(init.done)
    for server in servers:
        server.close()
    for sock in listen_socks:
        sock.close()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        _fail(f"relay: {err}")
    return run(options)


if __name__ == "__main__":
    _code = main()
    os._exit(_code)  # skip interpreter teardown: nothing to flush, and it must stay quiet
