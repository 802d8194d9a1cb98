"""An ssh remote's LFS endpoint through git-lfs-authenticate (bundle/git_lfs_ssh.py).

The ssh here is a recording stand-in named by GIT_SSH (as a user's would be): a script
that writes its argv to a file and prints what the test tells it. The real sshd is in
tests/integration/test_git_lfs_ssh.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
from pathlib import Path

import pytest

from claude_bottle.bundle import git_lfs_ssh, http1
from claude_bottle.bundle.git_lfs_gate import Endpoint, Exchange, LfsGate, api_url, lfs_route
from claude_bottle.bundle.git_lfs_ssh import SshAuthCache, authenticate_argv, parse_answer
from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.git_upstream import GitEnv, hardened_env, ssh_argv, ssh_target
from claude_bottle.bundle.refusal import Refusal

REMOTE = GateRemote("origin", "ssh://git@git.test:2222/acme/app.git")
SCP = GateRemote("up", "git@git.test:acme/app.git")
TOKEN = "RemoteAuth " + secrets.token_hex(16)
ANSWER = json.dumps(
    {"href": "https://lfs.test/acme/app.git/info/lfs", "header": {"Authorization": TOKEN}}
)


def test_ssh_argv_follows_gits_choice_of_ssh() -> None:
    target = ssh_target(REMOTE.url)
    assert target == ("git@git.test", 2222, "/acme/app.git")
    assert ssh_target(SCP.url) == ("git@git.test", None, "acme/app.git")
    assert ssh_argv({}, target, "cmd") == ["ssh", "-p", "2222", "git@git.test", "cmd"]
    shell = "ssh -i /k -o UserKnownHostsFile=/kh"
    assert ssh_argv({"GIT_SSH_COMMAND": shell, "GIT_SSH": "/bin/x"}, target, "cmd") == [
        "sh",
        "-c",
        shell + ' "$@"',
        shell,
        "-p",
        "2222",
        "git@git.test",
        "cmd",
    ]
    assert ssh_argv({"GIT_SSH": "/opt/plink.exe"}, target, "c")[:3] == [
        "/opt/plink.exe",
        "-P",
        "2222",
    ]
    assert ssh_argv({"GIT_SSH": "/x/tortoiseplink"}, target, "c")[1:4] == ["-batch", "-P", "2222"]
    assert ssh_argv({}, ssh_target(SCP.url), "c") == ["ssh", "git@git.test", "c"]
    with pytest.raises(ValueError):
        ssh_argv({}, ssh_target("-oProxyCommand=x:repo"), "c")
    with pytest.raises(ValueError):
        ssh_argv({"GIT_SSH_VARIANT": "simple"}, target, "c")


def test_the_remote_command_is_the_configs_path_and_the_gates_operation() -> None:
    assert authenticate_argv(REMOTE, {}, "download")[-1] == (
        "git-lfs-authenticate /acme/app.git download"
    )
    assert authenticate_argv(SCP, {}, "upload")[-1] == "git-lfs-authenticate acme/app.git upload"
    odd = GateRemote("odd", "git@h:we ird/$(x).git")
    assert authenticate_argv(odd, {}, "upload")[-1] == (
        "git-lfs-authenticate 'we ird/$(x).git' upload"
    )
    with pytest.raises(ValueError):
        authenticate_argv(REMOTE, {}, "download; rm -rf /")


def test_the_answer_is_checked_and_its_expiry_honoured() -> None:
    auth = parse_answer(REMOTE, ANSWER.encode(), 100.0, 0.0)
    assert auth.href == "https://lfs.test/acme/app.git/info/lfs"
    assert auth.headers == (("Authorization", TOKEN),)
    assert auth.expires == 100.0 + git_lfs_ssh.DEFAULT_TTL - git_lfs_ssh.EXPIRY_MARGIN
    assert TOKEN not in repr(auth)
    given = json.loads(ANSWER)
    short = parse_answer(REMOTE, json.dumps({**given, "expires_in": 60}).encode(), 0.0, 0.0)
    assert short.expires == 60 - git_lfs_ssh.EXPIRY_MARGIN
    at = parse_answer(
        REMOTE, json.dumps({**given, "expires_at": "1970-01-01T00:02:00Z"}).encode(), 5.0, 60.0
    )
    assert at.expires == 5.0 + 60 - git_lfs_ssh.EXPIRY_MARGIN
    long = parse_answer(REMOTE, json.dumps({**given, "expires_in": 10**9}).encode(), 0.0, 0.0)
    assert long.expires == git_lfs_ssh.MAX_TTL - git_lfs_ssh.EXPIRY_MARGIN


@pytest.mark.parametrize(
    "answer",
    [
        b"not json " + TOKEN.encode(),
        b"[]",
        json.dumps({"header": {"Authorization": TOKEN}}).encode(),  # no href
        json.dumps({"href": "http://lfs.test/x", "header": {"Authorization": TOKEN}}).encode(),
        json.dumps({"href": "https://127.0.0.1/x", "header": {}}).encode(),
        json.dumps({"href": "https://lfs.test/x", "header": {"A": TOKEN + "\n"}}).encode(),
        json.dumps({"href": "https://lfs.test/x", "expires_at": "soon"}).encode(),
        b" " * (git_lfs_ssh.MAX_AUTH_ANSWER + 1),
    ],
)
def test_a_malformed_answer_is_a_502_naming_the_remote_and_never_the_token(answer: bytes) -> None:
    with pytest.raises(Refusal) as refused:
        parse_answer(REMOTE, answer, 0.0, 0.0)
    assert refused.value.status == 502 and refused.value.rule == "git:lfs-ssh"
    assert "remote origin" in refused.value.message and "git.test" in refused.value.message
    assert "[git.remotes.origin]" in refused.value.hint
    assert TOKEN not in refused.value.message + refused.value.hint


def _fake_ssh(tmp_path: Path, body: str) -> tuple[dict[str, str], Path]:
    """A GIT_SSH stand-in: appends its argv (one JSON list a line) to a log, then `body`."""
    log = tmp_path / "argv.log"
    script = tmp_path / "fake-ssh"
    script.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n" + body
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_SSH": str(script)}
    return env, log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_the_answer_is_kept_until_it_expires_or_is_refused(tmp_path: Path) -> None:
    env, log = _fake_ssh(tmp_path, f"print({ANSWER!r})\n")
    cache = SshAuthCache()

    async def run() -> None:
        first = await cache.get(REMOTE, env, "download")
        assert first.headers == (("Authorization", TOKEN),)
        await asyncio.gather(*(cache.get(REMOTE, env, "download") for _ in range(5)))
        assert len(_calls(log)) == 1  # kept, and concurrent askers wait for one ssh
        await cache.get(REMOTE, env, "upload")
        assert len(_calls(log)) == 2  # each operation its own answer
        cache.forget(REMOTE, "download")
        await cache.get(REMOTE, env, "download")
        assert len(_calls(log)) == 3

    asyncio.run(run())
    assert _calls(log)[0] == [
        "-p",
        "2222",
        "git@git.test",
        "git-lfs-authenticate /acme/app.git download",
    ]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (
            "sys.stderr.write('git@git.test: Permission denied (publickey).\\n'); sys.exit(255)",
            "Permission denied (publickey).",
        ),
        (
            "sys.stderr.write('sh: 1: git-lfs-authenticate: not found\\n'); sys.exit(127)",
            "git-lfs-authenticate: not found",
        ),
        (f"print({TOKEN!r}); sys.exit(1)", "ssh exited with status 1"),
    ],
)
def test_a_failing_ssh_is_named_with_the_fix(tmp_path: Path, body: str, said: str) -> None:
    env, _ = _fake_ssh(tmp_path, body + "\n")
    with pytest.raises(Refusal) as refused:
        asyncio.run(SshAuthCache().get(REMOTE, env, "download"))
    assert refused.value.status == 502 and said in refused.value.message
    assert "remote origin" in refused.value.message
    assert "GIT_SSH_COMMAND" in refused.value.hint and "[git.remotes.origin]" in refused.value.hint
    assert TOKEN not in refused.value.message


def test_a_hung_ssh_is_killed_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(git_lfs_ssh, "AUTH_TIMEOUT", 0.5)
    env, _ = _fake_ssh(tmp_path, "import time; time.sleep(30)\n")
    with pytest.raises(Refusal) as refused:
        asyncio.run(SshAuthCache().get(REMOTE, env, "download"))
    assert "no answer in" in refused.value.message


def _exchange(target: str, body: bytes) -> tuple[Exchange, list[bytes]]:
    sent: list[bytes] = []
    events: list[http1.Event] = [body, http1.END]

    async def next_event() -> http1.Event:
        return events.pop(0)

    async def send(data: bytes) -> None:
        sent.append(data)

    head = http1.RequestHead(
        b"POST",
        target.encode(),
        [(b"host", b"127.0.0.1:3130"), (b"content-type", b"application/vnd.git-lfs+json")],
        "HTTP/1.1",
        False,
        False,
        False,
    )
    return Exchange(head, next_event, send, GitEnv(), None), sent


@pytest.mark.parametrize(
    ("target", "body"),
    [
        (
            "/origin.git/info/lfs/objects/batch?path=/etc&operation=x",
            {
                "operation": "download",
                "objects": [{"oid": "a" * 64, "size": 1}],
                "path": "evil; touch /tmp/p",
                "ref": {"name": "-oX"},
            },
        ),
        (
            "/origin.git/info/lfs/locks/verify?path=../../other.git",
            {"ref": {"name": "refs/heads/$(id)"}, "path": "'; id #"},
        ),
    ],
)
def test_a_bottle_request_cannot_change_the_ssh_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, body: dict[str, object]
) -> None:
    """Whatever the bottle's request says, the ssh runs with the config's host, port and
    path and one of the gate's two operations (the LFS API it names is then unreachable
    here: the call ends in a 502, after the argv was recorded)."""
    env, log = _fake_ssh(
        tmp_path,
        'print(\'{"href": "https://lfs.invalid/x/info/lfs", "header": {}}\')\n',
    )
    monkeypatch.setattr(os, "environ", {**env})
    gate = LfsGate(lambda *a, **k: None, tmp_path / "spool")
    route = lfs_route({"origin": REMOTE}, "POST", target)
    exchange, _ = _exchange(target, json.dumps(body).encode())
    with pytest.raises(Refusal):
        asyncio.run(gate.serve(exchange, route))
    calls = _calls(log)
    assert len(calls) == 1
    operation = "download" if "batch" in target else "upload"
    assert calls[0] == [
        "-p",
        "2222",
        "git@git.test",
        f"git-lfs-authenticate /acme/app.git {operation}",
    ]


def test_the_ssh_runs_in_the_hardened_env_of_the_remotes_git(tmp_path: Path) -> None:
    """The environment is `hardened_env`'s: the user's ssh settings kept, other GIT_*
    variables (which could steer anything git-shaped on the way) dropped."""
    base = {
        "PATH": "/bin",
        "GIT_SSH_COMMAND": "ssh -F /dev/null",
        "GIT_DIR": "/x",
        "SSH_AUTH_SOCK": "/a",
    }
    env = hardened_env(base, REMOTE, GitEnv())
    assert env["GIT_SSH_COMMAND"] == "ssh -F /dev/null" and env["SSH_AUTH_SOCK"] == "/a"
    assert "GIT_DIR" not in env
    assert authenticate_argv(REMOTE, env, "download")[:4] == [
        "sh",
        "-c",
        'ssh -F /dev/null "$@"',
        "ssh -F /dev/null",
    ]


def test_an_ssh_header_the_lfs_api_refuses_is_asked_for_again(tmp_path: Path) -> None:
    env, log = _fake_ssh(tmp_path, f"print({ANSWER!r})\n")
    gate = LfsGate(lambda *a, **k: None, tmp_path / "spool")

    async def run() -> Refusal:
        await gate.ssh_auth.get(REMOTE, env, "upload")
        endpoint = Endpoint("https://lfs.test/acme/app.git/info/lfs", (), "upload")
        refusal = gate.refused_auth(REMOTE, endpoint, 401)
        await gate.ssh_auth.get(REMOTE, env, "upload")
        return refusal

    refusal = asyncio.run(run())
    assert len(_calls(log)) == 2
    assert refusal.status == 502 and "git-lfs-authenticate" in refusal.message
    assert TOKEN not in refusal.message + refusal.hint


def test_an_https_remotes_lfs_api_keeps_its_host_port_and_path() -> None:
    assert api_url("https://git.test/acme/app.git/") == "https://git.test/acme/app.git/info/lfs"
    assert api_url("https://u@git.test:8443/a.git") == "https://git.test:8443/a.git/info/lfs"
    assert api_url("https://[::1]:8443/a.git") == "https://[::1]:8443/a.git/info/lfs"
    endpoint = Endpoint(api_url("https://[::1]:8443/a.git"), ((b"authorization", TOKEN.encode()),))
    assert endpoint.host == ("::1", 8443) and endpoint.target("/locks") == b"/a.git/info/lfs/locks"
    assert TOKEN not in repr(endpoint)
