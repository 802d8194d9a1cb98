"""The relay as the agent image runs it: Debian 12's python3 is 3.11.2.

Bytes a client sends before the relay's unix-socket peer exists must reach the bundle
(an asyncio relay under Python < 3.11.3 lost them: every request through a docker
bottle hung). test_relay.py covers early data for the relay as it is now; this runs
the real relay under Debian's python3 when this host has one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from claude_bottle.bundle import relay

REQUEST = b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n"


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
