"""The relay as the agent image runs it: Debian 12's python3 is 3.11.2.

Before CPython 3.11.3 a selector transport starts reading even when the protocol paused
it in `connection_made()`, so the relay's TCP side may receive the client's first bytes
before its unix-socket peer exists. Those bytes must reach the bundle, not vanish (they
did: every request through a docker bottle hung). These tests deliver data that early
on purpose, whatever Python runs them, and run the real relay under Debian's python3
when this host has one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from claude_bottle.bundle import relay

REQUEST = b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n"


class FakeTransport(asyncio.Transport):
    """The accepted TCP side, as far as the relay's protocol uses it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def write_eof(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True


async def _relay_early(path: str, eof: bool) -> bytes:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def bundle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.put_nowait(await reader.read() if eof else await reader.read(len(REQUEST)))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(bundle, path)
    async with server:
        client = relay._Client(asyncio.get_running_loop(), path)
        transport = FakeTransport()
        client.connection_made(transport)
        # What Python < 3.11.3 does: data (and EOF) although reading was paused.
        client.data_received(REQUEST[:10])
        client.data_received(REQUEST[10:])
        if eof:
            assert client.eof_received() is True  # keep the half-open client
        data = await asyncio.wait_for(received.get(), 5)
        for _ in range(100):
            if transport.written:
                break
            await asyncio.sleep(0.01)
        assert transport.written.startswith(b"HTTP/1.1 200 OK")
        return data


@pytest.mark.parametrize("eof", [False, True])
def test_bytes_before_the_unix_peer_exists_reach_the_bundle(tmp_path: Path, eof: bool) -> None:
    assert asyncio.run(_relay_early(str(tmp_path / "proxy.sock"), eof)) == REQUEST


def _debian_python() -> str:
    for candidate in ("/usr/bin/python3.11", "/usr/bin/python3"):
        if os.path.exists(candidate):
            version = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:3] >= (3, 11))"],
                capture_output=True,
                text=True,
                check=False,
            )
            if version.stdout.strip() == "True":
                return candidate
    pytest.skip("no system python3 >= 3.11 here")


def test_real_relay_under_the_system_python(tmp_path: Path) -> None:
    python = _debian_python()
    path = str(tmp_path / "b.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            got.append(conn.recv(4096))
            conn.sendall(b"echo:" + got[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            python,
            "-I",
            "-S",
            str(Path(relay.__file__)),
            "--listen",
            f"{port}={path}",
            "--hold",
        ],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "relay did not listen"
                time.sleep(0.02)
        with client:
            client.sendall(b"hi")  # sent at once: before the relay reaches the bundle
            assert client.recv(100) == b"echo:hi"
    finally:
        process.terminate()
        process.wait(10)
        listener.close()
