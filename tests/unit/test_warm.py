"""The warm start's pieces without a warm process: when a run may be served warm, the
request's encoding, and what the installation stamp notices. The served runs themselves
are in tests/integration/test_warm.py."""

from __future__ import annotations

import os
import pty
import signal
import socket
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest

from claude_bottle.cli import warm, warm_server


def test_a_terminal_on_any_stream_or_detach_or_the_switch_means_cold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(warm.DISABLE_VAR, raising=False)
    terminals: set[int] = set()
    monkeypatch.setattr(warm.os, "isatty", lambda fd: fd in terminals)
    assert warm.eligible(detach=False)
    assert not warm.eligible(detach=True)
    for fd in (0, 1, 2):
        terminals.clear()
        terminals.add(fd)
        assert not warm.eligible(detach=False), fd
    terminals.clear()
    monkeypatch.setenv(warm.DISABLE_VAR, "0")
    assert not warm.eligible(detach=False)


def test_a_request_carries_arguments_and_environment_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(os.environb, b"CB_ODD", b"\xff\xfe not utf-8 = still one value")
    argv = ["claude-bottle", "run", "--", "printf", "%s", "caf\udce9"]  # undecodable byte
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        data = warm.encode_request("the stamp", argv)
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    request = warm_server.Request(data, [10, 11, 12, 13])
    assert request.stamp == "the stamp"
    assert request.argv == argv
    assert int(signal.SIGUSR1) in request.ignored
    env = {name: value for name, _, value in request.env}
    assert env[b"CB_ODD"] == b"\xff\xfe not utf-8 = still one value"
    assert env[b"PATH"] == os.environb[b"PATH"]


@pytest.mark.parametrize(
    "data, fds",
    [
        (b"not-the-magic\0s\0" + b"18\0\0" + b"1\0claude-bottle", [3, 4, 5, 6]),
        (warm.MAGIC + b"\0s\0" + b"18\0\0" + b"5\0claude-bottle", [3, 4, 5, 6]),  # count
        (warm.MAGIC + b"\0s\0" + b"18\0\0" + b"1\0claude-bottle", [3, 4]),  # streams missing
        (warm.MAGIC + b"\0s\0" + b"x\0\0" + b"1\0claude-bottle", [3, 4, 5, 6]),
    ],
)
def test_a_malformed_request_is_refused(data: bytes, fds: list[int]) -> None:
    with pytest.raises(ValueError):
        warm_server.Request(data, fds)


def test_the_stamp_changes_with_the_code_and_the_load_time_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = warm.stamp()
    monkeypatch.setenv("PYTHONCBTEST", "1")
    assert warm.stamp() != before
    monkeypatch.delenv("PYTHONCBTEST")
    monkeypatch.setenv("CB_NOT_READ_WHILE_LOADING", "1")
    assert warm.stamp() == before
    source = Path(warm.__file__)
    info = source.stat()
    try:
        os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
        assert warm.stamp() != before
    finally:
        os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert warm.stamp() == before


def test_the_warm_dir_must_be_the_callers_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    directory = warm.socket_dir()
    assert directory == str(tmp_path / "claude-bottle-warm")
    assert oct(os.stat(directory).st_mode & 0o777) == "0o700"
    os.chmod(directory, 0o755)  # made by someone, or opened up: never used
    assert warm.socket_dir() is None


def test_a_run_on_a_terminal_starts_no_warm_process(tmp_path: Path) -> None:
    """`--help` stands for any run: the caller only decides where it runs."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    env.pop(warm.DISABLE_VAR, None)
    leader, follower = pty.openpty()
    try:
        subprocess.run(
            [sys.executable, "-m", "claude_bottle", "run", "--backend", "nope", "--", "true"],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert not (tmp_path / "claude-bottle-warm").exists()


def test_a_caller_that_ends_while_it_is_checked_is_refused(tmp_path: Path) -> None:
    """Its pid could be another process's by then: what /proc said was not the caller's."""
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    connect = f"import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect({path!r}); "
    alive = subprocess.Popen([sys.executable, "-c", connect + "sys.stdin.read()"], stdin=PIPE)
    ended = subprocess.Popen([sys.executable, "-c", connect])
    try:
        first, _ = listener.accept()
        second, _ = listener.accept()
        results = []
        for conn in (first, second):

            def check() -> str | None:
                if ended.poll() is None:
                    ended.wait(30)  # reaped: its pid is free
                return None

            results.append(warm_server._same_process_checked(conn, check))
        assert sorted(results, key=str) == sorted([None, "a caller that ended"], key=str)
    finally:
        alive.communicate(b"", timeout=30)
        listener.close()
