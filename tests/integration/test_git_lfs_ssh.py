"""Git LFS of an ssh remote through the git gate, with real components (issue 21).

The remote is `SshGitHost` (Debian's sshd on loopback, throwaway keys) whose sessions find
a FAKE `git-lfs-authenticate` on their PATH (sshd_config `SetEnv`, see `serve_lfs`): it
prints an href to `GitHost`'s FAKE of GitHub's LFS API (HTTPS on loopback, pinned with
`[egress.resolve]`, its CA via `upstream_ca_file`) and a header carrying that API's token.
The real git-lfs runs in the bottle; the token must never be seen inside.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.integration.conftest import BottleEnv
from tests.integration.fake_github_lfs import commit_lfs_file
from tests.integration.git_host import GitHost, SshGitHost, throwaway_ssh_agent

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 180
AWS_KEY_ID = "AKIA" + "Q3EGRTJ7WXMPLZ5K"  # shaped like a key, assembled so no scanner trips here
TRACE = "GIT_TRACE=1 GIT_CURL_VERBOSE=1 GIT_TRANSFER_TRACE=1"


class Hosts(NamedTuple):
    ssh: SshGitHost
    lfs: GitHost  # its .lfs is the FAKE LFS API
    token: str  # what the fake git-lfs-authenticate hands out, the LFS API's credential

    def answer(self) -> str:
        basic = base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
        return json.dumps(
            {
                "href": "https://git.test/repo.git/info/lfs",
                "header": {"Authorization": f"Basic {basic}"},
                "expires_in": 3600,
            }
        )


@pytest.fixture
def hosts(tmp_path: Path, bottle_env: BottleEnv) -> Iterator[Hosts]:
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("no sshd: run scripts/install-system-deps.sh (openssh-server)")
    token = secrets.token_hex(20)
    (tmp_path / "sshhost").mkdir()
    (tmp_path / "lfshost").mkdir()
    ssh = SshGitHost(tmp_path / "sshhost")
    lfs = GitHost(tmp_path / "lfshost", token)
    with throwaway_ssh_agent(tmp_path / "sshhost" / "keys" / "client") as agent_socket:
        bottle_env.env["SSH_AUTH_SOCK"] = str(agent_socket)
        bottle_env.env["GIT_SSH_COMMAND"] = ssh.ssh_command
        bottle_env.write_config(f"""
            [egress]
            upstream_ca_file = "{lfs.ca_file}"
            [egress.resolve]
            "git.test" = "127.0.0.1:{lfs.port}"
            [git.remotes.origin]
            url = "{ssh.url}"
            push = ["bottle/*"]
        """)
        yield Hosts(ssh, lfs, token)
        ssh.close()
        lfs.close()


def _lfs(bottle_env: BottleEnv) -> None:
    if bottle_env.sh("command -v git-lfs", timeout=RUN_TIMEOUT).returncode != 0:
        pytest.skip("git-lfs is not installed inside this bottle")


def _asked(hosts: Hosts) -> list[str]:
    """What the fake git-lfs-authenticate was run with, one line per run."""
    log = hosts.ssh.lfs_log
    return log.read_text().splitlines() if log.exists() else []


def _nowhere_inside(bottle_env: BottleEnv, hosts: Hosts, *texts: str) -> None:
    """Neither the token nor the storage credential in the bottle's files or `texts`."""
    secrets_ = (hosts.token, hosts.lfs.lfs.media_secret)
    grep = subprocess.run(
        ["grep", "-rlaF", *[a for s in secrets_ for a in ("-e", s)], str(bottle_env.workspace)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert grep.stdout == "", grep.stdout
    for text in texts:
        assert not any(s in text for s in secrets_)
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert not any(s in audit for s in secrets_)


def test_an_ssh_remotes_lfs_content_is_cloned_with_no_token_inside(
    bottle_env: BottleEnv, hosts: Hosts, tmp_path: Path
) -> None:
    _lfs(bottle_env)
    hosts.ssh.serve_lfs(hosts.answer())
    content = b"large file over ssh " + secrets.token_hex(8).encode() + b"\n"
    oid = hosts.lfs.lfs.add(content)
    commit_lfs_file(hosts.ssh.bare, tmp_path / "seed", "big.bin", oid, len(content))
    result = bottle_env.sh(
        "git lfs install --skip-repo >/dev/null && "
        f"{TRACE} git clone -q {hosts.ssh.url} app 2> trace.txt; echo clone=$?; "
        "cat app/big.bin; env > env.txt; "
        "{ cat ~/.gitconfig; git -C app config -l --show-origin; } > config.txt 2>&1",
        timeout=RUN_TIMEOUT,
    )
    assert "clone=0" in result.stdout, result.stdout + result.stderr
    assert content.decode() in result.stdout
    trace = (bottle_env.workspace / "trace.txt").read_text(errors="replace")
    assert "/info/lfs/objects/batch" in trace  # git-lfs did talk to the gate
    _nowhere_inside(bottle_env, hosts, result.stdout, result.stderr)
    assert ("GET", f"/lfs-media/{oid}") in hosts.lfs.lfs.requests
    # ssh ran git-lfs-authenticate with the configured path, for a download, and once:
    # the answer is kept until it expires.
    path = hosts.ssh.url.split(str(hosts.ssh.port), 1)[1]  # `/…`: git-lfs 3 keeps the slash
    assert _asked(hosts) == [f"{path} download"]
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert '"rule":"git:lfs-batch"' in audit and '"rule":"git:lfs-download"' in audit


def _push_lfs(
    bottle_env: BottleEnv, url: str, branch: str, source: Path
) -> subprocess.CompletedProcess[str]:
    return bottle_env.sh(
        f"git clone -q {url} app && cd app && "
        "git lfs install --local >/dev/null && git lfs track '*.bin' >/dev/null && "
        f"git checkout -q -b {branch} && cp {source} data.bin && "
        "git add .gitattributes data.bin && "
        "git -c user.name=A -c user.email=a@b.test commit -q -m lfs && "
        f"git push origin {branch} 2> ../push.txt; echo push=$?; cat ../push.txt >&2",
        timeout=RUN_TIMEOUT,
    )


def test_an_lfs_object_pushed_to_an_ssh_remote_arrives(bottle_env: BottleEnv, hosts: Hosts) -> None:
    _lfs(bottle_env)
    hosts.ssh.serve_lfs(hosts.answer())
    content = b"an LFS object over ssh " + secrets.token_hex(8).encode() + b"\n"
    (bottle_env.workspace / "src.bin").write_bytes(content)
    result = _push_lfs(bottle_env, hosts.ssh.url, "bottle/lfs", bottle_env.workspace / "src.bin")
    assert "push=0" in result.stdout, result.stdout + result.stderr
    oid = hashlib.sha256(content).hexdigest()
    assert hosts.lfs.lfs.get(oid) == content
    assert hosts.ssh.ref("refs/heads/bottle/lfs") is not None
    assert any(line.endswith(" upload") for line in _asked(hosts)), _asked(hosts)
    # git-lfs's locks verification before the push went to the API ssh named, too.
    assert ("POST", "/repo.git/info/lfs/locks/verify") in hosts.lfs.lfs.requests
    _nowhere_inside(bottle_env, hosts, result.stdout, result.stderr)
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert '"rule":"git:lfs-upload"' in audit and oid in audit


def test_an_lfs_object_with_a_secret_is_refused_before_the_ssh_remotes_lfs_server(
    bottle_env: BottleEnv, hosts: Hosts
) -> None:
    _lfs(bottle_env)
    hosts.ssh.serve_lfs(hosts.answer())
    content = f"binary-ish\naws_access_key_id = {AWS_KEY_ID}\n".encode()
    (bottle_env.workspace / "src.bin").write_bytes(content)
    result = _push_lfs(bottle_env, hosts.ssh.url, "bottle/leak", bottle_env.workspace / "src.bin")
    assert "push=0" not in result.stdout, result.stdout + result.stderr
    oid = hashlib.sha256(content).hexdigest()
    refused = [line for line in result.stderr.splitlines() if "rule dlp:" in line]
    assert refused and oid in refused[0], result.stderr
    # Nothing of the object reached the LFS server: no batch, no upload (the locks
    # verification before a push may have asked it about locks).
    sent = [(m, p) for m, p in hosts.lfs.lfs.requests if "/locks" not in p]
    assert sent == []
    assert hosts.lfs.lfs.get(oid) is None
    assert hosts.ssh.ref("refs/heads/bottle/leak") is None


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (None, "not found"),  # the host serves no LFS over ssh
        ("this is not json", "not JSON"),
    ],
)
def test_a_failing_git_lfs_authenticate_is_named_and_the_gate_stays_up(
    bottle_env: BottleEnv, hosts: Hosts, tmp_path: Path, answer: str | None, said: str
) -> None:
    _lfs(bottle_env)
    if answer is not None:
        hosts.ssh.serve_lfs(answer)
    content = b"unreachable " + secrets.token_hex(8).encode()
    oid = hosts.lfs.lfs.add(content)
    commit_lfs_file(hosts.ssh.bare, tmp_path / "seed", "big.bin", oid, len(content))
    result = bottle_env.sh(
        f"GIT_LFS_SKIP_SMUDGE=1 git clone -q {hosts.ssh.url} app && cd app && "
        "git lfs pull; echo pull=$?; git ls-remote origin refs/heads/main | wc -l",
        timeout=RUN_TIMEOUT,
    )
    assert "pull=0" not in result.stdout, result.stdout + result.stderr
    assert "remote origin" in result.stderr and said in result.stderr, result.stderr
    assert "GIT_SSH_COMMAND" in result.stderr  # the host-side fix
    assert result.stdout.rstrip().endswith("1")  # the gate still serves
    assert hosts.lfs.lfs.requests == []
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert '"rule":"git:lfs-ssh"' in audit
