"""The bottle's process 1 (bundle/relay.py): argv, exit statuses, signals and the TCP relay.

The relay runs as a real subprocess, outside any sandbox, listening on a free loopback
port; small unix-socket servers in this process stand in for the bundle.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.bundle import relay

RELAY = Path(relay.__file__).resolve()
TIMEOUT = 15.0


# --- helpers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class UnixServers:
    """Unix-socket stand-ins for the bundle, served by an asyncio loop in a thread.

    echo.sock   echoes everything, closes after the client's EOF
    count.sock  reads until EOF, then answers "<bytes read>\\n" and closes
    banner.sock sends "banner", half-closes, then counts what it still receives
    """

    def __init__(self, directory: Path) -> None:
        self.echo = str(directory / "echo.sock")
        self.count = str(directory / "count.sock")
        self.banner = str(directory / "banner.sock")
        self.banner_counts: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list[asyncio.AbstractServer] = []

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 18):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _count(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while data := await reader.read(1 << 18):
            total += len(data)
        writer.write(f"{total}\n".encode())
        await writer.drain()
        writer.close()

    async def _banner(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner")
        await writer.drain()
        writer.write_eof()
        total = 0
        while data := await reader.read(1 << 18):
            total += len(data)
        self.banner_counts.append(total)
        writer.close()

    async def _start(self) -> None:
        for path, handler in (
            (self.echo, self._echo),
            (self.count, self._count),
            (self.banner, self._banner),
        ):
            self.servers.append(await asyncio.start_unix_server(handler, path, backlog=1024))

    def __enter__(self) -> UnixServers:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)


class Relays:
    """Starts relay subprocesses and makes sure none outlives its test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        args: list[str],
        *,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        argv = [*(prefix or []), sys.executable, "-I", "-S", str(RELAY), *args]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.procs.append(proc)
        return proc

    def serve(self, listeners: dict[int, str], command: list[str] | None = None) -> int:
        """Start a relay that keeps running (its command sleeps) and wait until it listens."""
        ready = self.directory / f"ready-{len(self.procs)}"
        args: list[str] = []
        for port, path in listeners.items():
            args += ["--listen", f"{port}={path}"]
        args += ["--ready-file", str(ready), "--", *(command or ["sleep", "60"])]
        proc = self.start(args)
        wait_for(lambda: ready.exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate(timeout=TIMEOUT)
        assert ready.read_text() == "ready\n"
        return proc.pid

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            if proc.stdout:
                proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()


def wait_for(condition: object, timeout: float = TIMEOUT) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def run_relay(
    relays: Relays, args: list[str], env: dict[str, str] | None = None
) -> tuple[int, bytes, bytes]:
    proc = relays.start(args, env=env)
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return sock


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[UnixServers]:
    with UnixServers(tmp_path) as s:
        yield s


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[Relays]:
    r = Relays(tmp_path)
    try:
        yield r
    finally:
        r.stop()


# --- pure logic --------------------------------------------------------------------


def test_parse_args_full_command_line() -> None:
    opts = relay.parse_args(
        [
            "--listen",
            "8080=/run/b/proxy.sock",
            "--listen=9000=/run/b/other.sock",
            "--ready-file",
            "/tmp/r",
            "--",
            "claude",
            "--listen",
            "--",
            "-x",
        ]
    )
    assert opts.listeners == (
        relay.Listener(8080, "/run/b/proxy.sock"),
        relay.Listener(9000, "/run/b/other.sock"),
    )
    assert opts.ready_file == "/tmp/r"
    assert opts.command == ("claude", "--listen", "--", "-x")


def test_parse_args_ready_file_is_optional_and_path_may_contain_equals() -> None:
    opts = relay.parse_args(["--listen", "1=/a=b", "--", "true"])
    assert opts.listeners == (relay.Listener(1, "/a=b"),)
    assert opts.ready_file is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--listen", "8080=/s"],  # no --
        ["--listen", "8080=/s", "--"],  # no command
        ["--", "true"],  # no listener
        ["--listen", "8080", "--", "true"],
        ["--listen", "8080=", "--", "true"],
        ["--listen", "http=/s", "--", "true"],
        ["--listen", "0=/s", "--", "true"],
        ["--listen", "65536=/s", "--", "true"],
        ["--listen", "-1=/s", "--", "true"],
        ["--listen", "80=/a", "--listen", "80=/b", "--", "true"],
        ["--bogus", "--listen", "80=/a", "--", "true"],
        ["--listen", "80=/a", "--ready-file", "", "--", "true"],
    ],
)
def test_parse_args_rejects(argv: list[str]) -> None:
    with pytest.raises(relay.UsageError):
        relay.parse_args(argv)


