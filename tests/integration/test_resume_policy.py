"""`resume` of a stopped bottle starts it under the policy it ran with (issue 27, row 6).

A bottle started in `ask` mode with deny rules, an extra DLP pattern and an `--allow`
flag, all from the command line, must come back with all of them; if a config file it
ran with changed, `resume` says which and refuses unless `--replan`. The policy code is
the same for every backend, so the namespace backend (the quickest) carries the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import BottleEnv

EXTRA = """
[egress]
mode = "ask"
deny = ["denied.test"]
[dlp]
patterns = [{ name = "itk", regex = "itk_[A-Za-z0-9]{8}" }]
"""


def _plan(bottle_env: BottleEnv, name: str) -> dict[str, object]:
    plan: dict[str, object] = json.loads((bottle_env.state_dir(name) / "plan.json").read_text())
    return plan


@pytest.mark.parametrize("backend", ["namespace"], indirect=True)
def test_resume_keeps_the_policy_from_config_and_flags(
    bottle_env: BottleEnv, tmp_path: Path
) -> None:
    extra = tmp_path / "extra.toml"
    extra.write_text(EXTRA)
    started = bottle_env.cli(
        *("run", "--backend", bottle_env.backend, "--name", "r", "--detach"),
        *("--config", str(extra), "--allow", "flag.test", "--", "true"),
    )
    assert started.returncode == 0, started.stderr
    assert bottle_env.cli("stop", "r").returncode == 0

    resumed = bottle_env.cli("resume", "r")
    assert resumed.returncode == 0, resumed.stderr
    plan = _plan(bottle_env, "r")
    assert plan["egress_mode"] == "ask"
    assert "denied.test" in plan["egress_deny"]  # type: ignore[operator]
    assert ["itk", "itk_[A-Za-z0-9]{8}"] in plan["dlp_patterns"]  # type: ignore[operator]
    assert "flag.test" in plan["egress_allow"]  # type: ignore[operator]

    extra.write_text(EXTRA.replace('"ask"', '"audit"'))
    refused = bottle_env.cli("resume", "r")
    assert refused.returncode == 2
    assert f"{extra} changed" in refused.stderr and "--replan" in refused.stderr
    assert _plan(bottle_env, "r")["egress_mode"] == "ask"

    replanned = bottle_env.cli("resume", "r", "--replan")
    assert replanned.returncode == 0, replanned.stderr
    assert _plan(bottle_env, "r")["egress_mode"] == "audit"
