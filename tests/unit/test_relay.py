"""The bottle's process 1 (bundle/relay.py): argv, exit statuses, signals and the TCP relay.

The relay runs as a real subprocess, outside any sandbox, listening on a free loopback
port; small unix-socket servers in this process stand in for the bundle.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import json
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


# --- command line, as argparse parsed it ---------------------------------------------


def test_parse_args_option_forms() -> None:
    opts = relay.parse_args(
        ["--listen=1=/a", "--list", "2=/b", "--ready=/r", "--exec", "/e", "--", "true"]
    )
    assert opts.listeners == (relay.Listener(1, "/a"), relay.Listener(2, "/b"))
    assert (opts.ready_file, opts.exec_socket, opts.command) == ("/r", "/e", ("true",))
    held = relay.parse_args(["--listen", "1=/a", "--ho", "--exec-socket=/e"])
    assert (held.command, held.exec_socket) == ((), "/e")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen"], "argument --listen: expected one argument"),
        (["--listen", "1=/a", "--ready-file", "--hold"], "argument --ready-file: expected one"),
        (["--listen", "1=/a", "--hold=yes"], "argument --hold: ignored explicit argument 'yes'"),
        (["--listen", "1=/a", "--help", "x", "--hold"], "unrecognized arguments: --help x"),
        (["--listen", "1=/a", "--", "true", "--hold"], None),
        (["--listen", "1=/a", "--hold", "--", "true"], "--hold takes no command"),
        (["--listen", "1=/a", "--exec-socket", "", "--hold"], "--exec-socket must not be empty"),
    ],
)
def test_parse_args_errors_read_like_argparse(argv: list[str], message: str | None) -> None:
    if message is None:
        assert relay.parse_args(argv).command == ("true", "--hold")
        return
    with pytest.raises(relay.UsageError) as caught:
        relay.parse_args(argv)
    assert str(caught.value).startswith(message)


def test_relay_imports_nothing_slow() -> None:
    # Start-up is on the critical path of every bottle: no asyncio, argparse, json, re...
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-I", "-S", str(RELAY), "--listen"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 125
    loaded = {
        line.split("|")[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "select" in loaded
    for slow in ("asyncio", "argparse", "json", "re", "enum", "typing", "dataclasses", "socket"):
        assert slow not in loaded, sorted(loaded)


# --- flow control, early data, a busy bundle ------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _wait_until_stalled(progress: list[int], settle: float = 0.5) -> None:
    deadline = time.monotonic() + TIMEOUT
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if progress[0] != last:
            last, since = progress[0], time.monotonic()
        elif time.monotonic() - since > settle:
            return
        time.sleep(0.05)
    raise AssertionError("the writer never stalled")


def _relay_to_unix_listener(
    tmp_path: Path, relays: Relays, backlog: int
) -> tuple[socket.socket, int, int]:
    """A bare unix listener standing in for the bundle, and a relay in front of it:
    (listener, relay port, relay pid)."""
    path = str(tmp_path / "b.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(backlog)
    port = free_port()
    return listener, port, relays.serve({port: path})


TOTAL = 64 << 20  # far more than every socket buffer on the way together
CHUNK = 1 << 16


@pytest.mark.parametrize("direction", ["to_client", "to_bundle"])
def test_slow_reader_bounds_what_the_relay_buffers(
    tmp_path: Path, relays: Relays, direction: str
) -> None:
    listener, port, pid = _relay_to_unix_listener(tmp_path, relays, backlog=1)
    baseline = _rss_kib(pid)
    written = [0]
    block = os.urandom(CHUNK)

    def pump(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while written[0] < TOTAL:
                sock.sendall(block)
                written[0] += CHUNK
            sock.shutdown(socket.SHUT_WR)

    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    client.connect(("127.0.0.1", port))
    client.settimeout(TIMEOUT)
    bundle, _ = listener.accept()
    bundle.settimeout(TIMEOUT)
    writer, reader = (bundle, client) if direction == "to_client" else (client, bundle)
    thread = threading.Thread(target=pump, args=(writer,), daemon=True)
    thread.start()
    try:
        _wait_until_stalled(written)
        assert written[0] < TOTAL, "nothing held the writer back"
        grown = _rss_kib(pid) - baseline
        assert grown < 8 * 1024, f"the relay buffered {grown} KiB"
        received = 0
        buf = bytearray(1 << 20)
        while count := reader.recv_into(buf):
            received += count
        assert received == TOTAL
    finally:
        thread.join(TIMEOUT)
        for sock in (client, bundle, listener):
            sock.close()


@pytest.mark.parametrize("eof", [False, True])
def test_bytes_sent_before_the_bundle_accepts_arrive_first(
    tmp_path: Path, relays: Relays, eof: bool
) -> None:
    listener, port, _ = _relay_to_unix_listener(tmp_path, relays, backlog=8)
    request = b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    with connect(port) as client:
        client.sendall(request)  # at once, and the bundle is not even accepting yet
        if eof:
            client.shutdown(socket.SHUT_WR)
        time.sleep(0.2)
        bundle, _ = listener.accept()
        with bundle:
            bundle.settimeout(TIMEOUT)
            got = recv_all(bundle) if eof else bundle.recv(len(request))
            while not eof and len(got) < len(request):
                got += bundle.recv(len(request))
            assert got == request
            bundle.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        assert recv_all(client).startswith(b"HTTP/1.1 200 OK")
    listener.close()


def test_busy_bundle_is_retried_not_dropped(tmp_path: Path, relays: Relays) -> None:
    listener, port, _ = _relay_to_unix_listener(tmp_path, relays, backlog=0)
    fillers = []
    with contextlib.suppress(BlockingIOError):  # fill the backlog: connect() gets EAGAIN
        for _ in range(8):
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect(listener.getsockname())
    with connect(port) as client:
        client.sendall(b"ping")
        time.sleep(0.3)  # the relay is retrying now
        listener.settimeout(TIMEOUT)
        accepted = []
        for _ in range(len(fillers)):
            conn, _ = listener.accept()
            accepted.append(conn)
        # The relay's own connection is the last one in line.
        served = accepted[-1]
        served.settimeout(TIMEOUT)
        assert served.recv(10) == b"ping"
        served.sendall(b"pong")
        assert client.recv(10) == b"pong"
        for conn in accepted:
            conn.close()
    for filler in fillers:
        filler.close()
    listener.close()


# --- the exec protocol -----------------------------------------------------------------


class Exec:
    """A raw exec-protocol client: the request line with three fds, then messages."""

    def __init__(self, path: str, argv: list[str], fds: tuple[int, int, int], **extra: object):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        request = {"argv": argv, "env": {"PATH": os.environ["PATH"]}, "cwd": "/", **extra}
        self.sock.sendmsg(
            [json.dumps(request).encode() + b"\n"],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
        )
        self.buffer = b""

    def message(self) -> dict[str, object]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed after {self.buffer!r}"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def exec_relay(tmp_path: Path, relays: Relays) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    path = str(tmp_path / "exec.sock")
    proc = relays.start(
        ["--listen", f"{free_port()}={tmp_path}/s.sock", "--exec-socket", path, "--hold"]
    )
    wait_for(lambda: os.path.exists(path) or proc.poll() is not None)
    assert proc.poll() is None
    yield path, proc


def test_exec_runs_a_command_with_its_stdio(
    exec_relay: tuple[str, subprocess.Popen[bytes]],
) -> None:
    path, _ = exec_relay
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    with open(os.devnull, "rb") as null:
        session = Exec(
            path, ["sh", "-c", "echo out; echo err >&2; exit 3"], (null.fileno(), out_w, err_w)
        )
    os.close(out_w)
    os.close(err_w)
    pid = session.message()["pid"]
    assert isinstance(pid, int) and pid > 0
    assert session.message() == {"exit": 3}
    with os.fdopen(out_r, "rb") as out, os.fdopen(err_r, "rb") as err:
        assert (out.read(), err.read()) == (b"out\n", b"err\n")
    session.close()


def test_exec_delivers_signals(
    tmp_path: Path, exec_relay: tuple[str, subprocess.Popen[bytes]]
) -> None:
    path, _ = exec_relay
    mark = tmp_path / "trapped"
    script = f'trap "exit 42" USR1; touch {mark}; while :; do sleep 0.05; done'
    with open(os.devnull, "r+b") as null:
        fd = null.fileno()
        session = Exec(path, ["sh", "-c", script], (fd, fd, fd))
    session.message()
    wait_for(mark.exists)
    session.send(json.dumps({"signal": int(signal.SIGUSR1)}).encode() + b"\n")
    assert session.message() == {"exit": 42}
    session.close()


def test_exec_hangup_sends_sighup_unless_detached(
    tmp_path: Path, exec_relay: tuple[str, subprocess.Popen[bytes]]
) -> None:
    path, _ = exec_relay
    sessions = {}
    for detach in (False, True):
        mark = tmp_path / f"hup-{detach}"
        script = f'trap "touch {mark}; exit 0" HUP; sleep 30 & wait; sleep 30 & wait'
        with open(os.devnull, "r+b") as null:
            fd = null.fileno()
            sessions[detach] = Exec(path, ["sh", "-c", script], (fd, fd, fd), detach=detach)
        sessions[detach].message()
    time.sleep(0.2)  # both traps are set
    for session in sessions.values():
        session.close()
    wait_for((tmp_path / "hup-False").exists)
    time.sleep(0.3)
    assert not (tmp_path / "hup-True").exists()


def test_exec_tty_becomes_the_controlling_terminal(
    exec_relay: tuple[str, subprocess.Popen[bytes]],
) -> None:
    path, _ = exec_relay
    master, slave = os.openpty()
    session = Exec(
        path, ["sh", "-c", "exec 3</dev/tty && echo has-tty"], (slave, slave, slave), tty=True
    )
    os.close(slave)
    session.message()
    assert session.message() == {"exit": 0}
    output = b""
    with contextlib.suppress(OSError):  # EIO once the pty has no process left
        while chunk := os.read(master, 1024):
            output += chunk
    os.close(master)
    assert b"has-tty" in output
    session.close()


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json\n", "Expecting value"),
        (b'{"argv": []}\n', "argv must be a non-empty list of strings"),
        (b'["argv"]\n', "expected a JSON object"),
        (b'{"argv": ["true"], "env": {"A": 1}}\n', "env must map strings to strings"),
    ],
)
def test_exec_rejects_bad_requests(
    exec_relay: tuple[str, subprocess.Popen[bytes]], raw: bytes, error: str
) -> None:
    path, proc = exec_relay
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        with open(os.devnull, "rb") as null:
            fds = array.array("i", [null.fileno()] * 3)
            sock.sendmsg([raw], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        reply = recv_all(sock)
    message = json.loads(reply)
    assert error in message["error"]
    assert proc.poll() is None  # the relay keeps serving


def test_many_concurrent_execs_all_get_their_status(
    exec_relay: tuple[str, subprocess.Popen[bytes]],
) -> None:
    path, proc = exec_relay
    with open(os.devnull, "r+b") as null:
        fd = null.fileno()
        sessions = [Exec(path, ["sh", "-c", f"exit {i % 7}"], (fd, fd, fd)) for i in range(60)]
    for i, session in enumerate(sessions):
        session.message()
        assert session.message() == {"exit": i % 7}
        session.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0  # --hold: SIGTERM ends the relay, status 0
