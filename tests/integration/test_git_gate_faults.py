"""The git gate under faults (issue 21, "Bad input and faults"), with real components and
no bottle: a real bundle process serving `[git.remotes.origin]`, reached through the
bottle's own relay (`bundle/relay.py`, loopback TCP to the bundle's git socket) as git in
a bottle reaches it; the upstream is `GitHost` (`git http-backend` behind TLS, a token
required). Host git plays the bottle's git.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.launcher import BundleProcess, start_bundle, stop_process
from claude_bottle.bundle.settings import BundleSettings, Pin
from tests.integration.git_host import GitHost

pytestmark = pytest.mark.integration

TOKEN_VAR = "GATE_FAULT_TEST_TOKEN"
RELAY = Path(__file__).resolve().parents[2] / "src" / "claude_bottle" / "bundle" / "relay.py"
GIT_TIMEOUT = 300
MIB = 1 << 20


class Gate(NamedTuple):
    url: str  # what the bottle's git uses: the relay's port
    bundle: BundleProcess
    cache: Path
    audit: Path

    def mirror_refs(self) -> str:
        return _git("-C", str(self.cache / "origin.git"), "for-each-ref").stdout

    def filled_mirror_refs(self) -> str:
        """The mirror's refs once the gate has filled it: a clone is relayed to the
        upstream and the mirror follows in the background (bounded wait)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = _git("-C", str(self.cache / "origin.git"), "for-each-ref", check=False).stdout
            if "refs/heads/main" in found:
                return found
            time.sleep(0.1)
        raise AssertionError("the gate never filled its mirror")


def _git(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Agent",
        "GIT_AUTHOR_EMAIL": "agent@bottle.test",
        "GIT_COMMITTER_NAME": "Agent",
        "GIT_COMMITTER_EMAIL": "agent@bottle.test",
    }
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
        check=check,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def githost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHost]:
    token = secrets.token_hex(20)
    monkeypatch.setenv(TOKEN_VAR, token)  # the bundle's (host-side) environment
    directory = tmp_path / "githost"
    directory.mkdir()
    server = GitHost(directory, token)
    yield server
    server.close()


def _start_gate(directory: Path, host: GitHost, port: int | None = None) -> Iterator[Gate]:
    """A bundle serving origin (pinned to `port`, the git host's by default) and a relay."""
    directory.mkdir()
    run = Path(tempfile.mkdtemp(prefix="cbgf-", dir="/tmp"))  # unix socket paths are short
    settings = BundleSettings(
        bottle="faults",
        proxy_socket=str(run / "proxy.sock"),
        control_socket=str(run / "control.sock"),
        audit_log=str(directory / "audit.jsonl"),
        allow=("git.test",),
        pins=(Pin("git.test", "127.0.0.1", port or host.port),),
        upstream_ca_file=str(host.ca_file),
        dlp_enabled=True,
        git_socket=str(run / "git.sock"),
        git_cache=str(directory / "git"),
        git_remotes=(GateRemote("origin", host.url, credential=f"env:{TOKEN_VAR}"),),
    )
    settings.dump(directory / "bundle.json")
    bundle = start_bundle(directory / "bundle.json", directory / "bundle.log", die_with_parent=True)
    relay_port = _free_port()
    relay = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            str(RELAY),
            "--listen",
            f"{relay_port}={run / 'git.sock'}",
            "--hold",
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", relay_port)) == 0:
                    break
            time.sleep(0.05)
        yield Gate(
            f"http://127.0.0.1:{relay_port}/origin.git",
            bundle,
            directory / "git",
            directory / "audit.jsonl",
        )
    finally:
        relay.terminate()
        relay.wait(10)
        stop_process(bundle)
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture
def gate(tmp_path: Path, githost: GitHost) -> Iterator[Gate]:
    yield from _start_gate(tmp_path / "gate", githost)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _big_commit(checkout: Path, name: str, size: int) -> None:
    """A commit adding `size` bytes of incompressible data (no secret can match it)."""
    with (checkout / name).open("wb") as out:
        left = size
        while left > 0:
            out.write(os.urandom(min(left, 4 * MIB)))
            left -= min(left, 4 * MIB)
    _git("add", name, cwd=checkout)
    _git("commit", "-qm", f"add {name}", cwd=checkout)


def test_a_200_mib_push_streams_with_the_gates_memory_bounded(
    tmp_path: Path, githost: GitHost, gate: Gate
) -> None:
    checkout = tmp_path / "work"
    _git("clone", "-q", gate.url, str(checkout))
    _git("checkout", "-q", "-b", "bottle/big", cwd=checkout)
    _big_commit(checkout, "big.bin", 200 * MIB)
    before = _peak_rss_mib(gate.bundle.pid)
    pushed = _git("push", "-q", "origin", "bottle/big", cwd=checkout, check=False)
    assert pushed.returncode == 0, pushed.stderr
    assert (
        githost.ref("refs/heads/bottle/big")
        == _git("rev-parse", "HEAD", cwd=checkout).stdout.strip()
    )
    # The pack went through the bundle in pieces, and its 200 MiB blob was scanned as a
    # stream: the bundle's own peak memory grew by far less than the push.
    grown = _peak_rss_mib(gate.bundle.pid) - before
    assert grown < 64, f"the bundle's peak RSS grew by {grown:.0f} MiB during a 200 MiB push"


