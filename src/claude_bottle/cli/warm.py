"""Warm start of `claude-bottle run`: the caller's side (standard library only).

Most of a start is this interpreter importing the CLI (click, the config, the backends)
before any work. A per-user *warm process* (`warm_server.py`) has imported all of that
once and forks one child per `run`; the child takes this process's arguments,
environment, working directory and standard streams, runs the CLI exactly as this
process would have, and its exit status comes back here. One bundle per bottle stays:
each child starts its own, as a cold CLI does.

Used only where it cannot change what a run does:
- no terminal on stdin, stdout or stderr (a child outside this process's session could
  not be a terminal's foreground, nor read it as this process would); not `--detach`;
- not turned off (`CLAUDE_BOTTLE_WARM=0`);
- the warm process runs the same installation (`stamp`: interpreter, import path, the
  package's files, the environment read while modules load) and accepts only a caller of
  its own uid whose namespaces, cgroup, capabilities, seccomp state and limits are its
  own (`warm_server.peer_problem`): a caller it refuses runs cold.
Anything else (no warm process yet, a refusal, an error before the child starts) runs
cold, and a missing warm process is started in the background for the next run.

Signals this process gets are passed on to the child; if this process dies, the warm
process kills the child (as a cold CLI killed with SIGKILL: its sandbox and bundle die
with it).
"""

from __future__ import annotations

# The caller's path imports only builtin modules: `socket`, `signal` and `contextlib`
# would load `enum`, `collections` and `functools` (~5 ms of every warm run).
import _socket
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Iterator, Sequence
    from typing import NoReturn
else:
    import _signal

DISABLE_VAR = "CLAUDE_BOTTLE_WARM"
# Environment read while the interpreter starts or a module loads (encodings, import
# path, OpenSSL's configuration): the warm process serves only callers where it is the same.
LOAD_TIME_PREFIXES = ("PYTHON", "LC_", "OPENSSL", "SSL_CERT")
LOAD_TIME_NAMES = frozenset({"LANG", "LANGUAGE", "TZ"})
MAGIC = b"claude-bottle-warm-1"
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
SPAWN_BACKOFF = 600.0  # after a warm process that failed to start, this long cold
STARTING = ".starting"  # beside the socket while one caller starts its warm process
STARTING_FOR = 30.0  # a marker older than this is from a start that died


def eligible(detach: bool) -> bool:
    if detach or os.environ.get(DISABLE_VAR) == "0" or not sys.platform.startswith("linux"):
        return False
    return not any(os.isatty(fd) for fd in (0, 1, 2))


def load_time_env() -> dict[str, str]:
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k in LOAD_TIME_NAMES or k.startswith(LOAD_TIME_PREFIXES)
    }


def stamp() -> str:
    """What makes two processes run the same code the same way: the interpreter, the import
    path (but the script's or working directory in front of it), the package's files
    (a reinstall or an edit changes their sizes or times), the load-time environment."""
    package = os.path.dirname(sys.modules["claude_bottle"].__file__ or "")
    count = size = times = 0
    pending = [package]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        pending.append(entry.path)
                elif entry.name.endswith(".py"):
                    info = entry.stat(follow_symlinks=False)
                    count, size = count + 1, size + info.st_size
                    times += info.st_mtime_ns  # any one file touched changes the sum
    parts = [
        sys.executable,
        sys.version,
        package,
        f"{count}:{size}:{times}",
        f"{os.getuid()}:{os.getgid()}",
        *(sys.path if sys.flags.safe_path else sys.path[1:]),  # the warm process runs -P
        *(f"{k}={v}" for k, v in load_time_env().items()),
    ]
    return "\n".join(parts)


def socket_dir() -> str | None:
    """The caller's private directory for warm sockets (0700, its own), or None."""
    uid = os.getuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        path = os.path.join(runtime, "claude-bottle-warm")
    else:
        path = f"/tmp/claude-bottle-warm-{uid}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    info = os.lstat(path)
    import stat as _stat

    if not _stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        return None  # not ours alone (made by someone else): never used
    return path


def socket_path(directory: str, code_stamp: str) -> str:
    import zlib

    data = code_stamp.encode(errors="surrogateescape")
    return os.path.join(directory, f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}.sock")


