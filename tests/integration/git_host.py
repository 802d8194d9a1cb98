"""A private git host on loopback for the git gate's tests: real `git http-backend` behind
TLS (a throwaway CA), requiring a token with HTTP Basic auth for every request, fetches
included. Listens on 127.0.0.1 only; the gate reaches it through an `[egress.resolve]` pin.
"""

from __future__ import annotations

import base64
import http.server
import os
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO

from tests.integration.dev_upstreams import _tls, make_git_repository

CGI_TIMEOUT = 300
MAX_BODY = 512 << 20


def _copy(source: IO[bytes], target: IO[bytes], size: int) -> None:
    while size > 0:
        data = source.read(min(size, 1 << 20))
        if not data:
            raise ValueError("the body ended early")
        target.write(data)
        size -= len(data)


class GitHost:
    def __init__(self, directory: Path, token: str) -> None:
        context, self.ca_file = _tls(directory)
        self.root = directory / "git"
        self.root.mkdir()
        self.bare = make_git_repository(self.root)  # repo.git, branch main
        self.requests: list[tuple[str, str, bool]] = []  # method, path, authorised
        expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self, body: IO[bytes]) -> int:
                """The request body into a file (a test pushes hundreds of MiB), at most
                MAX_BODY bytes; its size."""
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        _copy(self.rfile, body, size)
                        self.rfile.readline()
                        if body.tell() > MAX_BODY:
                            raise ValueError("body too large")
                else:
                    _copy(
                        self.rfile,
                        body,
                        min(int(self.headers.get("content-length") or 0), MAX_BODY),
                    )
                size = body.tell()
                body.seek(0)
                return size

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                with tempfile.TemporaryFile() as body:
                    self._exchange(body, self._body(body))

            def _exchange(self, body: IO[bytes], length: int) -> None:
                authorised = self.headers.get("authorization") == expected
                outer.requests.append((self.command, self.path, authorised))
                if not authorised:
                    self._send(401, b"token required\n", {"www-authenticate": 'Basic realm="t"'})
                    return
                path, _, query = self.path.partition("?")
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(outer.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REMOTE_USER": "tester",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("content-type", ""),
                    "CONTENT_LENGTH": str(length),
                    "HTTP_CONTENT_ENCODING": self.headers.get("content-encoding", ""),
                    "GIT_PROTOCOL": self.headers.get("git-protocol", ""),
                    "REMOTE_ADDR": "127.0.0.1",
                    "GIT_CONFIG_GLOBAL": os.devnull,
                }
                result = subprocess.run(
                    ["git", "http-backend"],
                    stdin=body,
                    env=env,
                    capture_output=True,
                    timeout=CGI_TIMEOUT,
                    check=False,
                )
                head, _, payload = result.stdout.partition(b"\r\n\r\n")
                status, headers = 200, {}
                for line in head.decode(errors="replace").splitlines():
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name.lower() == "content-type":
                        headers["content-type"] = value.strip()
                self._send(status, payload, headers)

            do_GET = do_POST = _handle

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = "https://git.test/repo.git"  # pinned to 127.0.0.1:port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def ref(self, name: str) -> str | None:
        """The upstream's value of `name` (a full ref), None when it does not exist."""
        found = subprocess.run(
            ["git", "-C", str(self.bare), "rev-parse", "--verify", "-q", name],
            capture_output=True,
            text=True,
            check=False,
        )
        return found.stdout.strip() or None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SshGitHost:
    """Debian's sshd on a loopback port, with a throwaway host key and one authorized key,
    serving `repo.git` (a fresh copy) to the current user over ssh. `ssh_command` is what
    the bundle's git uses (`GIT_SSH_COMMAND` in the CLI's environment, never the bottle's)."""

    def __init__(self, directory: Path) -> None:
        import getpass
        import time

        self.root = directory / "git"
        self.root.mkdir()
        self.bare = make_git_repository(self.root)
        keys = directory / "keys"
        keys.mkdir(mode=0o700)
        for name in ("host", "client"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)],
                check=True,
            )
        (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = directory / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
            f"AuthorizedKeysFile {keys / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            f"PidFile {directory / 'sshd.pid'}\nLogLevel ERROR\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self.process = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "sshd.log").open("wb"),
        )
        known = directory / "known_hosts"
        known.write_text(f"[127.0.0.1]:{self.port} {(keys / 'host.pub').read_text()}")
        self.ssh_command = (
            f"ssh -F /dev/null -i {keys / 'client'} -o IdentitiesOnly=yes "
            f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes -o BatchMode=yes"
        )
        self.url = f"ssh://{getpass.getuser()}@127.0.0.1:{self.port}{self.bare}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.05)

    def ref(self, name: str) -> str | None:
        found = subprocess.run(
            ["git", "-C", str(self.bare), "rev-parse", "--verify", "-q", name],
            capture_output=True,
            text=True,
            check=False,
        )
        return found.stdout.strip() or None

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
