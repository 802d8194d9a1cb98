"""Held requests answered from a shell (`pending`, `allow`, `deny`), the ask timeout,
`allow --always` editing the user config, and `policy suggest` round-tripped through
`run --config`, all with real bottles (namespace backend)."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest

from tests.integration.conftest import BottleEnv

# The bundle's side is the same code on every backend: the shell test runs on docker
# too (its bundle runs in a container), the rest on namespace.
NAMESPACE = pytest.mark.parametrize("backend", ["namespace"], indirect=True)
NAMESPACE_AND_DOCKER = pytest.mark.parametrize("backend", ["namespace", "docker"], indirect=True)

HELD_HOSTS = ("denied.test", "other.test", "s1.many.test", "s2.many.test", "s3.many.test")


def _ask_config(be: BottleEnv, *, mode: str = "ask", extra: str = "") -> None:
    pins = "\n".join(f'"{host}" = "127.0.0.1:{be.upstream.port}"' for host in HELD_HOSTS)
    pins += f'\n"s4.many.test" = "127.0.0.1:{be.upstream.port}"'
    be.config.write_text(
        "# my settings: keep this comment\n"
        "[egress]\n"
        f'mode = "{mode}"  # trying it out\n'
        f"{extra}"
        'allow = ["allowed.test"]  # the basics\n'
        "[egress.resolve]\n"
        f'"allowed.test" = "127.0.0.1:{be.upstream.port}"\n'
        f"{pins}\n"
    )


def _wait_pending(be: BottleEnv, count: int, timeout: float = 30) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        result = be.cli("pending", "--json")
        assert result.returncode == 0, result.stderr
        items: list[dict[str, object]] = json.loads(result.stdout)
        if len(items) >= count:
            return items
        assert time.monotonic() < deadline, f"only {items} pending"
        time.sleep(0.2)


CURL = "curl -sS --max-time 60 -o /dev/null -w '%{http_code} %header{x-claude-bottle-block}\\n'"


@NAMESPACE_AND_DOCKER
def test_pending_deny_and_allow_always_from_the_shell(bottle_env: BottleEnv) -> None:
    _ask_config(bottle_env)
    first = bottle_env.start(f"{CURL} http://denied.test/a; {CURL} http://denied.test/b", "one")
    # Denied, then retried: the retry is refused at once, not held again.
    second = bottle_env.start(f"{CURL} http://other.test/x; {CURL} http://other.test/y", "two")
    items = _wait_pending(bottle_env, 2)
    by_bottle = {item["bottle"]: item for item in items}
    assert set(by_bottle) == {"one", "two"}
    one = by_bottle["one"]
    assert set(one) == {"bottle", "host", "port", "waiting", "since", "first_line", "tool_call"}
    assert one["tool_call"] == ""  # no Claude Code tool call ran it
    assert (one["host"], one["port"], one["waiting"]) == ("denied.test", 80, 1)
    assert one["first_line"] == "GET http://denied.test/a"
    text = bottle_env.cli("pending", "two")
    assert "other.test:80" in text.stdout and "GET http://other.test/x" in text.stdout

    denied = bottle_env.cli("deny", "two", "other.test")
    assert denied.returncode == 0, denied.stderr
    out, err = second.communicate(timeout=30)
    assert out.split("\n")[:2] == ["403 ask-denied", "403 ask-denied"], err

    allowed = bottle_env.cli("allow", "one", "denied.test", "--always")
    assert allowed.returncode == 0, allowed.stderr
    out, err = first.communicate(timeout=30)
    assert out.split("\n")[:2] == ["200 ", "200 "], err  # the second was never held
    config = bottle_env.config.read_text()
    assert "# my settings: keep this comment" in config
    assert "# trying it out" in config and "# the basics" in config
    assert "from bottle one" in config
    assert tomllib.loads(config)["egress"]["allow"] == ["allowed.test", "denied.test"]
    assert bottle_env.cli("pending", "--json").stdout.strip() == "[]"

    log = (bottle_env.state_dir("two") / "audit.jsonl").read_text()
    decisions = [json.loads(line) for line in log.splitlines()]
    assert any(
        r["kind"] == "ask" and r["rule"] == "ask-denied" and r["detail"]["by"] == "deny command"
        for r in decisions
    )


@NAMESPACE
def test_nobody_deciding_answers_ask_timeout(bottle_env: BottleEnv) -> None:
    _ask_config(bottle_env, extra="ask_timeout = 1\n")
    result = bottle_env.run("/bin/sh", "-c", f"{CURL} http://denied.test/slow", name="late")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "403 ask-timeout"


@NAMESPACE
def test_policy_suggest_output_is_config_run_accepts(bottle_env: BottleEnv, tmp_path: Path) -> None:
    _ask_config(bottle_env, mode="audit")
    script = "; ".join(
        f"{CURL} http://{host}/" for host in ("denied.test", "denied.test", *HELD_HOSTS[2:])
    )
    script += f"; {CURL} http://s4.many.test/; {CURL} http://allowed.test/"
    result = bottle_env.run("/bin/sh", "-c", script, name="learn")
    assert result.returncode == 0, result.stderr
    suggested = bottle_env.cli("policy", "suggest", "learn")
    assert suggested.returncode == 0, suggested.stderr
    allow = tomllib.loads(suggested.stdout)["egress"]["allow"]
    assert sorted(allow) == ["*.many.test", "allowed.test", "denied.test"]
    assert '"denied.test",  # 2 requests' in suggested.stdout
    assert '"*.many.test",  # 4 requests' in suggested.stdout

    snippet = tmp_path / "suggested.toml"
    snippet.write_text(suggested.stdout)
    _ask_config(bottle_env, mode="enforce")
    again = bottle_env.run(
        "/bin/sh",
        "-c",
        f"{CURL} http://s2.many.test/; {CURL} http://denied.test/",
        name="learned",
        extra=("--config", str(snippet)),
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.split("\n")[:2] == ["200 ", "200 "]

    # A log whose chain is broken is not turned into a policy.
    log = bottle_env.state_dir("learn") / "audit.jsonl"
    log.write_text(log.read_text().replace("s1.many.test", "s1.evil.test", 1))
    broken = bottle_env.cli("policy", "suggest", "learn")
    assert broken.returncode != 0
    assert "not suggesting" in broken.stderr


@NAMESPACE
def test_supervise_with_nothing_running_says_so(bottle_env: BottleEnv) -> None:
    from tests.integration.tmux import TmuxScreen

    with TmuxScreen(bottle_env, "supervise", cols=80, rows=24) as screen:
        screen.wait_for("no bottles running")
        screen.keys("q")
        screen.wait_closed()


@NAMESPACE
def test_supervise_allows_denies_and_stops(bottle_env: BottleEnv) -> None:
    from tests.integration.tmux import TmuxScreen

    _ask_config(bottle_env)
    with TmuxScreen(bottle_env, "supervise", cols=80, rows=24) as screen:
        screen.wait_for("no bottles running")
        first = bottle_env.start(f"{CURL} http://denied.test/first", "one")
        screen.wait_for("denied.test")
        screen.wait_for("GET http://denied.test/first")
        screen.keys("a")
        out, err = first.communicate(timeout=30)
        assert out.strip() == "200", err

        second = bottle_env.start(f"{CURL} http://other.test/second", "two")
        screen.wait_for("other.test")
        screen.keys("d")
        out, err = second.communicate(timeout=30)
        assert out.strip() == "403 ask-denied", err

        keeper = bottle_env.start("sleep 300", "three")
        screen.wait_for("three")
        screen.wait_gone("two")  # its row went when it ended: "three" is the only one
        screen.keys("s")
        screen.wait_for("(y/n)")
        screen.keys("y")
        keeper.wait(timeout=60)
        screen.wait_for("no bottles running")
        screen.keys("q")
        screen.wait_closed()
    log = (bottle_env.state_dir("one") / "audit.jsonl").read_text()
    assert any(
        json.loads(line).get("detail", {}).get("by") == "supervise" for line in log.splitlines()
    )
    listed = json.loads(bottle_env.cli("ls", "--json").stdout)
    assert {row["name"]: row["state"] for row in listed}["three"] != "running"


@NAMESPACE
def test_held_requests_are_answered_when_the_cli_dies(bottle_env: BottleEnv) -> None:
    import os
    import signal

    _ask_config(bottle_env)
    cli = bottle_env.start(f"{CURL} http://denied.test/orphan", "orphan")
    _wait_pending(bottle_env, 1)
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait(timeout=10)
    log = bottle_env.state_dir("orphan") / "audit.jsonl"
    deadline = time.monotonic() + 30
    while '"bundle-stop"' not in log.read_text():  # the bundle stops with its CLI
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    answered = [r for r in records if r["rule"] == "ask-unavailable"]
    assert answered and answered[0]["detail"]["status"] == 503
    assert records[-1]["rule"] == "bundle-stop"
