"""Process 1 of a bottle: loopback TCP relay to the bundle's unix sockets, plus init duties.

Usage (inside the bottle; standalone, stdlib only, run as ``python3 -I -S relay.py``)::

    relay.py --listen PORT=SOCKET_PATH [--listen PORT=SOCKET_PATH ...]
             [--ready-file PATH] [--exec-socket PATH] [--lifeline FD]
             (--hold | -- CMD [ARGS...])

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
there is no main command: the relay serves until SIGTERM, SIGHUP or SIGINT. With
--lifeline it exits (137) as soon as FD, a pipe the host holds open, reaches end of file.

Exit codes of the relay itself: 125 for usage or listen errors, 126/127 when the command
cannot be executed (like a shell).

This file must not import anything outside the standard library: it runs inside the
bottle, where claude_bottle is not installed.
"""

from __future__ import annotations

# Start-up is on every bottle's critical path, so only C modules are imported here: the
# `signal` and `socket` wrappers (their enums) and `json` (which needs `re`) would add
# ~12 ms. `_signal` and `_socket` are what those wrappers re-export, with the same API
# (plain ints instead of enums; `_accept()` returns a file descriptor); the exec protocol
# uses json's C part, `_json`, when it can.
import _socket
import errno
import os
import select
import sys
import time
from _heapq import heappop, heappush

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable, Sequence
    from typing import NoReturn
else:
    import _signal

PROG = "claude-bottle"
LISTEN_HOST = "127.0.0.1"
LISTEN_BACKLOG = 512
EXIT_RELAY_ERROR = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

READ_SIZE = 256 * 1024  # one recv() of a relayed socket
WRITE_HIGH_WATER = 1024 * 1024  # pause the other side when this much is queued
WRITE_LOW_WATER = 256 * 1024  # ... and resume it once the queue is down to this
BUSY_RETRY_SECONDS = 10.0  # how long to keep retrying a unix socket whose backlog is full
ACCEPT_RETRY_SECONDS = 1.0  # out of file descriptors: stop accepting for this long
FD_LIMIT_TARGET = 65536
EXEC_REQUEST_MAX = 1024 * 1024  # one exec request line (argv + env)
EXEC_HANGUP_GRACE = 3.0  # SIGHUP, then SIGKILL this much later

FORWARDED_SIGNALS = (
    _signal.SIGTERM,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
)
# Everything the relay handles itself: blocked around fork() so that no handler of ours
# runs in a child before it has restored the default dispositions.
HANDLED_SIGNALS = (*FORWARDED_SIGNALS, _signal.SIGINT, _signal.SIGCHLD)


class _suppress:
    """Ignore the given exceptions in a ``with`` block (contextlib costs start-up time)."""

    __slots__ = ("kinds",)

    def __init__(self, *kinds: type[BaseException]) -> None:
        self.kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> bool:
        return kind is not None and issubclass(kind, self.kinds)


class UsageError(Exception):
    """Bad command line; main() reports it on one line and exits 125."""


class Listener:
    __slots__ = ("port", "socket_path")

    def __init__(self, port: int, socket_path: str) -> None:
        self.port = port
        self.socket_path = socket_path

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Listener):
            return NotImplemented
        return (self.port, self.socket_path) == (other.port, other.socket_path)

    def __hash__(self) -> int:
        return hash((self.port, self.socket_path))

    def __repr__(self) -> str:
        return f"Listener(port={self.port!r}, socket_path={self.socket_path!r})"


class Options:
    __slots__ = ("command", "exec_socket", "lifeline", "listeners", "ready_file")

    def __init__(
        self,
        listeners: tuple[Listener, ...],
        ready_file: str | None,
        command: tuple[str, ...],  # empty with --hold
        exec_socket: str | None = None,
        lifeline: int | None = None,
    ) -> None:
        self.listeners = listeners
        self.ready_file = ready_file
        self.command = command
        self.exec_socket = exec_socket
        self.lifeline = lifeline

    def __repr__(self) -> str:
        return (
            f"Options(listeners={self.listeners!r}, ready_file={self.ready_file!r}, "
            f"command={self.command!r}, exec_socket={self.exec_socket!r}, "
            f"lifeline={self.lifeline!r})"
        )