class CutProxy:
    """Loopback TCP in front of the gate that forwards every connection both ways but
    cuts it (both sides closed) once the client has sent `limit` bytes on it: the gate sees
    a push whose client went away in the middle of its pack."""

    def __init__(self, target_port: int, limit: int) -> None:
        self.target_port, self.limit = target_port, limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
                threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                upstream.sendall(data)
                sent += len(data)
                if sent > self.limit:
                    self.cut.set()
                    break
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                client.sendall(data)
            client.shutdown(socket.SHUT_WR)  # the gate's answer ends with its connection

    def close(self) -> None:
        self.listener.close()


def test_an_interrupted_push_leaves_nothing_upstream_nor_in_the_cache(
    tmp_path: Path, githost: GitHost, gate: Gate
) -> None:
    checkout = tmp_path / "work"
    _git("clone", "-q", gate.url, str(checkout))
    _git("checkout", "-q", "-b", "bottle/cut", cwd=checkout)
    _big_commit(checkout, "big.bin", 64 * MIB)
    refs_before = gate.filled_mirror_refs()
    requests_before = len(githost.requests)
    relay_port = int(gate.url.split(":")[2].split("/")[0])
    cutter = CutProxy(relay_port, 8 * MIB)
    try:
        cut_url = gate.url.replace(f":{relay_port}/", f":{cutter.port}/")
        pushed = _git("push", "-q", cut_url, "bottle/cut", cwd=checkout, check=False)
    finally:
        cutter.close()
    assert cutter.cut.is_set() and pushed.returncode != 0
    # The gate's receive-pack sees the cut and drops its quarantine (bounded wait).
    mirror_objects = gate.cache / "origin.git" / "objects"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and list(mirror_objects.glob("tmp_objdir-*")):
        time.sleep(0.1)
    assert list(mirror_objects.glob("tmp_objdir-*")) == []
    assert githost.ref("refs/heads/bottle/cut") is None
    assert not any("receive-pack" in path for _, path, _ in githost.requests[requests_before:])
    assert gate.mirror_refs() == refs_before
    assert _git("-C", str(gate.cache / "origin.git"), "fsck", "--no-dangling").returncode == 0
    assert '"rule":"git:aborted"' in gate.audit.read_text()
    # The gate still serves, and the same push goes through whole afterwards.
    again = _git("push", "-q", "origin", "bottle/cut", cwd=checkout, check=False)
    assert again.returncode == 0, again.stderr
    assert githost.ref("refs/heads/bottle/cut") is not None


