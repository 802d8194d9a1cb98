"""The warm process behind `cli/warm.py`: imports the CLI once, forks one child per `run`.

    python -m claude_bottle.cli.warm_server SOCKET

Started by a cold `run` (in its own session, with only the load-time environment), it
binds SOCKET (in the user's 0700 warm directory; the name is the installation's stamp),
and serves until it has been idle for IDLE_EXIT, its socket is gone or replaced, or the
installation changed. It never reads a config or a secret: only its children do, with
their caller's environment.

Each connection is a caller of this uid asking for one `run` (`warm.encode_request`), its
standard streams and working directory passed as descriptors. The caller is refused
(and runs cold) unless it is in every way this process could tell the same as this
process: same uid and gid, the same namespaces, cgroup, capabilities, no-new-privs and
seccomp state, security label, root, limits, CPU set and niceness. A bottle that reached
the socket would be refused for its namespaces alone; it cannot reach it (the warm
directory is in the host's /tmp or runtime dir, which no bottle sees).

The child becomes the caller: its session of its own, the caller's descriptors as 0-2,
its working directory, environment, umask and ignored signals, then the CLI's cold path.
This loop waits on each child's pidfd and sends its exit status to its caller; a caller
that goes away gets its child killed (SIGKILL, as a cold CLI killed with it).
"""

from __future__ import annotations

import array
import contextlib
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from claude_bottle.cli import warm
from claude_bottle.forked import exit_after

IDLE_EXIT = 600.0  # seconds without a run before the warm process leaves
TICK = 2.0  # how often it checks its socket and its installation
REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 8 << 20
MAX_FDS = 4
SAME_STATUS_FIELDS = (
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
    "Cpus_allowed_list",
    "Mems_allowed_list",
)
NAMESPACES = ("mnt", "net", "pid", "user", "ipc", "uts", "cgroup", "time")
SO_PEERPIDFD = 77  # Linux 6.5: a pidfd of the process that connected (not in Python 3.11)
# What every `run` imports inside functions, beyond `cli.main` (`tests/integration/
# test_warm.py` checks that a run after the preload imports nothing more).
RUN_MODULES = (
    "claude_bottle.cli.commands",
    "claude_bottle.cli.entry",
    "claude_bottle.cli.policy_record",
    "ctypes",  # the home image's detach
    "platformdirs",  # the user's config
)


def _preload() -> None:
    """What a `run` imports, so that a child has it: the CLI, the backends with what their
    launches import, the bundle with what it imports once serving."""
    import importlib

    import claude_bottle.bundle.service
    import claude_bottle.cli.main  # noqa: F401
    from claude_bottle.backend import registry
    from claude_bottle.bundle.server import SERVING_MODULES

    modules = [*RUN_MODULES, *SERVING_MODULES]
    for name in registry.names():
        modules += registry.get(name).launch_modules  # the class only: nothing is probed
    for module in modules:
        importlib.import_module(module)
    from claude_bottle.policy.dlp import builtin_rules

    builtin_rules()  # what each bundle's DLP scanner starts from, on its first connection


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(1 << 16)


def _status_fields(pid: str) -> dict[bytes, bytes]:
    fields = {}
    for line in _read(f"/proc/{pid}/status").splitlines():
        name, _, value = line.partition(b":")
        fields[name] = value.strip()
    return fields


def _label(pid: str) -> bytes | int:
    """The LSM label (AppArmor, SELinux), or the errno of a kernel without one."""
    try:
        return _read(f"/proc/{pid}/attr/current")
    except OSError as exc:
        return exc.errno or -1


def _nice(pid: str) -> bytes:
    return _read(f"/proc/{pid}/stat").rpartition(b")")[2].split()[16]


