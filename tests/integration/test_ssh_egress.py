"""SSH past the git gate (issue 21): with interception off, a CONNECT is relayed as raw
bytes, so a tunnel to an allowed host's port 22 would carry `git push` over ssh. The gate
refuses port 22 unless an allow entry grants exactly that HOST:PORT."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.integration.conftest import BottleEnv

pytestmark = pytest.mark.integration

BANNER = b"SSH-2.0-fake_sshd_for_tests\r\n"


class FakeSshd:
    """Not sshd: a loopback listener that greets each connection with an SSH banner,
    which is all a relayed tunnel needs to show."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.sendall(BANNER)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


@pytest.fixture
def sshd() -> Iterator[FakeSshd]:
    server = FakeSshd()
    yield server
    server.close()


# What an ssh client does through an HTTP proxy (ProxyCommand, or `nc -X connect`).
TUNNEL = """
import os, socket
from urllib.parse import urlsplit
proxy = urlsplit(os.environ["HTTPS_PROXY"])
s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
s.sendall(b"CONNECT ssh.test:22 HTTP/1.1\\r\\nHost: ssh.test:22\\r\\n\\r\\n")
data = b""
try:
    while b"SSH-2.0" not in data and len(data) < 65536:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
except OSError as exc:
    print("error", exc)
print(data.decode("latin-1"))
"""


def _configure(be: BottleEnv, sshd: FakeSshd, allow: str) -> None:
    be.write_config(f"""
[egress]
allow = [{allow}]
intercept = false

[egress.resolve]
"ssh.test" = "127.0.0.1:{sshd.port}"
""")


def test_ssh_to_an_allowed_host_is_refused(bottle_env: BottleEnv, sshd: FakeSshd) -> None:
    _configure(bottle_env, sshd, '"ssh.test"')
    result = bottle_env.py(TUNNEL)
    assert " 403 " in result.stdout, (result.stdout, result.stderr)
    assert "git-ssh-outside-gate" in result.stdout
    assert "SSH-2.0" not in result.stdout and sshd.accepted == 0
    lines = (bottle_env.state_dir() / "audit.jsonl").read_text().splitlines()
    refused = [
        event
        for event in map(json.loads, lines)
        if event["kind"] == "egress" and event["rule"] == "git-ssh-outside-gate"
    ]
    assert [(e["decision"], e["method"], e["host"], e["port"]) for e in refused] == [
        ("deny", "CONNECT", "ssh.test", 22)
    ]


def test_ssh_granted_by_host_and_port_is_relayed(bottle_env: BottleEnv, sshd: FakeSshd) -> None:
    """The control: the same tunnel passes when the user allowed exactly ssh.test:22."""
    _configure(bottle_env, sshd, '"ssh.test:22"')
    result = bottle_env.py(TUNNEL)
    assert "200" in result.stdout and BANNER.decode().strip() in result.stdout, (
        result.stdout,
        result.stderr,
    )