def test_exit_status_mapping() -> None:
    assert relay.exit_status(0) == 0
    assert relay.exit_status(7 << 8) == 7
    assert relay.exit_status(255 << 8) == 255
    assert relay.exit_status(signal.SIGKILL) == 128 + 9
    assert relay.exit_status(signal.SIGTERM | 0x80) == 128 + 15  # core dumped


def test_exec_failure_codes() -> None:
    assert relay.exec_failure_code(FileNotFoundError(2, "x")) == 127
    assert relay.exec_failure_code(NotADirectoryError(20, "x")) == 127
    assert relay.exec_failure_code(PermissionError(13, "x")) == 126
    assert relay.exec_failure_code(OSError(8, "exec format error")) == 126


def test_sigint_reaches_command_only_in_terminal_foreground() -> None:
    def yes(fd: int) -> bool:
        return True

    def no(fd: int) -> bool:
        return False

    def broken(fd: int) -> int:
        raise OSError(25, "not a tty")

    assert relay.sigint_reaches_command(0, yes, lambda fd: 42, lambda: 42)
    assert not relay.sigint_reaches_command(0, yes, lambda fd: 41, lambda: 42)
    assert not relay.sigint_reaches_command(0, no, lambda fd: 42, lambda: 42)
    assert not relay.sigint_reaches_command(0, yes, broken, lambda: 42)


# --- the relay -----------------------------------------------------------------------


def test_round_trip_and_multiple_listeners(servers: UnixServers, relays: Relays) -> None:
    echo_port, count_port = free_port(), free_port()
    relays.serve({echo_port: servers.echo, count_port: servers.count})
    with connect(echo_port) as sock:
        sock.sendall(b"hello bottle")
        assert sock.recv(100) == b"hello bottle"
        sock.sendall(b"again")
        assert sock.recv(100) == b"again"
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
    with connect(count_port) as sock:
        sock.sendall(b"x" * 1000)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"1000\n"


def test_200_concurrent_connections(servers: UnixServers, relays: Relays) -> None:
    port = free_port()
    relays.serve({port: servers.echo})

    async def one(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = f"connection {i} ".encode() * (1 + i % 50)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        got = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert got == payload
        return got

    async def all_of_them() -> list[bytes]:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), TIMEOUT)

    results = asyncio.run(all_of_them())
    assert len(results) == 200


