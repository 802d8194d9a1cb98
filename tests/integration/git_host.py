"""A private git host on loopback for the git gate's tests: real `git http-backend` behind
TLS (a throwaway CA), requiring a token with HTTP Basic auth for every request, fetches
included. Listens on 127.0.0.1 only; the gate reaches it through an `[egress.resolve]` pin.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tests.integration.dev_upstreams import (
    TlsServer,
    _tls,
    git_http_backend,
    make_git_repository,
)
from tests.integration.fake_github_lfs import FakeGitHubLfs

if TYPE_CHECKING:
    from tests.integration.conftest import BottleEnv

MAX_BODY = 512 << 20


def _copy(source: IO[bytes], target: IO[bytes], size: int) -> None:
    while size > 0:
        data = source.read(min(size, 1 << 20))
        if not data:
            raise ValueError("the body ended early")
        target.write(data)
        size -= len(data)


def _ref(bare: Path, name: str) -> str | None:
    """The value of `name` (a full ref) in `bare`, None when it does not exist."""
    found = subprocess.run(
        ["git", "-C", str(bare), "rev-parse", "--verify", "-q", name],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or None


class GitHost(TlsServer):
    hosts = ("git.test",)

    def __init__(self, directory: Path, token: str) -> None:
        context, self.ca_file = _tls(directory)
        self.root = directory / "git"
        self.root.mkdir()
        self.bare = make_git_repository(self.root)  # repo.git, branch main
        self.requests: list[tuple[str, str, bool]] = []  # method, path, authorised
        self.lfs = FakeGitHubLfs(directory, "https://git.test")  # a FAKE of GitHub's LFS
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
                if outer.lfs.serves(self.path):
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    outer.lfs.handle(
                        self.command, self.path, headers, authorised, body, length, self._send
                    )
                    return
                if not authorised:
                    self._send(401, b"token required\n", {"www-authenticate": 'Basic realm="t"'})
                    return
                answer = git_http_backend(
                    outer.root, self.command, self.path, body, self.headers, "tester", length
                )
                found = {"content-type": answer.content_type} if answer.content_type else {}
                self._send(answer.status, answer.body, found)

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args: object) -> None:
                pass

        self._serve(context, Handler)
        self.url = "https://git.test/repo.git"  # pinned to 127.0.0.1:port

    def ref(self, name: str) -> str | None:
        return _ref(self.bare, name)


def gated_remote(tmp_path: Path, bottle_env: BottleEnv) -> Iterator[GitHost]:
    """A GitHost requiring a fresh token, configured as the bottle's remote `origin`
    (pushes to bottle/*), its credential in the CLI's environment only."""
    token = secrets.token_hex(20)
    directory = tmp_path / "githost"
    directory.mkdir()
    server = GitHost(directory, token)
    bottle_env.env["GATE_TEST_TOKEN"] = token
    bottle_env.write_config(f"""
        [egress]
        allow = ["git.test"]
        upstream_ca_file = "{server.ca_file}"
        [egress.resolve]
        "git.test" = "127.0.0.1:{server.port}"
        [git.remotes.origin]
        url = "{server.url}"
        push = ["bottle/*"]
        credential = "env:GATE_TEST_TOKEN"
    """)
    yield server
    server.close()


@contextlib.contextmanager
def throwaway_ssh_agent(key: Path) -> Iterator[Path]:
    """An ssh-agent holding `key`, as a user's would: a bundle container signs through
    the agent's socket (its ssh cannot read the `-i` key file of GIT_SSH_COMMAND)."""
    agent_dir = Path(tempfile.mkdtemp(prefix="cb-agent-"))  # short: a socket path's limit
    socket_path = agent_dir / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if socket_path.exists() or agent.poll() is not None:
                break
            threading.Event().wait(0.05)
        subprocess.run(
            ["ssh-add", "-q", str(key)],
            env={**os.environ, "SSH_AUTH_SOCK": str(socket_path)},
            check=True,
            capture_output=True,
        )
        yield socket_path
    finally:
        agent.terminate()
        agent.wait(timeout=10)
        shutil.rmtree(agent_dir, ignore_errors=True)


class SshGitHost:
    """Debian's sshd on a loopback port, with a throwaway host key and one authorized key,
    serving `repo.git` (a fresh copy) to the current user over ssh. `ssh_command` is what
    the bundle's git uses (`GIT_SSH_COMMAND` in the CLI's environment, never the bottle's).

    The sessions' PATH starts with `bin` (sshd_config `SetEnv`), where `serve_lfs` puts a
    FAKE `git-lfs-authenticate`; until then the host has none, as a plain sshd would."""

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
        self.bin = directory / "bin"
        self.bin.mkdir()
        self.lfs_log = directory / "lfs-authenticate.log"
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
            f"SetEnv PATH={self.bin}:/usr/local/bin:/usr/bin:/bin\n"
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
        return _ref(self.bare, name)

    def serve_lfs(self, answer: str) -> None:
        """A FAKE `git-lfs-authenticate` on the sessions' PATH: logs its arguments, prints
        `answer` (git-lfs-authenticate's JSON: href, header, expiry)."""
        script = self.bin / "git-lfs-authenticate"
        (self.bin / "answer.json").write_text(answer)
        script.write_text(
            f'#!/bin/sh\necho "$*" >> {shlex.quote(str(self.lfs_log))}\n'
            f"cat {shlex.quote(str(self.bin / 'answer.json'))}\n"
        )
        script.chmod(0o755)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