def test_two_bottles_pushing_the_same_branch_at_once_get_gits_own_answer(
    tmp_path: Path, githost: GitHost, gate: Gate
) -> None:
    other_gate = _start_gate(tmp_path / "gate2", githost)
    second = next(other_gate)
    try:
        commits = {}
        for name, through in (("one", gate), ("two", second)):
            checkout = tmp_path / name
            _git("clone", "-q", through.url, str(checkout))
            _git("checkout", "-q", "-b", "bottle/race", cwd=checkout)
            for n in range(30):
                (checkout / f"{name}.txt").write_text(f"{name} {n}\n")
                _git("add", ".", cwd=checkout)
                _git("commit", "-qm", f"{name} {n}", cwd=checkout)
            commits[name] = _git("rev-parse", "HEAD", cwd=checkout).stdout.strip()
        pushes = {
            name: subprocess.Popen(
                ["git", "push", "origin", "bottle/race"],
                cwd=tmp_path / name,
                env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("one", "two")
        }
        results = {name: push.communicate(timeout=GIT_TIMEOUT) for name, push in pushes.items()}
        codes = {name: push.returncode for name, push in pushes.items()}
        # Exactly one wins; the other gets git's own rejection, the upstream's words.
        assert sorted(codes.values()) == [0, 1], results
        winner = next(name for name, code in codes.items() if code == 0)
        loser = "two" if winner == "one" else "one"
        assert githost.ref("refs/heads/bottle/race") == commits[winner]
        stderr = results[loser][1]
        assert "rejected" in stderr or "stale info" in stderr or "declined" in stderr, stderr
        # Neither cache is corrupted, and the loser's never claims its commit arrived.
        for through in (gate, second):
            mirror = str(through.cache / "origin.git")
            assert _git("-C", mirror, "fsck", "--no-dangling").returncode == 0
        loser_gate = gate if loser == "one" else second
        assert commits[loser] not in loser_gate.mirror_refs()
        # The loser fetches, rebases and pushes again: git's normal way out works.
        checkout = tmp_path / loser
        _git("pull", "-q", "--rebase", "origin", "bottle/race", cwd=checkout)
        again = _git("push", "-q", "origin", "bottle/race", cwd=checkout, check=False)
        assert again.returncode == 0, again.stderr
    finally:
        other_gate.close()


def test_an_upstream_that_is_down_is_named_with_the_host_side_fix(
    tmp_path: Path, githost: GitHost
) -> None:
    closed = _free_port()  # nothing listens there
    down = _start_gate(tmp_path / "down", githost, port=closed)
    gate = next(down)
    try:
        cloned = _git("clone", gate.url, str(tmp_path / "x"), check=False)
        assert cloned.returncode != 0
        assert "remote origin" in cloned.stderr and "could not be reached" in cloned.stderr
        assert "[git.remotes.origin]" in cloned.stderr
        pushed = _git("push", gate.url, "HEAD:refs/heads/bottle/x", cwd=githost.bare, check=False)
        assert pushed.returncode != 0
        assert "remote origin" in pushed.stderr and "[git.remotes.origin]" in pushed.stderr
        audit = gate.audit.read_text()
        assert '"rule":"git:upstream"' in audit
        assert gate.bundle.poll() is None  # the bundle stays up
    finally:
        down.close()


def test_a_truncated_fetch_request_is_audited_and_the_gate_keeps_serving(
    tmp_path: Path, githost: GitHost, gate: Gate
) -> None:
    # A fetch is relayed to the upstream as it comes: a body that stops half-way must end
    # that exchange (audited), not the gate.
    port = int(gate.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /origin.git/git-upload-pack HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-git-upload-pack-request\r\n"
            b"Content-Length: 100000\r\n\r\n0032want " + b"1" * 40 + b"\n"
        )
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert b"200 OK" not in answer
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and '"rule":"git:aborted"' not in gate.audit.read_text():
        time.sleep(0.1)
    assert '"rule":"git:aborted"' in gate.audit.read_text()
    cloned = _git("clone", "-q", gate.url, str(tmp_path / "after"), check=False)
    assert cloned.returncode == 0, cloned.stderr
    assert (tmp_path / "after" / "README").read_text() == "seeded\n"


def _running(needle: str) -> bool:
    """Whether a process of this machine has `needle` in its command line."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if needle.encode() in cmdline.read_bytes():
                return True
    return False


@pytest.mark.parametrize("allowed", [False, True])
def test_the_upstream_push_waits_for_the_verdict_and_sends_nothing_without_it(
    tmp_path: Path, githost: GitHost, allowed: bool
) -> None:
    # The gate starts its upstream push before the verdict (its advertisement overlaps
    # the judging): held in its pre-push hook, it must have sent no receive-pack
    # exchange, and without "allow" it must never send one.
    from claude_bottle.bundle.git_hook import Repo, UpstreamPush
    from claude_bottle.bundle.git_policy import ZERO_SHA, RefUpdate
    from claude_bottle.bundle.git_upstream import (
        Credential,
        GitEnv,
        combined_ca,
        hardened_env,
    )

    mirror = tmp_path / "cache" / "origin.git"
    mirror.parent.mkdir()
    _git("clone", "-q", "--bare", str(githost.bare), str(mirror))
    new = _git(
        "-C", str(mirror), "commit-tree", "main^{tree}", "-p", "main", "-m", "held"
    ).stdout.strip()
    remote = GateRemote("origin", githost.url, credential=f"env:{TOKEN_VAR}")
    git_env = GitEnv(
        pins=(Pin("git.test", "127.0.0.1", githost.port),),
        ca_file=combined_ca(str(githost.ca_file), tmp_path),
    )
    token = os.environ[TOKEN_VAR]
    env = hardened_env(os.environ, remote, git_env, credential=Credential("x-access-token", token))
    repo = Repo(mirror, {**env, "GIT_DIR": str(mirror)})
    push = UpstreamPush(remote, [RefUpdate(ZERO_SHA, new, "refs/heads/bottle/held")], repo)

    def sent() -> list[str]:
        return [p for m, p, _ in githost.requests if m == "POST" and "receive-pack" in p]

    hook = str(push.hooks / "pre-push")
    deadline = time.monotonic() + 60
    assert push.process is not None
    while time.monotonic() < deadline and push.process.poll() is None and not _running(hook):
        time.sleep(0.02)
    assert _running(hook), "the push ended before its pre-push hook"
    assert sent() == [] and githost.ref("refs/heads/bottle/held") is None
    if allowed:
        status, _ = push.release()
        assert status == 0 and githost.ref("refs/heads/bottle/held") == new
    else:
        push.close()
        assert push.process.returncode != 0
        assert sent() == [] and githost.ref("refs/heads/bottle/held") is None
    assert not push.hooks.exists()  # its hook and pipe are gone
