"""The bottle fails closed when its audit log cannot keep up (issue 27 items 3-4, issue 18's
fault runs), proved with real bottles."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import BottleEnv, real_python

pytestmark = pytest.mark.integration


def _last_audit_record(be: BottleEnv) -> dict[str, object]:
    lines = (be.state_dir() / "audit.jsonl").read_text().splitlines()
    record: dict[str, object] = json.loads(lines[-1])
    return record


def test_a_bottle_flooding_its_audit_log_is_stopped_with_a_message(bottle_env: BottleEnv) -> None:
    with bottle_env.config.open("a") as config:
        config.write('\n[bottle]\naudit_rate = "64K"\n')
    long_path = "a/" * 900
    script = (
        f"i=0; while [ $i -lt 300 ]; do i=$((i+1)); "
        f"curl -s -o /dev/null --max-time 5 http://denied.test/{long_path} || true; done; "
        "echo survived"
    )
    result = bottle_env.sh(script, timeout=120)
    assert result.returncode == 125, result.stderr
    assert "survived" not in result.stdout
    assert "stopped" in result.stderr
    assert "audit_rate" in result.stderr
    last = _last_audit_record(bottle_env)
    assert last["rule"] == "audit:budget"
    assert (
        bottle_env.cli("audit", "verify", str(bottle_env.state_dir() / "audit.jsonl")).returncode
        == 0
    )


def test_a_full_disk_under_the_audit_log_stops_the_bottle_with_a_message(
    bottle_env: BottleEnv,
) -> None:
    """Issue 18's fault run: the state dir on a 1 MiB tmpfs, filled by the bottle's own
    traffic (each denied request is an audit record)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    state = bottle_env.root / "state"
    state.mkdir()
    # The home image ([bottle] disk, as root) lives in the state dir too: a small one
    # (~0.3 MiB of metadata on a sparse file) leaves the rest to the audit log.
    bottle_env.config.write_text(bottle_env.config.read_text() + '\n[bottle]\ndisk = "64M"\n')
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True)
    try:
        long_path = "a/" * 900
        script = (
            f"i=0; while [ $i -lt 1200 ]; do i=$((i+1)); "
            f"curl -s -o /dev/null --max-time 5 http://denied.test/{long_path} || true; done; "
            "echo survived"
        )
        result = bottle_env.sh(script, timeout=180)
        audit_log = bottle_env.state_dir() / "audit.jsonl"
        last = _last_audit_record(bottle_env)
        verified = bottle_env.cli("audit", "verify", str(audit_log))
    finally:
        bottle_env.cli("stop", "--all")
        subprocess.run(["umount", "-l", str(state)], check=False)
    assert result.returncode == 125, result.stderr
    assert "survived" not in result.stdout
    assert "No space left on device" in result.stderr, result.stderr
    assert last["rule"] == "audit:failed"
    assert verified.returncode == 0, verified.stdout + verified.stderr


# -- the user's terminal is never handed in (issue 18 item 7) -----------------------------

# What an agent does to the terminal it can reach: every stdio fd, and the controlling tty.
_STTY_ATTACK = (
    'for fd in 0 1 2; do eval stty -echo -icanon "<&$fd" 2>/dev/null && echo changed-fd$fd; '
    "done; stty -echo </dev/tty 2>/dev/null && echo changed-tty; echo attack-done"
)


class _Tmux:
    """A real terminal: a tmux server of the test's own, one window running `script`."""

    def __init__(self, be: BottleEnv, script: str) -> None:
        self.socket = be.root / "tmux.sock"
        self.done = be.root / "tmux.done"
        wrapper = be.root / "tmux.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in be.env.items())
        wrapper.write_text(
            f"{exports}cd {shlex.quote(str(be.workspace))}\n{script}\ntouch {self.done}\nsleep 60\n"
        )
        self._tmux("new-session", "-d", "-x", "100", "-y", "40", f"/bin/sh {wrapper}")

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm"},
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def wait(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while not self.done.exists():
            assert time.monotonic() < deadline, self._tmux("capture-pane", "-p")
            time.sleep(0.1)
        return self._tmux("capture-pane", "-p", "-S", "-100")

    def close(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.SubprocessError):
            self._tmux("kill-server")


@pytest.mark.parametrize(
    "how",
    ["piped", "interactive"],
    ids=["stdin-piped-stdout-terminal", "stdin-terminal"],
)
def test_the_bottle_cannot_change_the_users_terminal(bottle_env: BottleEnv, how: str) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    before, after = bottle_env.root / "stty.before", bottle_env.root / "stty.after"
    cli = f"{shlex.quote(sys.executable)} -m claude_bottle run --backend {bottle_env.backend}"
    attack = f"{cli} -- /bin/sh -c {shlex.quote(_STTY_ATTACK + '; echo err-line >&2')}"
    if how == "piped":
        attack = f"echo task | {attack}"
    tmux = _Tmux(bottle_env, f"stty -a > {before}\n{attack}\necho rc=$?\nstty -a > {after}")
    try:
        screen = tmux.wait()
    finally:
        tmux.close()
    assert "attack-done" in screen and "rc=0" in screen, screen
    assert "err-line" in screen  # the bottle's stderr still reaches the terminal
    assert before.read_text() == after.read_text()
    assert "-echo" not in after.read_text().split()
    if how == "piped":
        assert "changed-fd" not in screen and "changed-tty" not in screen, screen


# -- the host trusts no path the bottle can write: the exec socket (issue 18 item 8) -------

_IMPOSTOR = """
import os, socket, time
path = "/run/claude-bottle/exec/exec.sock"
os.unlink(path)
sock = socket.socket(socket.AF_UNIX)
sock.bind(path)
sock.listen()
open("impostor-ready", "w").close()
sock.settimeout(60)
conn, _ = sock.accept()
conn.recv(65536)
conn.sendall(b'{"pid": 2}\\n{"exit": 0}\\n')
open("impostor-was-asked", "w").close()
time.sleep(60)
"""


@pytest.mark.parametrize("swap", ["symlink", "impostor"])
def test_resume_refuses_an_exec_socket_the_bottle_replaced(
    bottle_env: BottleEnv, swap: str
) -> None:
    host_socket = bottle_env.root / "host-service.sock"
    host = socket.socket(socket.AF_UNIX)
    host.bind(str(host_socket))
    host.listen()
    host.setblocking(False)
    if swap == "symlink":
        script = (
            "cd /run/claude-bottle/exec && rm exec.sock && "
            f"ln -s {host_socket} exec.sock && touch {bottle_env.workspace}/impostor-ready; "
            "sleep 120"
        )
        command = ["/bin/sh", "-c", script]
    else:
        (bottle_env.workspace / "impostor.py").write_text(_IMPOSTOR)
        python = "python3" if bottle_env.backend == "docker" else real_python()
        command = [python, "-I", "-S", str(bottle_env.workspace / "impostor.py")]
    started = bottle_env.cli(
        "run", "--backend", bottle_env.backend, "--name", "t", "--detach", "--", *command
    )
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 30
    while not (bottle_env.workspace / "impostor-ready").exists():
        assert time.monotonic() < deadline, (bottle_env.state_dir() / "output.log").read_text()
        time.sleep(0.05)
    resumed = bottle_env.cli("resume", "t")
    assert resumed.returncode != 0
    expected = "not a socket" if swap == "symlink" else "not served by the bottle's relay"
    assert expected in resumed.stderr, resumed.stderr
    with pytest.raises(BlockingIOError):
        host.accept()  # nothing reached the host's socket
    host.close()
    assert not (bottle_env.workspace / "impostor-was-asked").exists()