def encode_request(code_stamp: str, argv: Sequence[str]) -> bytes:
    """NUL-separated fields (no argument or variable can hold a NUL): magic, stamp, umask,
    the signals this process ignores, the argument count, the arguments, the environment."""
    mask = os.umask(0o022)
    os.umask(mask)
    ignored = [
        str(int(number))
        for number in _signal.valid_signals()
        if _signal.getsignal(number) == _signal.SIG_IGN
    ]
    fields = [
        MAGIC,
        code_stamp.encode(errors="surrogateescape"),
        str(mask).encode(),
        ",".join(ignored).encode(),
        str(len(argv)).encode(),
        *(os.fsencode(arg) for arg in argv),
        *(k + b"=" + v for k, v in os.environb.items()),
    ]
    return b"\0".join(fields)


def run(argv: Sequence[str], detach: bool) -> int | None:
    """The run's exit status, served warm; None: run it cold."""
    if not eligible(detach):
        return None
    directory = socket_dir()
    if directory is None:
        return None
    code_stamp = stamp()
    path = socket_path(directory, code_stamp)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        _start_server(path)
        return None
    try:
        return _served(sock, code_stamp, argv)
    finally:
        sock.close()


def _served(sock: _socket.socket, code_stamp: str, argv: Sequence[str]) -> int | None:
    try:
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # a working directory that is gone: the cold CLI says so
    try:
        request = encode_request(code_stamp, argv)
        message = len(request).to_bytes(4, "big") + request
        # C ints, as SCM_RIGHTS carries them (`array` would load `collections`)
        fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2, cwd))
        sent = sock.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        sock.sendall(message[sent:])  # the descriptors went with the first bytes
    except OSError:
        return None  # nothing started: cold
    finally:
        os.close(cwd)
    answers = _lines(sock)
    first = next(answers, b"").split()
    if len(first) != 2 or first[0] != b"pid":
        return None  # refused (another namespace, another installation...): cold
    child = int(first[1])
    _forward_signals(child)
    last = next(answers, b"").split()
    if len(last) == 2 and last[0] == b"exit":
        return _as_exit(int(last[1]))
    # The warm process ended before the child: wait for the child, whose status is lost.
    _wait_for(child)
    print(
        "claude-bottle: the warm process ended during this run; its status is unknown",
        file=sys.stderr,
    )
    return 1


def _lines(sock: _socket.socket, limit: int = 256) -> Iterator[bytes]:
    """The warm process's answer lines (each at most `limit` bytes), until it closes."""
    pending = b""
    while True:
        end = pending.find(b"\n")
        if end >= 0:
            line, pending = pending[:end], pending[end + 1 :]
            yield line
            continue
        if len(pending) > limit:
            return
        try:
            data = sock.recv(limit)  # retried after a forwarded signal (PEP 475)
        except OSError:
            return
        if not data:
            return
        pending += data


def _forward_signals(child: int) -> None:
    def forward(number: int, _frame: object) -> None:
        try:  # noqa: SIM105 (contextlib is not loaded on this path)
            os.kill(child, number)
        except ProcessLookupError:
            pass

    for name in FORWARDED:
        number = getattr(_signal, name)
        if _signal.getsignal(number) != _signal.SIG_IGN:
            _signal.signal(number, forward)


def leave(status: int) -> NoReturn:
    """End this process with the run's status, without the interpreter's teardown (the
    warm process ran everything; nothing here needs finalising)."""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (contextlib is not loaded on this path)
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status & 0xFF)


def _as_exit(status: int) -> int:
    """A child killed by a signal (negative status) ends this process the same way."""
    if status >= 0:
        return status
    _signal.signal(-status, _signal.SIG_DFL)
    os.kill(os.getpid(), -status)
    return 128 - status


def _wait_for(pid: int) -> None:
    import select

    try:
        handle = os.pidfd_open(pid)
    except OSError:
        return
    try:
        select.select([handle], [], [])
    finally:
        os.close(handle)


def _start_server(path: str) -> None:
    """The warm process for `path`, in the background (its own session, no terminal, an
    environment of the load-time variables and PATH only), unless one failed lately."""
    import contextlib
    import time

    with contextlib.suppress(OSError):
        if time.time() - os.stat(path + ".failed").st_mtime < SPAWN_BACKOFF:
            return
    # One caller starts it: twenty cold runs at once would start twenty otherwise.
    marker = path + STARTING
    with contextlib.suppress(OSError):
        if time.time() - os.stat(marker).st_mtime < STARTING_FOR:
            return
        os.unlink(marker)
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except OSError:
        return  # another caller is starting it
    env = load_time_env()
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    import subprocess

    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-P", "-m", "claude_bottle.cli.warm_server", path],
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
