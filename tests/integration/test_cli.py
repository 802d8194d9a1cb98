"""The command line's contract: exit codes, messages naming the problem, plans doing nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import BottleEnv

pytestmark = pytest.mark.integration


def test_bad_config_exits_2_naming_file_and_key(bottle_env: BottleEnv) -> None:
    bottle_env.config.write_text('[egress]\nmode = "block"\n')
    result = bottle_env.cli("plan", "--", "true")
    assert result.returncode == 2
    assert str(bottle_env.config) in result.stderr or "config.toml" in result.stderr
    assert "egress.mode" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_backend_exits_2(bottle_env: BottleEnv) -> None:
    result = bottle_env.cli("plan", "--backend", "nope", "--", "true")
    assert result.returncode == 2
    assert "nope" in result.stderr


def test_missing_claude_exits_3_with_install_hint(bottle_env: BottleEnv) -> None:
    if bottle_env.backend == "docker":
        pytest.skip("Claude Code ships in the docker agent image")
    bottle_env.env["PATH"] = str(bottle_env.root / "empty-bin")  # no claude on it
    result = bottle_env.cli("run", "--backend", bottle_env.backend, "--name", "t")
    assert result.returncode == 3
    assert "npm install -g @anthropic-ai/claude-code" in result.stderr


def test_no_user_namespaces_exits_3_with_the_sysctl_fix(bottle_env: BottleEnv) -> None:
    if bottle_env.backend != "namespace":
        pytest.skip("user namespaces are the namespace backend's dependency")
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    # A user namespace of our own whose limit is 0: bubblewrap cannot nest one, as on a
    # host with unprivileged user namespaces switched off. The host is untouched.
    script = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    cli = (sys.executable, "-m", "claude_bottle", "run", "--backend", "namespace", "--", "true")
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh", *cli],
        env=bottle_env.env,
        cwd=bottle_env.workspace,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert "bubblewrap cannot create user namespaces" in result.stderr
    assert "sysctl" in result.stderr
    assert "Traceback" not in result.stderr
    runtime = Path(bottle_env.env["CLAUDE_BOTTLE_RUNTIME_DIR"])
    assert not runtime.exists() or not any(runtime.iterdir())  # nothing left behind


def test_plan_does_nothing_and_prints_json(bottle_env: BottleEnv) -> None:
    result = bottle_env.cli(
        "plan", "--backend", bottle_env.backend, "--name", "p", "--json", "--", "true"
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["name"] == "p" and plan["backend"] == bottle_env.backend
    assert plan["command"] == ["true"]
    assert "allowed.test" in plan["egress_allow"]
    assert not (bottle_env.root / "state" / "bottles" / "p").exists()
    human = bottle_env.cli("plan", "--backend", bottle_env.backend, "--name", "p", "--", "true")
    assert "egress (the bottle's only way out)" in human.stdout


def test_project_config_needs_trust(bottle_env: BottleEnv) -> None:
    project = bottle_env.workspace / ".claude-bottle.toml"
    project.write_text('[egress]\nallow = ["project.test"]\n')

    def allowed() -> list[str]:
        result = bottle_env.cli("plan", "--json", "--", "true")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout)["egress_allow"])

    untrusted = bottle_env.cli("plan", "--", "true")
    assert "not trusted" in untrusted.stderr
    assert "project.test" not in allowed()
    assert bottle_env.cli("trust", "--yes").returncode == 0
    assert "project.test" in allowed()
    project.write_text('[egress]\nallow = ["project.test", "evil.test"]\n')
    changed = bottle_env.cli("plan", "--", "true")
    assert "changed" in changed.stderr
    assert "evil.test" not in allowed()


def test_doctor_reports_the_default_backend(bottle_env: BottleEnv) -> None:
    result = bottle_env.cli("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "namespace (default): ok" in result.stdout


def test_logs_of_unknown_bottle_is_a_clear_error(bottle_env: BottleEnv) -> None:
    result = bottle_env.cli("logs", "ghost")
    assert result.returncode == 2
    assert "no bottle named ghost" in result.stderr


def test_audit_verify_names_first_bad_line(bottle_env: BottleEnv, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text('{"not": "a record"}\n')
    result = bottle_env.cli("audit", "verify", str(log))
    assert result.returncode == 1
    assert "line 1" in result.stderr
