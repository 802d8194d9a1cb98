"""The host trusts no path the bottle can write: the exec socket (issue 18 item 8)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.errors import BottleError
from claude_bottle.execproto import ExecSession


class _Listener:
    """A unix socket listener that records whether anyone connected."""

    def __init__(self, path: Path, answer: bytes = b"") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.sock.settimeout(2)
        self.accepted = 0
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.accepted += 1
        with conn, contextlib.suppress(OSError):  # the client may hang up first
            conn.recv(65536)
            conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def exec_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "exec"
    directory.mkdir()
    yield directory


def _session(path: Path, relay_pid: int | None) -> ExecSession:
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        return ExecSession(path, ["true"], {}, "/", (null, null, null), False, relay_pid=relay_pid)
    finally:
        os.close(null)


def test_a_symlink_planted_for_the_exec_socket_is_never_followed(
    tmp_path: Path, exec_dir: Path
) -> None:
    host_socket = tmp_path / "host-service.sock"  # e.g. the bundle's control socket
    host = _Listener(host_socket)
    (exec_dir / "exec.sock").symlink_to(host_socket)
    try:
        with pytest.raises(BottleError, match="not a socket"):
            _session(exec_dir / "exec.sock", relay_pid=os.getpid())
    finally:
        host.close()
    assert host.accepted == 0  # nothing, not even a connection, reached the host socket


def test_a_symlinked_exec_directory_is_never_followed(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    host = _Listener(real / "exec.sock")
    (tmp_path / "exec").symlink_to(real)
    try:
        with pytest.raises(BottleError, match="cannot reach the bottle"):
            _session(tmp_path / "exec" / "exec.sock", relay_pid=os.getpid())
    finally:
        host.close()
    assert host.accepted == 0


def test_a_listener_that_is_not_the_relay_is_refused(exec_dir: Path) -> None:
    """Something in the bottle unlinked the relay's socket and bound its own."""
    impostor = _Listener(exec_dir / "exec.sock", answer=b'{"pid": 7}\n{"exit": 0}\n')
    try:
        with pytest.raises(BottleError, match="not served by the bottle's relay"):
            _session(exec_dir / "exec.sock", relay_pid=os.getpid() + 1)
        with pytest.raises(BottleError, match="not served by the bottle's relay"):
            _session(exec_dir / "exec.sock", relay_pid=None)  # a host process answered
    finally:
        impostor.close()


def test_the_relay_itself_is_accepted(exec_dir: Path) -> None:
    relay = _Listener(exec_dir / "exec.sock", answer=b'{"pid": 7}\n{"exit": 3}\n')
    try:
        session = _session(exec_dir / "exec.sock", relay_pid=os.getpid())
        assert session.pid == 7
        assert session.wait() == 3
    finally:
        relay.close()
    assert relay.accepted == 1


@pytest.mark.parametrize("answer", [b"x" * 200_000, b"not json\n", b"[1]\n"])
def test_hostile_answers_are_errors_not_crashes(exec_dir: Path, answer: bytes) -> None:
    relay = _Listener(exec_dir / "exec.sock", answer=answer)
    try:
        with pytest.raises(BottleError):
            _session(exec_dir / "exec.sock", relay_pid=os.getpid())
    finally:
        relay.close()
