"""Interactive use through a real terminal, and the detach / resume / stop lifecycle."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from claude_bottle.state import process_alive
from tests.integration.conftest import BottleEnv
from tests.integration.terminal import Terminal

pytestmark = pytest.mark.integration


def test_interactive_terminal_size_input_resize_and_ctrl_c(bottle_env: BottleEnv) -> None:
    # The trap is set before "waiting" is printed: a Ctrl-C that lands while dash is between
    # commands (it defers SIGINT while forking, so a bare `sleep` forked then would miss it)
    # is still acted on, and only SIGINT can produce the 130.
    script = (
        "stty size; [ -t 0 ] && echo stdin-is-tty; read a; echo got:$a; stty size; "
        "trap 'exit 130' INT; echo waiting; while :; do sleep 1; done"
    )
    term = Terminal(
        bottle_env,
        "run",
        "--backend",
        bottle_env.backend,
        "--name",
        "t",
        "--",
        "/bin/sh",
        "-c",
        script,
    )
    term.read_until(b"40 100")
    term.read_until(b"stdin-is-tty")
    term.resize(50, 120)
    os.kill(term.pid, signal.SIGWINCH)  # what the terminal emulator's kernel would send
    time.sleep(0.3)
    term.write(b"hello\r")
    term.read_until(b"got:hello")
    term.read_until(b"50 120")
    term.read_until(b"waiting")
    term.write(b"\x03")  # Ctrl-C reaches the command through its own terminal
    assert term.wait() == 128 + signal.SIGINT


def test_detach_resume_stop(bottle_env: BottleEnv) -> None:
    started = bottle_env.cli(
        "run",
        "--backend",
        bottle_env.backend,
        "--name",
        "d",
        "--detach",
        "--",
        "/bin/sh",
        "-c",
        "echo detached-output; sleep 300",
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "d"
    rows = json.loads(bottle_env.cli("ls", "--json").stdout)
    assert [(r["name"], r["state"]) for r in rows] == [("d", "running")]
    deadline = time.monotonic() + 10
    output = bottle_env.state_dir("d") / "output.log"
    while "detached-output" not in (output.read_text() if output.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The detached bottle still has its way out.
    probe = bottle_env.root / "probe.sh"
    probe.write_text("curl -sS --max-time 10 http://allowed.test/resumed\n")
    record = json.loads((bottle_env.state_dir("d") / "bottle.json").read_text())
    record["command"] = ["/bin/sh", str(bottle_env.workspace / "resume.sh")]
    (bottle_env.workspace / "resume.sh").write_text(
        "curl -sS --max-time 10 http://allowed.test/resumed; exit 5\n"
    )
    (bottle_env.state_dir("d") / "bottle.json").write_text(json.dumps(record))
    resumed = bottle_env.cli("resume", "d")
    assert resumed.returncode == 5, resumed.stderr
    assert "hello from upstream /resumed" in resumed.stdout
    stopped = bottle_env.cli("stop", "d")
    assert stopped.returncode == 0, stopped.stderr
    rows = json.loads(bottle_env.cli("ls", "--json").stdout)
    assert rows[0]["state"] == "stopped"
    runtime = (
        os.environ.get("CLAUDE_BOTTLE_RUNTIME_DIR") or bottle_env.env["CLAUDE_BOTTLE_RUNTIME_DIR"]
    )
    assert not os.path.exists(os.path.join(runtime, "d"))
    deadline = time.monotonic() + 5
    while any(process_alive(ref) for ref in record["processes"].values()):
        assert time.monotonic() < deadline, "detached bottle survived stop"
        time.sleep(0.05)
    assert bottle_env.cli("logs", "d").returncode == 0


def test_second_bottle_with_same_name_is_refused(bottle_env: BottleEnv) -> None:
    started = bottle_env.cli(
        "run",
        "--backend",
        bottle_env.backend,
        "--name",
        "dup",
        "--detach",
        "--",
        "/bin/sh",
        "-c",
        "sleep 300",
    )
    assert started.returncode == 0, started.stderr
    again = bottle_env.run("true", name="dup")
    assert again.returncode == 2
    assert "already running" in again.stderr
    bottle_env.cli("stop", "dup")


def test_ask_mode_holds_until_allowed(bottle_env: BottleEnv) -> None:

    bottle_env.config.write_text(
        bottle_env.config.read_text().replace("[egress]", '[egress]\nmode = "ask"')
    )
    proc = bottle_env.start("curl -sS --max-time 20 http://denied.test/held")
    log = bottle_env.state_dir() / "audit.jsonl"
    deadline = time.monotonic() + 15
    while '"pending"' not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "no pending event"
        time.sleep(0.05)
    allowed = bottle_env.cli("allow", "t", "denied.test")
    assert allowed.returncode == 0, allowed.stderr
    out, err = proc.communicate(timeout=30)
    assert "hello from upstream /held" in out, err
