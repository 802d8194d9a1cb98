"""The LFS locks API through the git gate, with the real git-lfs in the bottle (issue 21).

The upstream is `GitHost` with its FAKE of GitHub's LFS API, which also fakes the locks API
(`fake_github_lfs`). Reads (`locks/verify` before a push, `git lfs locks`) are forwarded;
`git lfs lock`/`unlock` only on a branch the remote's `push` patterns allow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import BottleEnv
from tests.integration.git_host import GitHost, gated_remote

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 180
SETUP = (
    "git clone -q https://git.test/repo.git app && cd app && "
    "git lfs install --local >/dev/null && git lfs track '*.bin' >/dev/null && "
    "git checkout -q -b {branch} && echo data > data.bin && "
    "git add .gitattributes data.bin && "
    "git -c user.name=A -c user.email=a@b.test commit -q -m lfs && "
)


@pytest.fixture
def host(tmp_path: Path, bottle_env: BottleEnv) -> Iterator[GitHost]:
    yield from gated_remote(tmp_path, bottle_env)


def _lfs(bottle_env: BottleEnv) -> None:
    if bottle_env.sh("command -v git-lfs", timeout=RUN_TIMEOUT).returncode != 0:
        pytest.skip("git-lfs is not installed inside this bottle")


def _locks_records(bottle_env: BottleEnv) -> list[dict[str, Any]]:
    lines = (bottle_env.state_dir() / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [r for r in records if r.get("rule") == "git:lfs-locks"]


def test_lock_list_and_unlock_on_a_pushable_branch_reach_the_upstream(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    _lfs(bottle_env)
    result = bottle_env.sh(
        SETUP.format(branch="bottle/art") + "git push -q -u origin bottle/art; echo push=$?; "
        "git lfs lock data.bin; echo lock=$?; git lfs locks; "
        "git lfs unlock data.bin; echo unlock=$?",
        timeout=RUN_TIMEOUT,
    )
    out = result.stdout + result.stderr
    assert "push=0" in result.stdout and "lock=0" in result.stdout, out
    assert "unlock=0" in result.stdout, out
    listed = [line for line in result.stdout.splitlines() if line.startswith("data.bin")]
    assert listed and "tester" in listed[0], out  # `git lfs locks`, from the upstream
    assert host.lfs.locks == {}  # locked, then unlocked, upstream
    sent = [json.loads(body) for body in host.lfs.bodies if body]
    assert {"path": "data.bin", "ref": {"name": "refs/heads/bottle/art"}} in sent
    paths = [path for method, path in host.lfs.requests]
    assert "/repo.git/info/lfs/locks/verify" in paths  # the push's verification
    calls = {str(r["detail"]["call"]) for r in _locks_records(bottle_env)}
    assert {"verify", "lock", "list", "unlock"} <= calls
    assert bottle_env.env["GATE_TEST_TOKEN"] not in out


def test_a_lock_on_a_branch_outside_the_push_patterns_is_refused(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    _lfs(bottle_env)
    result = bottle_env.sh(
        SETUP.format(branch="main2") + "git lfs lock data.bin; echo lock=$?",
        timeout=RUN_TIMEOUT,
    )
    assert "lock=0" not in result.stdout, result.stdout + result.stderr
    assert "[git.remotes.origin] push" in result.stderr, result.stderr
    assert host.lfs.locks == {}
    assert ("POST", "/repo.git/info/lfs/locks") not in host.lfs.requests
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert '"rule":"git:lfs-lock"' in audit


def test_a_host_without_locking_gets_its_404_and_the_push_goes_on(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    _lfs(bottle_env)
    host.lfs.locks_supported = False
    result = bottle_env.sh(
        SETUP.format(branch="bottle/nolocks") + "git push origin bottle/nolocks; echo push=$?; "
        "git config --get-regexp 'lfs[.].*[.]locksverify'",
        timeout=RUN_TIMEOUT,
    )
    assert "push=0" in result.stdout, result.stdout + result.stderr
    # git-lfs's answer to a 404 (or 501) from the locks API: it turns verification off
    # for that endpoint, in the repository's config, and goes on.
    assert "locksverify false" in result.stdout, result.stdout + result.stderr
    assert host.ref("refs/heads/bottle/nolocks") is not None
    statuses = [r["detail"]["status"] for r in _locks_records(bottle_env)]
    assert 404 in statuses


def test_malformed_locks_requests_get_http_errors(bottle_env: BottleEnv, host: GitHost) -> None:
    result = bottle_env.sh(
        'gate="$(git ls-remote --get-url https://git.test/repo.git)"; base=${gate%/}/info/lfs; '
        'main=\'{"path": "a", "ref": {"name": "refs/heads/main"}}\'; '
        "for data in '{' '{\"ref\": 1}' \"$main\"; do "
        "curl -s -o /dev/null -w '%{http_code}\\n' -X POST "
        '-H \'content-type: application/vnd.git-lfs+json\' --data "$data" "$base/locks"; done; '
        "curl -s -o /dev/null -w '%{http_code}\\n' -X POST --data '{\"force\": true, "
        '"ref": {"name": "refs/heads/bottle/x"}}\' "$base/locks/1/unlock"',
        timeout=RUN_TIMEOUT,
    )
    assert result.stdout.split() == ["400", "400", "403", "403"], result.stdout + result.stderr
    assert ("POST", "/repo.git/info/lfs/locks") not in host.lfs.requests
