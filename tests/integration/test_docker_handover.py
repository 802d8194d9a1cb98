"""A bundle container gets its secrets over the control socket, never in its configuration.

With `[docker] bundle = "container"` the CLI resolves every secret the bundle needs on the
host (an injected credential, the user's own secret-named variables for DLP, the Anthropic
key) and hands them over the control socket once the bundle answers. Nothing the engine
keeps or shows carries one: the bundle container's `docker inspect` (environment, argv,
mounts), its process 1's environment, the files bound into it. Injection, DLP of the
host's own secret and the API gateway still work, and a second handover is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.bundle import control
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.integration.conftest import BottleEnv, backend_unavailable

pytestmark = pytest.mark.integration

INJECTED = "ghp_" + "H4nd3dN0tInEnv0rM0untZz9Yx8Wv7Ut6Sr"[:36]
PLANTED = "planted-" + "h0st-s3cr3t-n0t-in-the-c0nta1ner"
REAL_KEY = "sk-ant-api03-" + "HandedOverOnly" * 6 + "-ZyXwVuAA"
SECRETS = (INJECTED, PLANTED, REAL_KEY)
NAME = "handover"
WAIT = 120.0


@pytest.fixture(params=["docker:container"])
def backend(request: pytest.FixtureRequest) -> str:  # the container placement only
    reason = backend_unavailable("docker")
    if reason:
        pytest.skip(f"docker backend unavailable here: {reason}")
    return "docker"


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic("handed over", api_key=REAL_KEY) as fake:
        yield fake


@pytest.fixture
def handover_env(bottle_env: BottleEnv, fake_api: FakeAnthropic) -> BottleEnv:
    assert bottle_env.docker_bundle == "container"
    bottle_env.env["HOST_INJECTED_TOKEN"] = INJECTED
    bottle_env.env["MY_SERVICE_TOKEN"] = PLANTED  # the user's own secret, on the host
    bottle_env.env["ANTHROPIC_API_KEY"] = REAL_KEY
    bottle_env.write_config(f"""
[egress]
allow = ["allowed.test"]
[egress.resolve]
"allowed.test" = "127.0.0.1:{bottle_env.upstream.port}"
[gateway]
anthropic_upstream = "{fake_api.url}"
[dlp]
enabled = true
[[credentials.inject]]
hosts = ["allowed.test"]
env = "GITHUB_TOKEN"
secret = "env:HOST_INJECTED_TOKEN"
""")
    return bottle_env


# Run inside the bundle container: which file under the given roots holds a secret. The
# secrets come XOR-ed, so only the files can match.
FIND = """
import os, sys
keys = [bytes(b ^ 0x5A for b in bytes.fromhex(h)) for h in sys.argv[2:]]
found = []
def check(path):
    try:
        with open(path, "rb") as handle:
            data = handle.read(1 << 20)
    except OSError:
        return
    if any(key in data for key in keys):
        found.append(path)
for root in sys.argv[1].split(":"):
    if os.path.isfile(root):
        check(root)
    for directory, _, files in os.walk(root):
        for name in files[:2000]:
            check(os.path.join(directory, name))
print("found", found)
"""


def _docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=30, check=True
    ).stdout


def _bundle_container(be: BottleEnv) -> str:
    record = json.loads((be.state_dir(NAME) / "bottle.json").read_text())
    return str(record["containers"]["bundle"])


def _files_under(root: Path, limit: int = 2000) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for count, path in enumerate(root.rglob("*")):
        if count > limit:
            return
        if path.is_file() and not path.is_symlink():
            yield path


def _leaks(text: str) -> list[str]:
    return [f"secret #{i}" for i, secret in enumerate(SECRETS) if secret in text]


def test_bundle_container_holds_its_secrets_in_memory_only(
    handover_env: BottleEnv, fake_api: FakeAnthropic
) -> None:
    be = handover_env
    ready, go = be.workspace / "ready", be.workspace / "go"
    w = "-s -o /dev/null -w '%{http_code}\\n' --max-time 20"
    body = json.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    script = f"""
curl {w} -H "Authorization: Bearer $GITHUB_TOKEN" http://allowed.test/injected
curl {w} --data-binary @{be.workspace}/planted.txt http://allowed.test/planted
curl {w} -H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' \
    -H 'x-api-key: placeholder' --data-binary '{body}' "$ANTHROPIC_BASE_URL/v1/messages"
touch {ready}
i=0; while [ ! -e {go} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
"""
    # The bottle's command (kept in plan.json, which the bundle can read) holds no secret.
    (be.workspace / "planted.txt").write_text(f"v={PLANTED}")
    process = be.start(script, name=NAME)
    try:
        deadline = time.monotonic() + WAIT
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), process.stderr.read() if process.poll() is not None else "timeout"
        container = _bundle_container(be)
        (info,) = json.loads(_docker("inspect", container))
        # Nothing the engine keeps of the bundle container holds a secret.
        assert _leaks(json.dumps(info)) == []
        environment = _docker("exec", container, "cat", "/proc/1/environ")
        assert environment and _leaks(environment) == []
        assert not [n for n in environment.split("\0") if n.startswith("CLAUDE_BOTTLE_INJECTED_")]
        for mount in info["Mounts"]:
            if mount["Type"] == "bind":
                for path in _files_under(Path(mount["Source"])):
                    with path.open("rb") as handle:
                        data = handle.read(1 << 20).decode("utf-8", "replace")
                    assert _leaks(data) == [], path
        # Nor does any file the bundle container sees through a bind (even one removed
        # on the host since: its mount keeps it).
        binds = ":".join(m["Destination"] for m in info["Mounts"] if m["Type"] == "bind")
        keys = [bytes(b ^ 0x5A for b in s.encode()).hex() for s in SECRETS]
        python = "/opt/claude-bottle/venv/bin/python3"
        seen = _docker("exec", container, python, "-I", "-c", FIND, binds, *keys)
        assert seen.strip() == "found []", seen
        # The bottle cannot reach the control socket: no mount of its directory.
        mounts = {m["Destination"]: m["Source"] for m in info["Mounts"]}
        control_dir = mounts["/run/claude-bottle/control"]
        (agent,) = json.loads(_docker("inspect", container.replace("-bundle", "-agent")))
        assert control_dir not in json.dumps(agent["Mounts"])
        # The handover is one-shot: a second one, even from the host, is refused.
        socket_path = Path(control_dir) / "control.sock"
        again = control.call(socket_path, "secrets", injected={"GITHUB_TOKEN": "ghp_replaced"})
        assert again.get("ok") is False and "already" in str(again.get("error")), again
    finally:
        go.touch()
        try:
            out, err = process.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
    assert process.returncode == 0, err
    # Injection, DLP of the host's own secret and the gateway all worked.
    assert out.split() == ["200", "403", "200"], (out, err)
    (injected,) = be.upstream.requests
    assert injected.path == "/injected"
    assert injected.headers["authorization"] == f"Bearer {INJECTED}"
    calls = [r for r in fake_api.requests if r.path.startswith("/v1/messages")]
    assert calls and all(r.headers.get("x-api-key") == REAL_KEY for r in calls)
    audit = (be.state_dir(NAME) / "audit.jsonl").read_text()
    assert _leaks(audit) == []
    events = [json.loads(line) for line in audit.splitlines()]
    refused = [e for e in events if e.get("rule") == "control:secrets-refused"]
    assert refused, "the second handover was not audited"
    assert os.environ.get("MY_SERVICE_TOKEN") != PLANTED  # the test's own process is clean