def test_32_mib_round_trip_intact(servers: UnixServers, relays: Relays) -> None:
    port = free_port()
    relays.serve({port: servers.echo})
    data = os.urandom(1 << 20) * 32
    with connect(port) as sock:
        errors: list[BaseException] = []

        def send() -> None:
            try:
                view = memoryview(data)
                for off in range(0, len(data), 1 << 20):
                    sock.sendall(view[off : off + (1 << 20)])
                sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:
                errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = recv_all(sock)
        sender.join(TIMEOUT)
    assert not errors
    assert len(got) == len(data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_client_half_close_still_gets_reply(servers: UnixServers, relays: Relays) -> None:
    port = free_port()
    relays.serve({port: servers.count})
    with connect(port) as sock:
        sock.sendall(b"y" * 100_000)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"100000\n"


def test_server_half_close_client_can_still_send(servers: UnixServers, relays: Relays) -> None:
    port = free_port()
    relays.serve({port: servers.banner})
    with connect(port) as sock:
        got = b""
        while len(got) < len(b"banner"):
            chunk = sock.recv(100)
            assert chunk
            got += chunk
        assert got == b"banner"
        assert sock.recv(100) == b""  # server's EOF arrives while our side stays open
        sock.sendall(b"z" * 50_000)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
    wait_for(lambda: servers.banner_counts == [50_000])


def test_missing_unix_socket_closes_client_promptly(tmp_path: Path, relays: Relays) -> None:
    port = free_port()
    relays.serve({port: str(tmp_path / "gone.sock")})
    for _ in range(20):  # no retry storm, no hang, the relay keeps serving
        start = time.monotonic()
        with connect(port) as sock:
            sock.settimeout(5)
            try:
                sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
                assert sock.recv(100) == b""
            except (ConnectionResetError, BrokenPipeError):
                pass
        assert time.monotonic() - start < 2


def test_relay_writes_nothing_to_stdout(servers: UnixServers, relays: Relays) -> None:
    port = free_port()
    proc = relays.start(
        ["--listen", f"{port}={servers.echo}", "--", "sh", "-c", "echo from-command; sleep 0.5"]
    )
    wait_for(lambda: _connectable(port) or proc.poll() is not None)
    with connect(port) as sock:
        sock.sendall(b"ping")
        assert sock.recv(10) == b"ping"
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0
    assert out == b"from-command\n"
    assert err == b""


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --- process 1 duties ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [("exit 0", 0), ("exit 7", 7), ("kill -KILL $$", 128 + 9), ("kill -TERM $$", 128 + 15)],
)
def test_exit_status_propagates(tmp_path: Path, relays: Relays, script: str, expected: int) -> None:
    code, out, err = run_relay(
        relays, ["--listen", f"{free_port()}={tmp_path}/s.sock", "--", "sh", "-c", script]
    )
    assert code == expected
    assert out == b""
    assert err == b""


def test_missing_command_exits_127(tmp_path: Path, relays: Relays) -> None:
    code, out, err = run_relay(
        relays, ["--listen", f"{free_port()}={tmp_path}/s.sock", "--", "no-such-command-xyz"]
    )
    assert code == 127
    assert out == b""
    assert err.decode().strip() == (
        "claude-bottle: cannot run no-such-command-xyz: No such file or directory"
    )


def test_non_executable_command_exits_126(tmp_path: Path, relays: Relays) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    code, _, err = run_relay(
        relays, ["--listen", f"{free_port()}={tmp_path}/s.sock", "--", str(script)]
    )
    assert code == 126
    assert b"cannot run" in err and b"Permission denied" in err


def test_command_found_on_path(tmp_path: Path, relays: Relays) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "my-tool"
    tool.write_text("#!/bin/sh\nexit 5\n")
    tool.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    code, _, _ = run_relay(
        relays, ["--listen", f"{free_port()}={tmp_path}/s.sock", "--", "my-tool"], env=env
    )
    assert code == 5


def test_command_gets_default_signal_dispositions(tmp_path: Path, relays: Relays) -> None:
    # Python ignores SIGPIPE and the relay ignores SIGWINCH: the command must not inherit that.
    code, out, _ = run_relay(
        relays,
        [
            "--listen",
            f"{free_port()}={tmp_path}/s.sock",
            "--",
            "sh",
            "-c",
            "grep -E '^Sig(Ign|Blk):' /proc/self/status",
        ],
    )
    assert code == 0
    fields = dict(line.split(":\t") for line in out.decode().splitlines())
    assert int(fields["SigIgn"], 16) == 0
    assert int(fields["SigBlk"], 16) == 0