def peer_problem(pid: int, uid: int, gid: int) -> str | None:
    """Why a caller (from SO_PEERCRED) may not be served here, or None."""
    if uid != os.getuid() or gid != os.getgid():
        return "another user"
    theirs, ours = str(pid), "self"
    try:
        for name in NAMESPACES:
            path = f"/proc/{{}}/ns/{name}"
            if os.path.exists(path.format(ours)) and os.readlink(
                path.format(theirs)
            ) != os.readlink(path.format(ours)):
                return f"another {name} namespace"
        for part in ("cgroup", "limits", "oom_score_adj"):
            if _read(f"/proc/{theirs}/{part}") != _read(f"/proc/{ours}/{part}"):
                return f"another {part}"
        their_status, our_status = _status_fields(theirs), _status_fields(ours)
        for field in SAME_STATUS_FIELDS:
            if their_status.get(field.encode()) != our_status.get(field.encode()):
                return f"another {field}"
        if _nice(theirs) != _nice(ours):
            return "another niceness"
        if _label(theirs) != _label(ours):
            return "another security label"
        their_root, our_root = os.stat(f"/proc/{theirs}/root"), os.stat("/proc/self/root")
        if (their_root.st_dev, their_root.st_ino) != (our_root.st_dev, our_root.st_ino):
            return "another root"
    except OSError:
        return "a caller whose /proc cannot be read"
    return None


def _same_process_checked(conn: socket.socket, check: Callable[[], str | None]) -> str | None:
    """`check` (which reads /proc/PID), refused unless the caller still lives after it:
    a pid is not reused while its process (or its zombie) exists, so what /proc showed
    was the caller's. A kernel without SO_PEERPIDFD (before 6.5) has only the pid."""
    try:
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        return check()
    try:
        problem = check()
        signal.pidfd_send_signal(pidfd, 0)  # ProcessLookupError: gone meanwhile
        return problem
    except ProcessLookupError:
        return "a caller that ended"
    finally:
        os.close(pidfd)


class Request:
    def __init__(self, data: bytes, fds: list[int]) -> None:
        fields = data.split(b"\0")
        if len(fields) < 5 or fields[0] != warm.MAGIC or len(fds) != MAX_FDS:
            raise ValueError("malformed request")
        self.stamp = fields[1].decode(errors="surrogateescape")
        self.umask = int(fields[2]) & 0o777
        self.ignored = [int(n) for n in fields[3].split(b",") if n]
        count = int(fields[4])
        if count < 1 or 5 + count > len(fields):
            raise ValueError("malformed request")
        self.argv = [os.fsdecode(arg) for arg in fields[5 : 5 + count]]
        self.env = [item.partition(b"=") for item in fields[5 + count :]]
        self.fds = fds


def _receive(conn: socket.socket) -> Request:
    conn.settimeout(REQUEST_TIMEOUT)
    fds = array.array("i")
    head, ancillary, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    try:
        length = int.from_bytes(head, "big")
        if len(head) != 4 or length > MAX_REQUEST:
            raise ValueError("malformed request")
        data = b""
        while len(data) < length:
            chunk = conn.recv(min(1 << 20, length - len(data)))
            if not chunk:
                raise ValueError("short request")
            data += chunk
        return Request(data, list(fds))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _become_caller(request: Request) -> None:
    """In the child: the caller's session-less process state, then the cold path."""
    os.setsid()
    for target, fd in enumerate(request.fds[:3]):
        os.dup2(fd, target)
    os.fchdir(request.fds[3])
    for fd in request.fds:
        if fd > 2:
            os.close(fd)
    os.environb.clear()
    os.environb.update({name: value for name, _, value in request.env if name})
    os.umask(request.umask)
    for number in signal.valid_signals():
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        handler: signal.Handlers | Callable[[int, FrameType | None], object] = signal.SIG_DFL
        if number in request.ignored or number in (signal.SIGPIPE, signal.SIGXFSZ):
            handler = signal.SIG_IGN  # the latter two as the interpreter sets them at start
        elif number == signal.SIGINT:
            handler = signal.default_int_handler
        with contextlib.suppress(OSError, ValueError):
            signal.signal(number, handler)
    sys.argv = request.argv


