"""The git gate with real git on both sides (issue 21).

The upstream is `GitHost`: `git http-backend` behind TLS on loopback, every request
requiring a token. The token is given to the bundle host-side (`credential =
"env:GATE_TEST_TOKEN"`); the bottle's git uses the remote's real URL, which its
~/.gitconfig rewrites to the gate. Each attack of a prompt-injected agent is one push
that must be refused whole, with the rule on git's `remote:` lines and nothing upstream.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import BottleEnv
from tests.integration.git_host import GitHost, SshGitHost, gated_remote, throwaway_ssh_agent

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 180
AWS_KEY_ID = "AKIA" + "Q3EGRTJ7WXMPLZ5K"  # shaped like a key, assembled so no scanner trips here
CLONE = "git clone -q https://git.test/repo.git app && cd app && "
COMMIT = "git -c user.name=Agent -c user.email=agent@bottle.test commit -q"


@pytest.fixture
def host(tmp_path: Path, bottle_env: BottleEnv) -> Iterator[GitHost]:
    yield from gated_remote(tmp_path, bottle_env)


def _sh(bottle_env: BottleEnv, host: GitHost, script: str) -> subprocess.CompletedProcess[str]:
    return bottle_env.sh(CLONE + script, timeout=RUN_TIMEOUT)


def _refused(result: subprocess.CompletedProcess[str], rule: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("remote:")]
    assert any(f"rule {rule}" in line for line in lines), result.stderr


def _nothing_sent_upstream(host: GitHost) -> None:
    """The gate's upstream push starts before the verdict (its refs advertisement overlaps
    the judging) but a refused push never gets to send: no receive-pack exchange upstream."""
    sent = [path for method, path, _ in host.requests if method == "POST"]
    assert not [path for path in sent if path.endswith("/git-receive-pack")], sent


def test_clone_and_push_an_allowed_branch_arrives_upstream(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    result = _sh(
        bottle_env,
        host,
        "cat README && git checkout -q -b bottle/work && echo more >> README && "
        f"{COMMIT} -am work && git push -q origin bottle/work && git rev-parse HEAD",
    )
    assert result.returncode == 0, result.stderr
    assert "seeded" in result.stdout
    head = result.stdout.split()[-1]
    assert host.ref("refs/heads/bottle/work") == head
    # The exchanges upstream carried the host-side token (git asks for it after a 401).
    posts = [authorised for method, _, authorised in host.requests if method == "POST"]
    assert posts and all(posts)
    assert any(path.endswith("git-receive-pack") for _, path, _ in host.requests)


def test_push_to_a_branch_outside_the_patterns_is_refused(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    main = host.ref("refs/heads/main")
    result = _sh(
        bottle_env, host, f"echo x >> README && {COMMIT} -am x && git push origin HEAD:main"
    )
    _refused(result, "git:branch")
    assert 'push = [..., "main"]' in result.stderr
    assert host.ref("refs/heads/main") == main
    _nothing_sent_upstream(host)


def test_force_push_is_refused(bottle_env: BottleEnv, host: GitHost) -> None:
    result = _sh(
        bottle_env,
        host,
        f"git checkout -q -b bottle/f && echo a > a && git add a && {COMMIT} -m a && "
        "git push -q origin bottle/f && "
        f"git reset -q --hard HEAD~1 && echo b > b && git add b && {COMMIT} -m b && "
        "git push -f origin bottle/f",
    )
    _refused(result, "git:force")
    pushed = host.ref("refs/heads/bottle/f")
    assert pushed is not None  # the first, fast-forward push went through; the force did not
    log = subprocess.run(
        ["git", "-C", str(host.bare), "log", "--format=%s", "-1", pushed],
        capture_output=True,
        text=True,
        check=True,
    )
    assert log.stdout.strip() == "a"


def test_delete_is_refused(bottle_env: BottleEnv, host: GitHost) -> None:
    result = _sh(
        bottle_env,
        host,
        "git push -q origin HEAD:refs/heads/bottle/keep && git push origin :bottle/keep",
    )
    _refused(result, "git:delete")
    assert host.ref("refs/heads/bottle/keep") is not None


def test_tag_is_refused(bottle_env: BottleEnv, host: GitHost) -> None:
    result = _sh(bottle_env, host, "git tag v1 && git push origin v1")
    _refused(result, "git:tag")
    assert host.ref("refs/tags/v1") is None


def test_a_secret_in_pushed_content_is_refused(bottle_env: BottleEnv, host: GitHost) -> None:
    (bottle_env.workspace / "leak.txt").write_text(f"line one\naws_access_key_id = {AWS_KEY_ID}\n")
    result = _sh(
        bottle_env,
        host,
        f"git checkout -q -b bottle/leak && cp {bottle_env.workspace}/leak.txt . && "
        f"git add leak.txt && {COMMIT} -m leak && git push origin bottle/leak",
    )
    _refused(result, "dlp:")
    assert "leak.txt" in result.stderr and "line 2" in result.stderr
    assert AWS_KEY_ID not in result.stderr
    assert host.ref("refs/heads/bottle/leak") is None
    _nothing_sent_upstream(host)


def test_the_hosts_own_secret_base64_encoded_is_refused(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    token = bottle_env.env["GATE_TEST_TOKEN"]
    encoded = base64.b64encode(token.encode()).decode()
    (bottle_env.workspace / "enc.txt").write_text(f"blob: {encoded}\n")
    result = _sh(
        bottle_env,
        host,
        f"git checkout -q -b bottle/enc && cp {bottle_env.workspace}/enc.txt . && "
        f"git add enc.txt && {COMMIT} -m enc && git push origin bottle/enc",
    )
    _refused(result, "dlp:secret:")
    assert token not in result.stderr and encoded not in result.stderr
    assert host.ref("refs/heads/bottle/enc") is None


def test_the_credential_is_nowhere_inside(bottle_env: BottleEnv, host: GitHost) -> None:
    token = bottle_env.env["GATE_TEST_TOKEN"]
    result = _sh(
        bottle_env,
        host,
        "env; cat ~/.gitconfig; git config --list --show-origin; "
        "cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; "
        "grep -rs . ~ 2>/dev/null | head -c 2000000",
    )
    assert result.returncode == 0, result.stderr
    assert "insteadof" in result.stdout.lower()
    assert token not in result.stdout and token not in result.stderr


def test_push_through_the_proxy_is_refused_even_to_an_allowed_host(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    # Without the bottle's rewrite (the agent can drop it: the variable is its own), git
    # goes through the egress proxy: no push that way.
    result = bottle_env.sh(
        f"git init -q p && cd p && {COMMIT} --allow-empty -m e && "
        "GIT_CONFIG_SYSTEM=/dev/null git push https://git.test/repo.git "
        "HEAD:refs/heads/bottle/direct",
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode != 0
    assert "403" in result.stderr, result.stderr
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert '"rule":"git-push-outside-gate"' in audit
    assert host.ref("refs/heads/bottle/direct") is None
    assert not any("receive-pack" in path for _, path, _ in host.requests)


def test_shallow_and_partial_clones_and_fetch_work(bottle_env: BottleEnv, host: GitHost) -> None:
    result = bottle_env.sh(
        "git clone -q --depth 1 https://git.test/repo.git shallow && "
        "git clone -q --filter=blob:none https://git.test/repo.git partial && "
        "cat shallow/README partial/README && cd partial && git fetch -q origin && echo fetched",
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("seeded") == 2 and "fetched" in result.stdout


def test_other_repositories_and_ref_namespaces_are_refused(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    # A repository the user did not configure, under the gate's address; a path that
    # tries to climb out of the gate's mirrors; a ref outside branches and tags.
    result = _sh(
        bottle_env,
        host,
        "git push http://127.0.0.1:3130/other.git HEAD:refs/heads/bottle/x; "
        "git ls-remote http://127.0.0.1:3130/../origin.git; "
        "git push origin HEAD:refs/notes/x",
    )
    assert "no [git.remotes.other] is configured" in result.stderr
    _refused(result, "git:ref-namespace")
    assert host.ref("refs/notes/x") is None


def test_a_malformed_request_gets_an_http_error_and_the_gate_stays_up(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    result = _sh(
        bottle_env,
        host,
        "curl -s -o /dev/null -w '%{http_code}\\n' -X POST --data-binary 'garbage' "
        "-H 'content-type: application/x-git-receive-pack-request' "
        "http://127.0.0.1:3130/origin.git/git-receive-pack; "
        "printf 'NOT HTTP\\r\\n\\r\\n' | timeout 5 python3 -c "
        '\'import socket,sys; s=socket.create_connection(("127.0.0.1",3130)); '
        "s.sendall(sys.stdin.buffer.read()); print(s.recv(100)[:12])'; "
        "git ls-remote origin refs/heads/main",
    )
    assert result.returncode == 0, result.stderr
    assert "HTTP/1.1 400" in result.stdout
    assert result.stdout.splitlines()[-1].endswith("refs/heads/main")
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert '"rule":"git:bad-request"' in audit


def test_pushes_are_audited_per_ref(bottle_env: BottleEnv, host: GitHost) -> None:
    _sh(
        bottle_env,
        host,
        f"git checkout -q -b bottle/a && {COMMIT} --allow-empty -m a && "
        "git push -q origin bottle/a; git push origin HEAD:main",
    )
    records = [
        line
        for line in (bottle_env.state_dir() / "audit.jsonl").read_text().splitlines()
        if '"kind":"git"' in line
    ]
    assert any('"rule":"git:fetch"' in r and '"decision":"allow"' in r for r in records)
    assert any('"rule":"git:push"' in r and "refs/heads/bottle/a" in r for r in records)
    assert any(
        '"rule":"git:branch"' in r and '"decision":"deny"' in r and "refs/heads/main" in r
        for r in records
    )


def test_an_upstream_that_rejects_the_credential_is_named(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    bottle_env.env["GATE_TEST_TOKEN"] = "wrong-token-value-0123456789"
    result = bottle_env.sh("git clone https://git.test/repo.git app", timeout=RUN_TIMEOUT)
    assert result.returncode != 0
    assert "remote origin" in result.stderr and "git:upstream" in result.stderr


@pytest.fixture
def ssh_host(tmp_path: Path, bottle_env: BottleEnv) -> Iterator[SshGitHost]:
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("no sshd: run scripts/install-system-deps.sh (openssh-server)")
    directory = tmp_path / "sshhost"
    directory.mkdir()
    server = SshGitHost(directory)
    with throwaway_ssh_agent(directory / "keys" / "client") as agent_socket:
        bottle_env.env["SSH_AUTH_SOCK"] = str(agent_socket)
        bottle_env.env["GIT_SSH_COMMAND"] = server.ssh_command
        bottle_env.write_config(f"""
            [git.remotes.origin]
            url = "{server.url}"
        """)
        yield server
        server.close()


def test_an_ssh_remote_clones_and_pushes_with_the_hosts_ssh(
    bottle_env: BottleEnv, ssh_host: SshGitHost
) -> None:
    result = bottle_env.sh(
        f"git clone -q {ssh_host.url} app && cd app && cat README && "
        f"git checkout -q -b bottle/ssh && echo s >> README && {COMMIT} -am s && "
        "git push -q origin bottle/ssh && git rev-parse HEAD && "
        "git push origin HEAD:main; ls ~/.ssh 2>&1; env | grep -c SSH_COMMAND",
        timeout=RUN_TIMEOUT,
    )
    assert "seeded" in result.stdout, result.stderr
    assert ssh_host.ref("refs/heads/bottle/ssh") == result.stdout.split()[1]
    _refused(result, "git:branch")
    assert ssh_host.ref("refs/heads/main") != ssh_host.ref("refs/heads/bottle/ssh")
    assert result.stdout.rstrip().endswith("0")  # the key's ssh command stays host-side


def test_the_bottle_never_sees_the_hosts_ssh_agent(
    bottle_env: BottleEnv, ssh_host: SshGitHost
) -> None:
    """Only the bundle (a host process, or its container) holds the agent's socket: the
    bottle that can clone over ssh has no SSH_AUTH_SOCK and no socket of the agent's."""
    agent_socket = bottle_env.env["SSH_AUTH_SOCK"]
    result = bottle_env.sh(
        f"git ls-remote -q {ssh_host.url} >/dev/null && echo reached; "
        'echo "agent=${SSH_AUTH_SOCK:-none}"; '
        f"for s in /run/claude-bottle/ssh-agent.sock {agent_socket}; do "
        '[ -e "$s" ] && echo "found $s"; done; '
        "find / -xdev -type s 2>/dev/null | grep -ci agent",
        timeout=RUN_TIMEOUT,
    )
    assert "reached" in result.stdout, result.stderr  # the gate itself does reach it
    assert "agent=none" in result.stdout
    assert "found" not in result.stdout
    assert result.stdout.rstrip().endswith("0")


