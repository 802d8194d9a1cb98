"""The bottle fails closed when its audit log cannot keep up (issue 27 items 3-4, issue 18's
fault runs), proved with real bottles."""

from __future__ import annotations

import json

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