@pytest.mark.parametrize(
    ("sig", "trap", "expected"), [(signal.SIGTERM, "TERM", 42), (signal.SIGHUP, "HUP", 43)]
)
def test_signal_forwarded_to_command(
    tmp_path: Path, relays: Relays, sig: signal.Signals, trap: str, expected: int
) -> None:
    mark = tmp_path / "trapped"
    script = f'trap "exit {expected}" {trap}; touch {mark}; while :; do sleep 0.1; done'
    proc = relays.start(["--listen", f"{free_port()}={tmp_path}/s.sock", "--", "sh", "-c", script])
    wait_for(lambda: mark.exists() or proc.poll() is not None)
    assert proc.poll() is None
    proc.send_signal(sig)
    proc.wait(TIMEOUT)
    assert proc.returncode == expected


def test_sigint_forwarded_when_not_a_terminal_foreground(tmp_path: Path, relays: Relays) -> None:
    mark = tmp_path / "trapped"
    script = f'trap "exit 44" INT; touch {mark}; while :; do sleep 0.1; done'
    proc = relays.start(["--listen", f"{free_port()}={tmp_path}/s.sock", "--", "sh", "-c", script])
    wait_for(lambda: mark.exists() or proc.poll() is not None)
    proc.send_signal(signal.SIGINT)
    proc.wait(TIMEOUT)
    assert proc.returncode == 44


def test_sigwinch_does_not_stop_the_relay(tmp_path: Path, relays: Relays) -> None:
    mark = tmp_path / "started"
    proc = relays.start(
        [
            "--listen",
            f"{free_port()}={tmp_path}/s.sock",
            "--",
            "sh",
            "-c",
            f"touch {mark}; sleep 0.5; exit 3",
        ]
    )
    wait_for(lambda: mark.exists() or proc.poll() is not None)
    proc.send_signal(signal.SIGWINCH)
    proc.wait(TIMEOUT)
    assert proc.returncode == 3


def test_ready_file_written_before_command_runs(tmp_path: Path, relays: Relays) -> None:
    ready = tmp_path / "ready"
    code, out, _ = run_relay(
        relays,
        [
            "--listen",
            f"{free_port()}={tmp_path}/s.sock",
            "--ready-file",
            str(ready),
            "--",
            "cat",
            str(ready),
        ],
    )
    assert code == 0
    assert out == b"ready\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("ready")] == ["ready"]


def test_port_in_use_exits_125(tmp_path: Path, relays: Relays) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        ready = tmp_path / "ready"
        mark = tmp_path / "ran"
        code, out, err = run_relay(
            relays,
            [
                "--listen",
                f"{port}={tmp_path}/s.sock",
                "--ready-file",
                str(ready),
                "--",
                "touch",
                str(mark),
            ],
        )
    assert code == 125
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0]
    assert not ready.exists()
    assert not mark.exists()


def test_usage_error_exits_125(relays: Relays) -> None:
    code, out, err = run_relay(relays, ["--listen", "8080=/x.sock"])
    assert code == 125
    assert out == b""
    assert err.startswith(b"claude-bottle: relay: ")
    assert len(err.decode().splitlines()) == 1


def _bwrap_usable() -> bool:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    try:
        probe = subprocess.run(
            [bwrap, "--unshare-user", "--unshare-pid", "--dev-bind", "/", "/", "true"],
            capture_output=True,
            timeout=TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _bwrap_usable(), reason="bubblewrap with user namespaces not available")
def test_as_pid_1_reaps_orphans_and_forwards_status(tmp_path: Path, relays: Relays) -> None:
    # The orphan (a backgrounded sleep whose parent subshell exits) is reparented to the
    # relay, process 1 of the new pid namespace; once it exits no zombie may remain.
    script = (
        'test "$PPID" = 1 || exit 90; '
        "(sleep 0.1 &); (sleep 0.1 &); sleep 1; "
        "for s in /proc/[0-9]*/status; do grep -q '^State:.*Z' $s 2>/dev/null && exit 91; done; "
        "exit 9"
    )
    bwrap = [
        "bwrap",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--as-pid-1",
        "--die-with-parent",
        "--dev-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--",
    ]
    proc = relays.start(
        ["--listen", f"8080={tmp_path}/s.sock", "--", "sh", "-c", script], prefix=bwrap
    )
    out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err) == (9, b"", b"")
