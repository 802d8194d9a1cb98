"""A refused HTTPS host, as the real clients inside a bottle see it: the 403 with its rule
and the `claude-bottle allow` hint, answered inside TLS (bundle/tls_refusal.py), instead
of an opaque `CONNECT tunnel failed`."""

from __future__ import annotations

import shutil

import pytest

from tests.integration.conftest import BottleEnv

pytestmark = pytest.mark.parametrize("backend", ["namespace"], indirect=True)

HINT = "claude-bottle allow t denied.test"


def test_curl_python_and_git_see_the_refusal_inside_tls(bottle_env: BottleEnv) -> None:
    result = bottle_env.sh(
        "curl -sS --max-time 10 -w '\\n%{http_code}\\n' https://denied.test/x; "
        'python3 -I -S -c "import urllib.request as u, urllib.error as e\n'
        "try: u.urlopen('https://denied.test/py', timeout=10)\n"
        "except e.HTTPError as r: print('python', r.code, r.read().decode())\"; "
        "git ls-remote https://denied.test/repo.git 2>&1; true"
    )
    out = result.stdout
    assert "claude-bottle: blocked denied.test" in out and "\n403\n" in out, result
    assert "python 403 claude-bottle: blocked denied.test" in out
    assert f"To allow it: {HINT}" in out
    assert out.count(HINT) == 3  # curl, python and git each show it
    assert "remote: claude-bottle: blocked denied.test" in out  # git, as the server's message
    assert "CONNECT tunnel failed" not in out + result.stderr


def test_excluded_hosts_keep_the_plain_connect_refusal(bottle_env: BottleEnv) -> None:
    bottle_env.config.write_text(
        bottle_env.config.read_text().replace(
            "[egress]", '[egress]\nintercept_exclude = ["denied.test"]'
        )
    )
    result = bottle_env.sh("curl -sS --max-time 10 https://denied.test/x; echo rc=$?")
    assert "rc=56" in result.stdout, result


def test_an_ask_timeout_carries_the_hint_inside_tls(bottle_env: BottleEnv) -> None:
    bottle_env.config.write_text(
        bottle_env.config.read_text().replace("[egress]", '[egress]\nmode = "ask"\nask_timeout = 1')
    )
    result = bottle_env.sh("curl -sS --max-time 20 https://denied.test/held")
    assert "rule ask-timeout" in result.stdout and HINT in result.stdout, result


def test_npm_sees_the_refusal_inside_tls(bottle_env: BottleEnv) -> None:
    if shutil.which("npm", path=bottle_env.env["PATH"]) is None:
        pytest.skip("npm is not installed")
    result = bottle_env.sh(
        "cd /tmp && npm view left-pad version --registry https://denied.test/ "
        "--fetch-retries 0 --cache /tmp/npm-cache 2>&1; echo rc=$?",
        timeout=120,
    )
    out = result.stdout
    assert "E403" in out, result
    assert "403 Forbidden - GET https://denied.test/left-pad - claude-bottle: blocked" in out
    assert HINT in out
    assert "CONNECT tunnel failed" not in out
