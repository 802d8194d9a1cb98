"""Keyword rules and `[dlp] ignore` through a real bottle (issue 25).

A credential with no distinctive prefix, next to its name inside a JSON body
(quotes escaped) or in a request header's name, is refused; a rule the user
ignores is let through and the audit log says so, without the value.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import BottleEnv

pytestmark = pytest.mark.integration

# Built by concatenation so this file does not itself look like it holds a key.
DATADOG_KEY = "9f3b" + "c1e07a5d42b8e6f19c0d3a7b54e2f8a1"
SECRET = "Zq8" + "vT2mLx9RkP4wN7cYb3Hd"
CODE = "-s -o /dev/null -w '%{http_code}\\n' --max-time 10"


@pytest.fixture
def keyword_env(bottle_env: BottleEnv) -> BottleEnv:
    bottle_env.write_config(f"""
[egress]
allow = ["allowed.test"]
[egress.resolve]
"allowed.test" = "127.0.0.1:{bottle_env.upstream.port}"
""")
    return bottle_env


def _codes(be: BottleEnv, script: str) -> list[str]:
    (be.workspace / "probe.sh").write_text(script)
    return be.sh(f"sh {be.workspace}/probe.sh").stdout.split()


def _body(be: BottleEnv) -> Path:
    config = f'[default]\nclient_secret = "{SECRET}"\n'
    path = be.workspace / "body.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": config}]}))
    return path


def test_keyword_secrets_in_json_body_and_header_name_are_refused(keyword_env: BottleEnv) -> None:
    body = _body(keyword_env)
    codes = _codes(
        keyword_env,
        f"""
curl {CODE} --data-binary @{body} http://allowed.test/json
curl {CODE} -H "DD-API-KEY: {DATADOG_KEY}" http://allowed.test/header
curl {CODE} http://allowed.test/clean
""",
    )
    assert codes == ["403", "403", "200"], codes
    assert [r.path for r in keyword_env.upstream.requests] == ["/clean"]
    log = (keyword_env.state_dir() / "audit.jsonl").read_text()
    rules = [json.loads(line)["rule"] for line in log.splitlines()]
    assert "dlp:generic-secret" in rules and "dlp:datadog-key" in rules, rules
    assert SECRET not in log and DATADOG_KEY not in log


def test_ignored_rule_is_let_through_and_audited(keyword_env: BottleEnv) -> None:
    keyword_env.config.write_text(
        keyword_env.config.read_text() + '\n[dlp]\nignore = ["generic-secret"]\n'
    )
    body = _body(keyword_env)
    codes = _codes(keyword_env, f"curl {CODE} --data-binary @{body} http://allowed.test/json\n")
    assert codes == ["200"], codes
    log = (keyword_env.state_dir() / "audit.jsonl").read_text()
    events = [json.loads(line) for line in log.splitlines()]
    dlp = [(e["decision"], e["rule"]) for e in events if e["kind"] == "dlp"]
    assert dlp == [("allow", "dlp:generic-secret")], dlp
    assert SECRET not in log