class Server:
    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp = warm.stamp()
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, tuple[socket.socket, int]] = {}  # pidfd -> (caller, pid)
        self.last_run = time.monotonic()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        partial = f"{path}.{os.getpid()}"
        old_umask = os.umask(0o077)
        try:
            self.listener.bind(partial)
        finally:
            os.umask(old_umask)
        self.listener.listen(64)
        os.replace(partial, path)  # a warm process racing this one for the name loses it
        self.inode = os.stat(path).st_ino
        with contextlib.suppress(OSError):
            os.unlink(path + warm.STARTING)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")

    def owns_socket(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def serve(self) -> None:
        while True:
            for key, _ in self.selector.select(TICK):
                if key.data == "accept":
                    self._accept()
                elif key.data == "caller":
                    self._caller_event(key.fileobj)  # type: ignore[arg-type]
                else:
                    self._child_ended(key.data)
            if not self.children and self._should_leave():
                return

    def _should_leave(self) -> bool:
        if time.monotonic() - self.last_run > IDLE_EXIT or not self.owns_socket():
            return True
        return warm.stamp() != self.stamp

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            pid, uid, gid = (int.from_bytes(creds[i : i + 4], sys.byteorder) for i in (0, 4, 8))
            problem = _same_process_checked(conn, lambda: peer_problem(pid, uid, gid))
            if problem is not None:  # refused before a byte of its request is read
                self._answer(conn, f"refused {problem.replace(' ', '-')}")
                conn.close()
                return
            request = _receive(conn)
        except (OSError, ValueError):
            conn.close()
            return
        if request.stamp != self.stamp:
            for fd in request.fds:
                os.close(fd)
            self._answer(conn, "refused another-installation")
            conn.close()
            return
        self.last_run = time.monotonic()
        # The child waits for "go", written once its caller has its pid: a caller that
        # never hears of it runs cold, and its run must then not run here as well.
        go_r, go_w = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(go_w)
            self._child(conn, request, go_r)
        os.close(go_r)
        for fd in request.fds:
            os.close(fd)
        pidfd = os.pidfd_open(child)
        self.children[pidfd] = (conn, child)
        self.selector.register(pidfd, selectors.EVENT_READ, pidfd)
        self.selector.register(conn, selectors.EVENT_READ, "caller")
        if self._answer(conn, f"pid {child}"):
            os.write(go_w, b"g")
        os.close(go_w)

    def _child(self, conn: socket.socket, request: Request, go: int) -> NoReturn:
        def become_caller_and_run() -> None:
            if os.read(go, 1) != b"g":
                raise SystemExit(1)  # its caller did not learn of it (and runs cold)
            os.close(go)
            self.selector.close()
            self.listener.close()
            for pidfd, (caller, _) in self.children.items():
                os.close(pidfd)
                caller.close()
            conn.close()
            _become_caller(request)
            from claude_bottle.cli import entry

            entry.run_cold()

        exit_after(become_caller_and_run)

    def _caller_event(self, conn: socket.socket) -> None:
        """A caller that closed its end (it died) has its child killed."""
        try:
            data = conn.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return  # nothing is expected from a caller after its request
        self.selector.unregister(conn)
        for _, (caller, pid) in self.children.items():
            if caller is conn:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _child_ended(self, pidfd: int) -> None:
        conn, pid = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self._answer(conn, f"exit {os.waitstatus_to_exitcode(status)}")
        with contextlib.suppress(KeyError):
            self.selector.unregister(conn)
        conn.close()

    @staticmethod
    def _answer(conn: socket.socket, line: str) -> bool:
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            conn.sendall(line.encode() + b"\n")
        except OSError:
            return False  # the caller is gone
        return True


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m claude_bottle.cli.warm_server SOCKET")
    path = sys.argv[1]
    try:
        _preload()
        server = Server(path)
    except Exception:
        # The caller backs off from starting another for a while (`warm.SPAWN_BACKOFF`).
        with open(f"{path}.failed", "w"):
            pass
        raise
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # not its caller's: it has none
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leaves no socket behind
    try:
        server.serve()
    finally:
        if server.owns_socket():
            os.unlink(path)


if __name__ == "__main__":
    main()
