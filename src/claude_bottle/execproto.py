"""Client side of the exec protocol spoken by the bottle's process 1 (bundle/relay.py).

The host connects to the bottle's exec socket and sends one JSON line
(argv, env, cwd, tty) with the three stdio file descriptors attached
(SCM_RIGHTS). The relay forks the command inside every namespace of the
bottle, answers {"pid": N}, accepts {"signal": N} lines, and finally sends
{"exit": STATUS}. Commands started this way inherit the bottle's dropped
capabilities and no-new-privileges: entering the bottle never needs host
privileges, and signals reach the command itself.
"""

from __future__ import annotations

import array
import contextlib
import json
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from claude_bottle.errors import BottleError


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
    ) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(str(exec_socket))
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
        pid = self._read_message().get("pid")
        self.pid = pid if isinstance(pid, int) else 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def _read_message(self) -> dict[str, object]:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BottleError("the bottle closed the exec session unexpectedly")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
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
