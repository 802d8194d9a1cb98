"""Git LFS through the git gate, with the real git-lfs in the bottle (issue 21).

The upstream is `GitHost` with its FAKE of GitHub's LFS API (`fake_github_lfs`): the batch
API wants the repository's token, and its actions carry a storage credential of their own
(`Authorization: RemoteAuth …`). Neither may ever be seen inside the bottle.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import BottleEnv
from tests.integration.fake_github_lfs import commit_lfs_file
from tests.integration.git_host import GitHost, gated_remote

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 180
AWS_KEY_ID = "AKIA" + "Q3EGRTJ7WXMPLZ5K"  # shaped like a key, assembled so no scanner trips here
UNKNOWN_BATCH = '{"operation":"download","objects":[{"oid":"' + "b" * 64 + '","size":3}]}'
TRACE = "GIT_TRACE=1 GIT_CURL_VERBOSE=1 GIT_TRANSFER_TRACE=1 GIT_TRACE_PACKET=1"


@pytest.fixture
def host(tmp_path: Path, bottle_env: BottleEnv) -> Iterator[GitHost]:
    yield from gated_remote(tmp_path, bottle_env)


def _lfs(bottle_env: BottleEnv) -> None:
    found = bottle_env.sh("command -v git-lfs", timeout=RUN_TIMEOUT)
    if found.returncode != 0:
        pytest.skip("git-lfs is not installed inside this bottle")


def test_a_clone_gets_lfs_content_through_the_gate_with_no_credential_inside(
    bottle_env: BottleEnv, host: GitHost, tmp_path: Path
) -> None:
    _lfs(bottle_env)
    content = b"large file content " + secrets.token_hex(8).encode() + b"\n"
    oid = host.lfs.add(content)
    commit_lfs_file(host.bare, tmp_path / "seed", "big.bin", oid, len(content))
    result = bottle_env.sh(
        "git lfs install --skip-repo >/dev/null && "
        f"{TRACE} git clone -q https://git.test/repo.git app 2> trace.txt; echo clone=$?; "
        "cat app/big.bin; env > env.txt; cat ~/.gitconfig app/.git/config > config.txt",
        timeout=RUN_TIMEOUT,
    )
    assert "clone=0" in result.stdout, result.stdout + result.stderr
    assert content.decode() in result.stdout
    # The bottle's whole view: git-lfs's traces, its environment, its config, every file.
    token = bottle_env.env["GATE_TEST_TOKEN"]
    seen = [
        (bottle_env.workspace / name).read_text(errors="replace")
        for name in ("trace.txt", "env.txt", "config.txt")
    ]
    assert "/info/lfs/objects/batch" in seen[0]  # the trace did record the LFS exchange
    grep = subprocess.run(
        ["grep", "-rlaF", "-e", host.lfs.media_secret, "-e", token, str(bottle_env.workspace)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert grep.stdout == "", grep.stdout
    for text in seen:
        assert host.lfs.media_secret not in text and token not in text
    assert ("GET", f"/lfs-media/{oid}") in host.lfs.requests  # the gate fetched it
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert '"rule":"git:lfs-batch"' in audit and '"rule":"git:lfs-download"' in audit
    assert host.lfs.media_secret not in audit and token not in audit


def _push_lfs(bottle_env: BottleEnv, branch: str, source: Path) -> subprocess.CompletedProcess[str]:
    """Clone, add `source` as an LFS file on `branch`, push it through the gate."""
    return bottle_env.sh(
        "git clone -q https://git.test/repo.git app && cd app && "
        "git lfs install --local >/dev/null && git lfs track '*.bin' >/dev/null && "
        f"git checkout -q -b {branch} && cp {source} data.bin && "
        "git add .gitattributes data.bin && "
        "git -c user.name=A -c user.email=a@b.test commit -q -m lfs && "
        f"{TRACE} git push origin {branch} 2> ../push.txt; echo push=$?; cat ../push.txt >&2",
        timeout=RUN_TIMEOUT,
    )


def test_a_pushed_lfs_file_arrives_upstream_object_and_ref(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    _lfs(bottle_env)
    content = b"an LFS object from the bottle " + secrets.token_hex(8).encode() + b"\n"
    (bottle_env.workspace / "src.bin").write_bytes(content)
    result = _push_lfs(bottle_env, "bottle/lfs", bottle_env.workspace / "src.bin")
    assert "push=0" in result.stdout, result.stdout + result.stderr
    oid = hashlib.sha256(content).hexdigest()
    assert host.lfs.get(oid) == content
    assert host.ref("refs/heads/bottle/lfs") is not None
    # The storage credential went from the gate to the LFS server, never to the bottle.
    assert host.lfs.media_secret not in result.stderr
    assert bottle_env.env["GATE_TEST_TOKEN"] not in result.stderr
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert '"rule":"git:lfs-upload"' in audit and oid in audit


def test_an_lfs_object_with_a_secret_is_refused_and_nothing_reaches_the_lfs_server(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    _lfs(bottle_env)
    content = f"binary-ish\naws_access_key_id = {AWS_KEY_ID}\n".encode()
    (bottle_env.workspace / "src.bin").write_bytes(content)
    result = _push_lfs(bottle_env, "bottle/leak", bottle_env.workspace / "src.bin")
    assert "push=0" not in result.stdout, result.stdout + result.stderr
    oid = hashlib.sha256(content).hexdigest()
    refused = [line for line in result.stderr.splitlines() if "rule dlp:" in line]
    assert refused and oid in refused[0], result.stderr
    # Not even its batch (git-lfs's locks verification before a push is forwarded now).
    assert [(m, p) for m, p in host.lfs.requests if "/locks" not in p] == []
    assert host.lfs.get(oid) is None
    assert host.ref("refs/heads/bottle/leak") is None
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert '"rule":"dlp:' in audit and AWS_KEY_ID not in audit


def test_a_batch_for_an_unknown_object_or_ticket_gets_an_error_not_a_crash(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    result = bottle_env.sh(
        'gate="$(git ls-remote --get-url https://git.test/repo.git)"; '
        "base=${gate%/}/info/lfs/objects; "
        "curl -s -X POST -H 'content-type: application/vnd.git-lfs+json' "
        f"--data '{UNKNOWN_BATCH}' "
        '"$base/batch"; echo; '
        f"curl -s -o /dev/null -w '%{{http_code}}\\n' \"$base/{'b' * 64}/{'A' * 32}\"; "
        "curl -s -o /dev/null -w '%{http_code}\\n' -X POST --data '{' \"$base/batch\"",
        timeout=RUN_TIMEOUT,
    )
    lines = result.stdout.splitlines()
    assert '"code": 404' in lines[0], result.stdout + result.stderr
    assert lines[1:] == ["404", "400"], result.stdout + result.stderr