def test_two_pushes_at_once_both_arrive(bottle_env: BottleEnv, host: GitHost) -> None:
    result = _sh(
        bottle_env,
        host,
        f"{COMMIT} --allow-empty -m one && {{ "
        "(git push -q origin HEAD:refs/heads/bottle/one > one.log 2>&1; echo one=$? >> one.log) & "
        "(git push -q origin HEAD:refs/heads/bottle/two > two.log 2>&1; echo two=$? >> two.log) & "
        "wait; }; cat one.log two.log",
    )
    assert "one=0" in result.stdout and "two=0" in result.stdout, result.stdout + result.stderr
    assert host.ref("refs/heads/bottle/one") == host.ref("refs/heads/bottle/two") is not None


def test_a_secret_in_a_commit_message_or_a_path_is_refused(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    result = _sh(
        bottle_env,
        host,
        f"git checkout -q -b bottle/msg && {COMMIT} --allow-empty -m 'key {AWS_KEY_ID}' && "
        "git push origin bottle/msg; "
        f"git checkout -q -b bottle/path main && touch {AWS_KEY_ID}.txt && "
        f"git add . && {COMMIT} -m path && git push origin bottle/path",
    )
    refusals = [line for line in result.stderr.splitlines() if "rule dlp:" in line]
    assert len(refusals) == 2, result.stderr
    assert "commit" in refusals[0] and "the path" in refusals[1]
    assert AWS_KEY_ID not in "\n".join(refusals)
    assert host.ref("refs/heads/bottle/msg") is None and host.ref("refs/heads/bottle/path") is None


def test_a_secret_in_a_ref_name_is_refused_and_kept_out_of_the_audit_log(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    result = _sh(bottle_env, host, f"git push origin HEAD:refs/heads/bottle/{AWS_KEY_ID}")
    _refused(result, "dlp:")
    gate_lines = [line for line in result.stderr.splitlines() if line.startswith("remote:")]
    assert gate_lines and AWS_KEY_ID not in "\n".join(gate_lines)  # git itself echoes its ref
    assert AWS_KEY_ID not in (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert host.ref(f"refs/heads/bottle/{AWS_KEY_ID}") is None


def test_the_rewrites_hold_whatever_the_homes_gitconfig_says(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    # The agent replaces its ~/.gitconfig (the file is its own, and it outlives the run)
    # and cannot touch the gate's file; the next run of the bottle still clones through
    # the gate, whose rewrites are git's system config.
    first = bottle_env.sh(
        "rm -f ~/.gitconfig; printf '[core]\\n\\tpager = cat\\n' > ~/.gitconfig; "
        'echo "[url \\"https://evil.test/\\"]" >> "$GIT_CONFIG_SYSTEM" || echo read-only',
        timeout=RUN_TIMEOUT,
    )
    assert "read-only" in first.stdout, first.stdout + first.stderr
    result = bottle_env.sh(
        "cat ~/.gitconfig && git clone -q https://git.test/repo.git app && cat app/README",
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "pager = cat" in result.stdout and "seeded" in result.stdout


LFS_BATCH = "https://git.test/repo.git/info/lfs/objects/batch"
LFS_OBJECT = '"objects":[{"oid":"' + "a" * 64 + '","size":3}]'


def test_an_lfs_upload_through_the_proxy_is_refused_and_a_download_passes(
    bottle_env: BottleEnv, host: GitHost
) -> None:
    post = (
        "curl -s -o /dev/null -w '%{http_code}\\n' -X POST "
        "-H 'content-type: application/vnd.git-lfs+json' "
        "-H 'accept: application/vnd.git-lfs+json' "
    )
    result = bottle_env.sh(
        f'{post} --data \'{{"operation":"upload",{LFS_OBJECT}}}\' {LFS_BATCH}; '
        f'{post} --data \'{{"operation":"download",{LFS_OBJECT}}}\' {LFS_BATCH}',
        timeout=RUN_TIMEOUT,
    )
    assert result.stdout.split() == ["403", "401"], result.stdout + result.stderr
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert '"rule":"git-push-outside-gate"' in audit
    # Only the download reached the upstream (which wants its token: 401).
    assert [m for m, path, _ in host.requests if path.endswith("/objects/batch")] == ["POST"]


def test_git_lfs_cannot_push_objects_past_the_gate(bottle_env: BottleEnv, host: GitHost) -> None:
    result = _sh(
        bottle_env,
        host,
        "command -v git-lfs >/dev/null || { echo no-git-lfs; exit 0; }; "
        "git lfs install --local >/dev/null && git lfs track '*.bin' >/dev/null && "
        "git checkout -q -b bottle/lfs && echo big > a.bin && git add .gitattributes a.bin && "
        f"{COMMIT} -m lfs && "
        # The remote's own LFS endpoint is the gate (test_git_lfs_gate.py); one named by
        # hand, without the gate's rewrites, goes through the egress proxy.
        "{ GIT_CONFIG_SYSTEM=/dev/null git -c lfs.locksverify=false "
        f"-c lfs.url={LFS_BATCH.removesuffix('/objects/batch')} lfs push origin "
        "bottle/lfs; echo proxy=$?; }",
    )
    if "no-git-lfs" in result.stdout:
        pytest.skip("git-lfs is not installed inside this bottle")
    assert "proxy=0" not in result.stdout, result.stdout
    assert host.ref("refs/heads/bottle/lfs") is None
    assert not any("/info/lfs" in path for _, path, _ in host.requests)
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert '"rule":"git-push-outside-gate"' in audit, result.stdout + result.stderr


# --- smolmachines, through its recording fake -------------------------------------------
# No microVM boots here: tests/fakes/fake_smolvm stands in for smolvm (NOT smolvm). The
# bundle is the real one, wired by the real smolmachines launch; the guest's relay is
# played by a forwarder from a loopback port to the git socket the machine would mount.

FAKE_SMOLVM = Path(__file__).resolve().parents[1] / "fakes" / "fake_smolvm"


def _forward(port_holder: list[int], target: Path) -> socketserver.ThreadingTCPServer:
    """What the guest's relay does for port 3130: each connection to the git gate's socket."""

    class Pipe(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.socket(socket.AF_UNIX) as upstream:
                upstream.connect(str(target))

                def pump(src: socket.socket, dst: socket.socket) -> None:
                    with contextlib.suppress(OSError):
                        while data := src.recv(65536):
                            dst.sendall(data)
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)

                back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
                back.start()
                pump(self.request, upstream)
                back.join(RUN_TIMEOUT)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Pipe)
    server.daemon_threads = True
    port_holder.append(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_smolmachines_serves_the_gate_through_its_fake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from claude_bottle.backend.base import LaunchRequest
    from claude_bottle.backend.smolmachines import SmolmachinesBackend
    from claude_bottle.bottle_env import GATE_GIT_CONFIG
    from claude_bottle.config import load_config

    token = secrets.token_hex(20)
    (tmp_path / "githost").mkdir()
    server = GitHost(tmp_path / "githost", token)
    runtime = Path(tempfile.mkdtemp(prefix="cbsg-"))  # short: unix socket paths are limited
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "smolvm").symlink_to(FAKE_SMOLVM)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    monkeypatch.setenv("FAKE_SMOLVM_STATE", str(tmp_path / "fake"))
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLAUDE_BOTTLE_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("GATE_TEST_TOKEN", token)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    user = tmp_path / "config.toml"
    user.write_text(
        f'[egress]\nupstream_ca_file = "{server.ca_file}"\n'
        f'[egress.resolve]\n"git.test" = "127.0.0.1:{server.port}"\n'
        f'[git.remotes.origin]\nurl = "{server.url}"\npush = ["bottle/*"]\n'
        'credential = "env:GATE_TEST_TOKEN"\n'
    )
    config = load_config(workspace=workspace, known_backends=("smolmachines",), user_config=user)
    pack = tmp_path / "agent.smolmachine"
    pack.write_text("fake pack")
    backend = SmolmachinesBackend(checks=lambda: [], pack_image=lambda image, exe: pack)
    plan = backend.plan(LaunchRequest("gate", workspace, config, ("true",)))
    assert plan.env["GIT_CONFIG_SYSTEM"] == GATE_GIT_CONFIG
    assert "3130=/run/claude-bottle/git.sock" in plan.relay_command
    ports: list[int] = []
    try:
        with backend.launch(plan):
            calls = [
                json.loads(line)["argv"]
                for line in (tmp_path / "fake" / "calls.jsonl").read_text().splitlines()
            ]
            create = next(argv for argv in calls if argv[:2] == ["machine", "create"])
            git_socket = runtime / "gate" / "bundle" / "git.sock"
            assert f"{git_socket}:/run/claude-bottle/git.sock" in create
            # The rewrites the guest reads as its system git config (the bundle dir is
            # mounted read-only at /run/claude-bottle/bundle).
            published = (git_socket.parent / "gitconfig").read_text()
            assert 'insteadOf = "https://git.test/repo.git"' in published
            forwarder = _forward(ports, git_socket)
            gate = f"http://127.0.0.1:{ports[0]}/origin.git"
            env = {
                "PATH": "/usr/bin:/bin",
                "HOME": str(tmp_path),
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": "/dev/null",
            }
            script = (
                f"git clone -q {gate} app && cd app && git checkout -q -b bottle/vm && "
                f"echo vm >> README && {COMMIT} -am vm && git push -q origin bottle/vm && "
                "git rev-parse HEAD && git push origin HEAD:main"
            )
            result = subprocess.run(
                ["/bin/sh", "-c", script],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
            )
            forwarder.shutdown()
    finally:
        server.close()
        shutil.rmtree(runtime, ignore_errors=True)
    assert server.ref("refs/heads/bottle/vm") == result.stdout.split()[0], result.stderr
    _refused(result, "git:branch")
    assert server.ref("refs/heads/main") != server.ref("refs/heads/bottle/vm")
