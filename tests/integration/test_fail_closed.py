"""The bottle fails closed when its audit log cannot keep up (issue 27 items 3-4, issue 18's
fault runs), proved with real bottles."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import BottleEnv

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
    if bottle_env.backend == "namespace":  # a host bundle's reason is shown; docker's is logged
        assert "audit_rate" in result.stderr
    last = _last_audit_record(bottle_env)
    assert last["rule"] == "audit:budget"
    assert (
        bottle_env.cli("audit", "verify", str(bottle_env.state_dir() / "audit.jsonl")).returncode
        == 0
    )


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
