"""Client side of the exec protocol spoken by the bottle's process 1 (bundle/relay.py).

The host connects to the bottle's exec socket and sends one JSON line
(argv, env, cwd, tty) with the three stdio file descriptors attached
(SCM_RIGHTS). The relay forks the command inside every namespace of the
bottle, answers {"pid": N}, accepts {"signal": N} lines, and finally sends
{"exit": STATUS}. Commands started this way inherit the bottle's dropped
capabilities and no-new-privileges: entering the bottle never needs host
privileges, and signals reach the command itself.

The socket lives in a directory the bottle writes to, so its name proves nothing:
the bottle may have replaced it with a symlink to some host socket, or with a
listener of its own. The host opens it without following links (an O_PATH handle
on a socket inode, connected to through /proc/self/fd), and talks only to the
listener whose SO_PEERCRED pid is the bottle's relay.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from claude_bottle.errors import BottleError

MAX_MESSAGE = 64 * 1024
"""Longest line the relay's side may send: its messages are a few bytes."""


def connect_to_relay(exec_socket: Path, relay_pid: int | None) -> socket.socket:
    """A connection to the bottle's relay on `exec_socket`, never to anything else.

    `relay_pid` is the relay's pid as this host sees it; None when it is not visible
    here (an engine in another pid namespace), and then no host process may answer.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        handle = _open_socket_inode(exec_socket)
        try:
            sock.connect(f"/proc/self/fd/{handle}")
        finally:
            os.close(handle)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as exc:
        sock.close()
        raise BottleError(
            f"cannot reach the bottle on {exec_socket}: {exc.strerror or exc}",
            "the bottle has stopped; see `claude-bottle ls`",
        ) from exc
    peer_pid: int = struct.unpack("3i", creds)[0]
    if peer_pid != (relay_pid or 0):
        sock.close()
        raise BottleError(
            f"refusing the bottle's exec socket {exec_socket}: it is not served by the "
            "bottle's relay (something in the bottle replaced it)",
            "stop the bottle with `claude-bottle stop NAME` and inspect its workspace",
        )
    return sock


def _open_socket_inode(path: Path) -> int:
    """An O_PATH handle on the socket at `path`: no symlink followed, in the directory or
    at its name, and only a socket accepted."""
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        handle = os.open(path.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    finally:
        os.close(directory)
    if not stat.S_ISSOCK(os.fstat(handle).st_mode):
        os.close(handle)
        raise OSError(0, "not a socket (a symlink or a file was put in its place)")
    return handle


class ExecSession:
    def __init__(
        self,
        exec_socket: Path,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        fds: tuple[int, int, int],
        tty: bool,
        detach: bool = False,
        *,
        relay_pid: int | None,
    ) -> None:
        self.sock = connect_to_relay(exec_socket, relay_pid)
        try:
            header = (
                json.dumps(
                    {"argv": list(argv), "env": dict(env), "cwd": cwd, "tty": tty, "detach": detach}
                ).encode()
                + b"\n"
            )
            self.sock.sendmsg(
                [header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        except OSError as exc:
            self.sock.close()
            raise BottleError(
                f"cannot reach the bottle on {exec_socket}: {exc.strerror or exc}",
                "the bottle has stopped; see `claude-bottle ls`",
            ) from exc
        self._buffer = b""
        try:
            pid = self._read_message().get("pid")
        except BaseException:
            self.sock.close()
            raise
        self.pid = pid if isinstance(pid, int) else 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def _read_message(self) -> dict[str, object]:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_MESSAGE:
                raise BottleError("the bottle sent an oversized exec message")
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BottleError("the bottle closed the exec session unexpectedly")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise BottleError("the bottle sent a malformed exec message")
        if "error" in message:
            raise BottleError(f"cannot start the command in the bottle: {message['error']}")
        return message

    def close(self) -> None:
        self.sock.close()

    def signal(self, signum: int) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(json.dumps({"signal": int(signum)}).encode() + b"\n")

    def wait(self) -> int:
        """Block until the command exits; its status (128+N if killed by signal N)."""
        while True:
            message = self._read_message()
            if "exit" in message:
                self.sock.close()
                status = message["exit"]
                return int(status) if isinstance(status, int) else 1