# --- pure helpers ---------------------------------------------------------------------


def parse_listen(spec: str) -> Listener:
    """Parse ``PORT=SOCKET_PATH``."""
    port_text, sep, path = spec.partition("=")
    if not sep or not path:
        raise UsageError(f"--listen expects PORT=SOCKET_PATH, got {spec!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"--listen: invalid port {port_text!r} (1-65535)")
    return Listener(int(port_text), path)


# The command line is parsed by hand, the way argparse did it (argparse and the `re` it
# imports cost ~10 ms of every bottle's start-up): "--opt VALUE" or "--opt=VALUE", a
# unique prefix of an option name is that option, a value must not look like an option.
_OPTION_NAMES = ("--listen", "--ready-file", "--exec-socket", "--lifeline", "--hold")


def _option_name(arg: str) -> str | None:
    name = arg.partition("=")[0]
    if name in _OPTION_NAMES:
        return name
    if len(name) > 2 and name.startswith("--"):
        matches = [option for option in _OPTION_NAMES if option.startswith(name)]
        if len(matches) == 1:
            return matches[0]
    return None


def _looks_like_option(arg: str) -> bool:
    if not arg.startswith("-") or arg == "-":
        return False
    if _option_name(arg) is not None:
        return True
    whole, dot, fraction = arg[1:].partition(".")
    if (whole.isdecimal() and not dot) or (
        dot and fraction.isdecimal() and (not whole or whole.isdecimal())
    ):
        return False  # a negative number
    return " " not in arg


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the relay's arguments (without argv[0]); everything after the first ``--`` is CMD."""
    args = list(argv)
    split = args.index("--") if "--" in args else len(args)
    own, command = args[:split], args[split + 1 :]
    listen: list[str] = []
    ready_file: str | None = None
    exec_socket: str | None = None
    lifeline: int | None = None
    hold = False
    unknown: list[str] = []
    index = 0
    while index < len(own):
        arg = own[index]
        index += 1
        name = _option_name(arg) if arg.startswith("--") else None
        if name is None:
            unknown.append(arg)
            continue
        _, explicit, value = arg.partition("=")
        if name == "--hold":
            if explicit:
                raise UsageError(f"argument --hold: ignored explicit argument {value!r}")
            hold = True
            continue
        if not explicit:
            if index == len(own) or _looks_like_option(own[index]):
                raise UsageError(f"argument {name}: expected one argument")
            value = own[index]
            index += 1
        if name == "--listen":
            listen.append(value)
        elif name == "--ready-file":
            ready_file = value
        elif name == "--lifeline":
            if not value.isdigit():
                raise UsageError(f"--lifeline expects a file descriptor number, got {value!r}")
            lifeline = int(value)
        else:
            exec_socket = value
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
    if hold and command:
        raise UsageError("--hold takes no command")
    if not hold and split == len(args):
        raise UsageError("missing '--' before the command")
    if not hold and not command:
        raise UsageError("no command given after '--'")
    if exec_socket == "":
        raise UsageError("--exec-socket must not be empty")
    listeners = tuple(parse_listen(spec) for spec in listen)
    if not listeners:
        raise UsageError("at least one --listen PORT=SOCKET_PATH is required")
    ports = [item.port for item in listeners]
    if len(set(ports)) != len(ports):
        raise UsageError("each --listen port may be given only once")
    if ready_file == "":
        raise UsageError("--ready-file must not be empty")
    return Options(listeners, ready_file, tuple(command), exec_socket, lifeline)


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
    with _suppress(OSError):
        os.write(2, f"{PROG}: {message}\n".encode(errors="replace"))
    os._exit(code)


def bind_listeners(listeners: Sequence[Listener]) -> list[_socket.socket]:
    sockets: list[_socket.socket] = []
    try:
        for item in listeners:
            sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
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
        with _suppress(OSError):
            os.unlink(tmp)
        raise


def _raise_fd_limit() -> tuple[int, int] | None:
    """Allow many concurrent connections; returns the original limit for the command."""
    try:
        import resource
    except ImportError:  # pragma: no cover - always present on Linux
        return None
    with _suppress(OSError, ValueError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = FD_LIMIT_TARGET if hard == resource.RLIM_INFINITY else min(hard, FD_LIMIT_TARGET)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return soft, hard
    return None


def _exec_child(
    command: Sequence[str],
    old_mask: set[int | _signal.Signals],
    fd_limit: tuple[int, int] | None,
    setup: Callable[[], None] | None = None,
    env: dict[str, str] | None = None,
) -> NoReturn:
    """In the forked child: restore a pristine signal state, run `setup`, exec the command."""
    code = EXIT_CANNOT_EXECUTE
    try:
        _signal.set_wakeup_fd(-1)
        for sig in _signal.valid_signals():
            with _suppress(OSError, ValueError):
                _signal.signal(sig, _signal.SIG_DFL)
        if fd_limit is not None:
            import resource

            with _suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_NOFILE, fd_limit)
        if setup is not None:
            setup()
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
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


# --- event loop ----------------------------------------------------------------------
#
# A small level-triggered poll loop (asyncio alone costs 50-90 ms of start-up). Each
# watched fd has one callback, called with the poll events; a callback must treat them
# as a hint (re-check its own state, let the syscall decide) because an fd closed and
# reused within one batch of events may see a stale one. An fd whose mask is empty is
# not in the poller at all: epoll reports errors and hangups even for an empty mask.

if hasattr(select, "epoll"):
    _IN, _OUT = select.EPOLLIN, select.EPOLLOUT
    _ERR, _HUP = select.EPOLLERR, select.EPOLLHUP
else:  # pragma: no cover - the relay runs on Linux; poll() keeps the tests portable
    _IN, _OUT = select.POLLIN, select.POLLOUT
    _ERR, _HUP = select.POLLERR, select.POLLHUP
_READABLE = _IN | _ERR | _HUP
_WRITABLE = _OUT | _ERR | _HUP


def _ignore_signal(signum: int, frame: object) -> None:
    """Python-level handler: the C-level one already wrote the number to the wakeup fd."""


class _Timer:
    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback

    def __lt__(self, other: _Timer) -> bool:
        return self.when < other.when


class _Loop:
    def __init__(self) -> None:
        if hasattr(select, "epoll"):
            self._poller: select.epoll | select.poll = select.epoll()
            self._scale = 1.0  # epoll.poll() takes seconds
        else:  # pragma: no cover
            self._poller = select.poll()
            self._scale = 1000.0  # poll.poll() takes milliseconds
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self._masks: dict[int, int] = {}  # only the fds currently in the poller
        self._timers: list[_Timer] = []
        self._signal_callbacks: dict[int, Callable[[int], None]] = {}
        self._wakeup = -1

    def watch(self, fd: int, callback: Callable[[int], None], mask: int) -> None:
        self._callbacks[fd] = callback
        self.set_mask(fd, mask)

    def set_mask(self, fd: int, mask: int) -> None:
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        if not mask:
            del self._masks[fd]
            self._poller.unregister(fd)
        elif not old:
            self._masks[fd] = mask
            self._poller.register(fd, mask)
        else:
            self._masks[fd] = mask
            self._poller.modify(fd, mask)

    def forget(self, fd: int) -> None:
        """Stop watching `fd`; call this before closing it."""
        self.set_mask(fd, 0)
        self._callbacks.pop(fd, None)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        heappush(self._timers, _Timer(time.monotonic() + delay, callback))

    def add_signal_handler(self, sig: int, callback: Callable[[int], None]) -> None:
        """Run `callback(sig)` from the loop when `sig` arrives (like asyncio's, SA_RESTART)."""
        if self._wakeup < 0:
            read_end, write_end = os.pipe()
            os.set_blocking(read_end, False)
            os.set_blocking(write_end, False)
            _signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            self._wakeup = read_end
            self.watch(read_end, self._read_signals, _IN)
        self._signal_callbacks[sig] = callback
        _signal.signal(sig, _ignore_signal)
        _signal.siginterrupt(sig, False)

    def _read_signals(self, events: int) -> None:
        while True:
            try:
                data = os.read(self._wakeup, 4096)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for signum in data:
                callback = self._signal_callbacks.get(signum)
                if callback is not None:
                    with _suppress(Exception):
                        callback(signum)

    def run_until(self, finished: Callable[[], bool]) -> None:
        timers = self._timers
        callbacks = self._callbacks
        poll = self._poller.poll
        while not finished():
            timeout = None
            if timers:
                timeout = max(0.0, timers[0].when - time.monotonic()) * self._scale
            for fd, events in poll(timeout):
                callback = callbacks.get(fd)
                if callback is not None:
                    with _suppress(Exception):  # keep serving everything else, like asyncio
                        callback(events)
            if timers:
                now = time.monotonic()
                while timers and timers[0].when <= now:
                    with _suppress(Exception):
                        heappop(timers).callback()


# --- relaying ------------------------------------------------------------------------


def _accept(listener: _socket.socket) -> _socket.socket:
    """socket.accept() for a bare _socket.socket: the new connection, non-blocking."""
    fd, _ = listener._accept()  # type: ignore[attr-defined]  # not in typeshed
    try:
        conn = _socket.socket(listener.family, listener.type, listener.proto, fd)
    except BaseException:
        os.close(fd)
        raise
    conn.setblocking(False)
    return conn


_READ_BUFFER = memoryview(bytearray(READ_SIZE))  # every recv() lands here first


class _End:
    """One socket of a relayed connection; what it reads is written to its peer's socket.

    Writes go straight to the socket; what it does not take is queued (copied) and sent
    when the socket is writable. A queue above WRITE_HIGH_WATER stops reading the peer
    until it is down to WRITE_LOW_WATER, so a connection never holds much more than
    WRITE_HIGH_WATER + READ_SIZE per direction. EOF read on one side shuts down writing
    on the other (once its queue is sent); after EOF both ways, or when one side closes,
    both close once their queues are sent. An error on either side drops both at once.
    """

    __slots__ = (
        "closed",
        "closing",
        "eof",
        "eof_sent",
        "fd",
        "loop",
        "out",
        "paused",
        "peer",
        "sock",
        "throttling",
    )

    def __init__(self, loop: _Loop, sock: _socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer: _End | None = None
        self.out = bytearray()  # read from the peer, not yet taken by this socket
        self.eof = False  # this socket sent EOF: nothing more to read from it
        self.eof_sent = False  # shut down writing once `out` is sent
        self.paused = False  # not reading: the peer's queue is over the high-water mark
        self.throttling = False  # our queue is over the high-water mark: the peer is paused
        self.closing = False  # close once `out` is sent; read nothing more
        self.closed = False
        loop.watch(self.fd, self._ready, 0)

    def _update(self) -> None:
        if self.closed:
            return
        mask = _OUT if self.out else 0
        if not (self.eof or self.paused or self.closing):
            mask |= _IN
        self.loop.set_mask(self.fd, mask)

    def _ready(self, events: int) -> None:
        try:
            if self.out and events & _WRITABLE:
                self._flush()
            if events & _READABLE and not (self.eof or self.paused or self.closing):
                self._read()
        except Exception:  # a bug here must not leave a stuck socket behind
            self.abort()

    def _read(self) -> None:
        try:
            count = self.sock.recv_into(_READ_BUFFER)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        if not count:
            self._eof_received()
            return
        peer = self.peer
        if peer is not None and not peer.closing:
            peer.write(_READ_BUFFER[:count])

    def write(self, data: memoryview) -> None:
        if self.out:
            self.out += data
        else:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.abort()
                return
            if sent == len(data):
                return
            self.out += data[sent:]
            self._update()
        if not self.throttling and len(self.out) > WRITE_HIGH_WATER:
            self.throttling = True
            if self.peer is not None:
                self.peer.pause_reading()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        if sent == len(self.out):
            self.out = bytearray()  # let go of a large buffer
        else:
            del self.out[:sent]
        if self.throttling and len(self.out) <= WRITE_LOW_WATER:
            self.throttling = False
            if self.peer is not None:
                self.peer.resume_reading()
        if not self.out:
            if self.closing:
                self._finish()
                return
            if self.eof_sent:
                self._shutdown()
        self._update()

    def pause_reading(self) -> None:
        if not self.paused:
            self.paused = True
            self._update()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            self._update()

    def _eof_received(self) -> None:
        self.eof = True
        peer = self.peer
        if peer is None or peer.closing:
            self.close()
            return
        peer.write_eof()
        if self.closing:  # writing EOF failed: both are gone
            return
        if peer.eof:  # both directions finished
            peer.close()
            self.close()
            return
        self._update()

    def write_eof(self) -> None:
        if self.closing or self.eof_sent:
            return
        self.eof_sent = True
        if not self.out:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            self.abort()

    def close(self) -> None:
        """Read no more, close once the queue is sent, then close the peer the same way."""
        if self.closing:
            return
        self.closing = True
        if self.out:
            self._update()
        else:
            self._finish()

    def _finish(self) -> None:
        self._close_socket()
        peer, self.peer = self.peer, None  # no reference cycle once closed
        if peer is not None:
            peer.close()

    def abort(self) -> None:
        """Close at once, dropping the queue, and the peer too."""
        if self.closed:
            return
        self.out = bytearray()
        self._close_socket()
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.abort()

    def _close_socket(self) -> None:
        self.closing = self.closed = True
        self.loop.forget(self.fd)
        self.sock.close()


def _relay(loop: _Loop, client: _socket.socket, upstream: _socket.socket) -> None:
    near, far = _End(loop, client), _End(loop, upstream)
    near.peer, far.peer = far, near
    near._update()
    far._update()


class _Connect:
    """Connects an accepted client to the listener's unix socket, then relays the two.

    The client is not read until then: what it sends early waits in the kernel and is
    relayed first. A unix socket that cannot be reached closes the client at once; one
    whose backlog is full (EAGAIN: busy, not gone) is retried for BUSY_RETRY_SECONDS.
    """

    __slots__ = ("client", "deadline", "delay", "loop", "path", "upstream")

    def __init__(self, loop: _Loop, client: _socket.socket, path: str) -> None:
        self.loop = loop
        self.client = client
        self.path = path
        self.deadline = time.monotonic() + BUSY_RETRY_SECONDS
        self.delay = 0.001
        try:
            self.upstream = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        except OSError:
            client.close()
            return
        self.upstream.setblocking(False)
        self._attempt()

    def _attempt(self) -> None:
        while True:
            try:
                self.upstream.connect(self.path)
            except InterruptedError:
                continue
            except BlockingIOError:
                if time.monotonic() < self.deadline:
                    self.loop.call_later(self.delay, self._attempt)
                    self.delay = min(self.delay * 2, 0.05)
                    return
            except OSError:
                pass
            else:
                _relay(self.loop, self.client, self.upstream)
                return
            self.upstream.close()  # bundle gone: fail closed
            self.client.close()
            return


class _Server:
    """Accepts on one TCP listener; each client gets its own connection to `path`."""

    def __init__(self, loop: _Loop, sock: _socket.socket, path: str) -> None:
        self.loop = loop
        self.sock = sock
        self.path = path
        loop.watch(sock.fileno(), self._accept, _IN)

    def _accept(self, events: int) -> None:
        for _ in range(LISTEN_BACKLOG):
            try:
                client = _accept(self.sock)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Linux keeps reporting the listener readable: wait for a free fd.
                    self.loop.set_mask(self.sock.fileno(), 0)
                    self.loop.call_later(ACCEPT_RETRY_SECONDS, self._resume)
                return
            try:
                client.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)  # as asyncio did
            except OSError:
                client.close()
                continue
            _Connect(self.loop, client, self.path)

    def _resume(self) -> None:
        self.loop.set_mask(self.sock.fileno(), _IN)

    def close(self) -> None:
        self.loop.forget(self.sock.fileno())
        self.sock.close()


# --- process 1 -----------------------------------------------------------------------


class _Init:
    def __init__(self) -> None:
        self.child: int | None = None
        self.status: int | None = None  # set when the relay should exit with it
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
            if pid == self.child and self.status is None:
                self.status = exit_status(status)
            session = self.sessions.pop(pid, None)
            if session is not None:
                session.exited(exit_status(status))

    def forward(self, sig: int) -> None:
        if self.hold:
            if sig in (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT) and self.status is None:
                self.status = 0
            return
        if sig == _signal.SIGINT and sigint_reaches_command():
            return
        if self.child is None or self.status is not None:
            return
        with _suppress(OSError):
            os.kill(self.child, sig)


# --- exec server ---------------------------------------------------------------------
#
# _json, fcntl and termios are imported where they are used (run() preloads them once the
# relay is ready), so that they stay off the start-up path.

_JSON_WHITESPACE = " \t\n\r"


class _JSONDefaults:
    """What _json.make_scanner reads from its context: json.JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity


def _json_loads(data: bytes) -> object:
    """json.loads() with json's C scanner alone (the json package costs ~5 ms to import).

    Anything the fast path does not accept is parsed again by the json package, which
    then reports the error (the C scanner needs json.decoder loaded to raise it).
    """
    with _suppress(Exception):
        import _json

        text = data.decode()
        start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
        scan = _json.make_scanner(_JSONDefaults)  # type: ignore[arg-type]  # duck-typed
        value, end = scan(text, start)
        if not text[end:].strip(_JSON_WHITESPACE):
            return value
    import json

    result: object = json.loads(data)
    return result


def _json_line(key: str, value: int | str) -> bytes:
    """One protocol message, ``{"key": value}`` and a newline."""
    if isinstance(value, int):
        text = str(value)
    else:
        try:
            import _json

            text = _json.encode_basestring_ascii(value)
        except ImportError:  # pragma: no cover - CPython has it
            import json

            text = json.dumps(value)
    return f'{{"{key}": {text}}}\n'.encode()


class _ExecServer:
    """Starts commands for the host inside this bottle (see the module docstring)."""

    def __init__(
        self,
        loop: _Loop,
        init: _Init,
        path: str,
        old_mask: set[int | _signal.Signals],
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
            with _suppress(FileNotFoundError):
                os.unlink(stale)
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        old_umask = os.umask(0o077)
        try:
            self.sock.bind(staging)
        finally:
            os.umask(old_umask)
        self.sock.listen(64)
        os.rename(staging, path)
        self.sock.setblocking(False)
        loop.watch(self.sock.fileno(), self._accept, _IN)

    def _accept(self, events: int) -> None:
        try:
            conn = _accept(self.sock)
        except OSError:
            return
        _ExecConnection(self, conn)

    def spawn(self, request: dict[str, object], fds: list[int]) -> int:
        import fcntl
        import termios

        argv, env, cwd, tty = _validate_exec_request(request, fds)

        def setup() -> None:
            os.setsid()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            if tty:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            os.closerange(3, FD_LIMIT_TARGET)
            os.chdir(cwd)

        _signal.pthread_sigmask(_signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _exec_child(argv, self.old_mask, self.fd_limit, setup, env)
        finally:
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, HANDLED_SIGNALS)
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


_FD_SIZE = 4  # a C int, as SCM_RIGHTS carries file descriptors


class _ExecConnection:
    """One host connection: a request line (with fds), then signal lines; exit status back."""

    def __init__(self, server: _ExecServer, conn: _socket.socket) -> None:
        self.server = server
        self.conn: _socket.socket | None = conn
        self.buffer = b""
        self.fds: list[int] = []
        self.pid: int | None = None
        self.detach = False
        self.finished = False
        server.loop.watch(conn.fileno(), self._readable, _IN)

    def _send(self, key: str, value: int | str) -> None:
        if self.conn is not None:
            with _suppress(OSError):
                self.conn.send(_json_line(key, value))

    def _close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.server.loop.forget(conn.fileno())
            conn.close()
        for fd in self.fds:
            with _suppress(OSError):
                os.close(fd)
        self.fds = []

    def _readable(self, events: int) -> None:
        if self.conn is None:
            return
        try:
            data, ancdata, _flags, _addr = self.conn.recvmsg(
                65536, _socket.CMSG_SPACE(4 * _FD_SIZE)
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancdata = b"", []
        for level, kind, payload in ancdata:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _FD_SIZE
                self.fds.extend(memoryview(payload[:usable]).cast("i"))
        if not data:
            self._hangup()
            return
        self.buffer += data
        if self.pid is None and b"\n" not in self.buffer:
            if len(self.buffer) > EXEC_REQUEST_MAX:
                self._send("error", "request too large")
                self._close()
            return
        while b"\n" in self.buffer and self.conn is not None:
            line, _, self.buffer = self.buffer.partition(b"\n")
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        try:
            message = _json_loads(line)
            if not isinstance(message, dict):
                raise ValueError("expected a JSON object")
            if self.pid is None:
                self._start(message)
            elif isinstance(message.get("signal"), int) and not self.finished:
                with _suppress(OSError):
                    os.kill(self.pid, message["signal"])
        except (ValueError, OSError) as err:
            self._send("error", str(err)[:300])
            self._close()

    def _start(self, request: dict[str, object]) -> None:
        fds, self.fds = self.fds, []
        try:
            pid = self.server.spawn(request, fds)
        finally:
            for fd in fds:
                with _suppress(OSError):
                    os.close(fd)
        self.pid = pid
        self.detach = bool(request.get("detach"))
        self.server.init.sessions[pid] = self
        self._send("pid", pid)
        self.server.init.reap()  # it may already have exited

    def exited(self, status: int) -> None:
        self.finished = True
        self._send("exit", status)
        self._close()

    def _hangup(self) -> None:
        self._close()
        pid = self.pid
        if pid is None or self.finished or self.detach:
            return
        with _suppress(OSError):
            os.killpg(pid, _signal.SIGHUP)

        def kill() -> None:
            if not self.finished:
                with _suppress(OSError):
                    os.killpg(pid, _signal.SIGKILL)

        self.server.loop.call_later(EXEC_HANGUP_GRACE, kill)


PR_SET_DUMPABLE = 4
EXIT_LIFELINE = 128 + 9  # as if killed: the host side that started the bottle is gone


def guard_process_one() -> None:
    """Keep the agent, which runs as this process's uid, from stopping or steering it.

    Not dumpable, ptrace, /proc/1/mem and process_vm_* need CAP_SYS_PTRACE, which no process
    in the bottle has (signals are already filtered by the kernel: process 1 gets only those
    it handles from inside its pid namespace). The commands it starts are dumpable again
    after their execve, as usual.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        _fail(f"relay cannot make itself undumpable: {os.strerror(ctypes.get_errno())}")


def _watch_lifeline(loop: _Loop, fd: int) -> None:
    """`fd` is the read end of a pipe whose write end only the host's CLI holds: when it
    becomes readable (end of file), the CLI is gone however it died, and so is the bottle.
    (A parent-death signal would not do: it is not delivered across the change of uid.)"""
    os.set_inheritable(fd, False)
    loop.watch(fd, lambda events: os._exit(EXIT_LIFELINE), _IN)


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

    loop = _Loop()
    init = _Init()
    if options.lifeline is not None:
        _watch_lifeline(loop, options.lifeline)
    servers = [
        _Server(loop, sock, item.socket_path)
        for item, sock in zip(options.listeners, listen_socks, strict=True)
    ]

    old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, HANDLED_SIGNALS)
    for sig in (*FORWARDED_SIGNALS, _signal.SIGINT):
        loop.add_signal_handler(sig, init.forward)
    loop.add_signal_handler(_signal.SIGCHLD, lambda sig: init.reap())
    _signal.signal(_signal.SIGWINCH, _signal.SIG_IGN)

    if options.exec_socket is not None:
        try:
            _ExecServer(loop, init, options.exec_socket, old_mask, fd_limit)
        except OSError as err:
            _fail(f"relay cannot serve {options.exec_socket}: {err.strerror or err}")
    # Once the exec socket is there (the host side goes on meanwhile: its ctypes takes a
    # few ms) and before any process of the bottle exists besides this one: every command
    # is forked by this process, from the loop below at the earliest.
    guard_process_one()
    if options.command:
        pid = os.fork()
        if pid == 0:
            _exec_child(options.command, old_mask, fd_limit)
        init.child = pid
    else:
        init.hold = True
    _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
    init.reap()  # in case SIGCHLD was already consumed
    if options.exec_socket is not None:  # ready: now load what exec requests need
        with _suppress(ImportError):
            import _json  # noqa: F401
            import fcntl  # noqa: F401
            import termios  # noqa: F401

    loop.run_until(lambda: init.status is not None)
    for server in servers:
        server.close()
    assert init.status is not None
    return init.status


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        _fail(f"relay: {err}")
    return run(options)


if __name__ == "__main__":
    _code = main()
    os._exit(_code)  # skip interpreter teardown: nothing to flush, and it must stay quiet
