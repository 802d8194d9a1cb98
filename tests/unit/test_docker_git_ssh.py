"""A bundle container's ssh for the git gate's ssh remotes (backend/docker/git_ssh.py):
the host's agent socket and known_hosts lines, never a key file; the user's
GIT_SSH_COMMAND carried only as options."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.backend.docker.git_ssh import (
    AGENT_SOCKET,
    KNOWN_HOSTS,
    parse_ssh_command,
    passwd,
    ssh_access,
)
from claude_bottle.config.model import GitRemote
from claude_bottle.errors import ConfigError, MissingDependency

REMOTE = GitRemote("origin", "ssh://git@127.0.0.1:2222/srv/app.git")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        yield str(path)


@pytest.fixture
def known(tmp_path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host")], check=True
    )
    key = (tmp_path / "host.pub").read_text().split()[:2]
    path = tmp_path / "known_hosts"
    path.write_text(f"other.test {' '.join(key)}\n[127.0.0.1]:2222 {' '.join(key)}\n")
    return path


def test_no_agent_fails_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(MissingDependency, match="SSH_AUTH_SOCK is not set") as caught:
        ssh_access((REMOTE,), {}, tmp_path, 1000, 1000)
    assert "ssh-add" in caught.value.hint and 'bundle = "host"' in caught.value.hint
    with pytest.raises(MissingDependency, match="not a socket"):
        ssh_access((REMOTE,), {"SSH_AUTH_SOCK": str(tmp_path)}, tmp_path, 1000, 1000)


def test_https_remotes_need_nothing(tmp_path: Path) -> None:
    assert ssh_access((GitRemote("o", "https://h.test/a.git"),), {}, tmp_path, 0, 0) is None


def test_the_agent_socket_and_the_hosts_known_line_reach_the_bundle(
    tmp_path: Path, agent: str, known: Path
) -> None:
    env = {
        "SSH_AUTH_SOCK": agent,
        "GIT_SSH_COMMAND": f"ssh -F /dev/null -i {tmp_path}/key -o IdentitiesOnly=yes "
        f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=no -o ConnectTimeout=5",
    }
    access = ssh_access((REMOTE,), env, tmp_path / "ssh", 1000, 1000)
    assert access is not None
    files = dict(access.files)
    assert files[str(tmp_path / "ssh/known_hosts")].startswith("[127.0.0.1]:2222 ssh-ed25519 ")
    assert "other.test" not in files[str(tmp_path / "ssh/known_hosts")]
    assert any(m.source == agent and m.target == AGENT_SOCKET for m in access.mounts)
    command = dict(access.env)["GIT_SSH_COMMAND"]
    assert "StrictHostKeyChecking=yes" in command and f"UserKnownHostsFile={KNOWN_HOSTS}" in command
    assert "ConnectTimeout=5" in command  # a plain option is carried
    for dropped in ("-i", "IdentitiesOnly", "StrictHostKeyChecking=no", str(known)):
        assert dropped not in command.split()[5:] and dropped + " " not in command
    assert dict(access.env)["SSH_AUTH_SOCK"] == AGENT_SOCKET


def test_a_host_with_no_known_hosts_entry_is_refused(
    tmp_path: Path, agent: str, known: Path
) -> None:
    env = {"SSH_AUTH_SOCK": agent, "GIT_SSH_COMMAND": f"ssh -o UserKnownHostsFile={known}"}
    stranger = GitRemote("up", "git@unknown.test:acme/app.git")
    with pytest.raises(ConfigError, match=r"git\.remotes\.up.*no known_hosts entry for unknown"):
        ssh_access((stranger,), env, tmp_path, 1000, 1000)


@pytest.mark.parametrize(
    "command",
    [
        "ssh -o ProxyCommand=nc\\ %h\\ %p",
        "ssh -oProxyJump=jump",
        "ssh -W x:1",
        "sshpass -p x ssh",
        "ssh -o 'User=x",
    ],
)
def test_a_command_that_is_more_than_ssh_options_is_refused(command: str) -> None:
    with pytest.raises(ConfigError, match="GIT_SSH_COMMAND"):
        parse_ssh_command({"GIT_SSH_COMMAND": command})


def test_the_containers_uid_has_a_passwd_entry_with_a_private_home() -> None:
    assert "bundle:x:1000:1001:claude-bottle bundle:/tmp:" in passwd(1000, 1001)
    assert passwd(0, 0).startswith("root:x:0:0:root:/tmp:")


def test_only_the_bundle_container_mounts_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: str, known: Path
) -> None:
    from claude_bottle.backend.base import LaunchRequest
    from claude_bottle.backend.docker.backend import DockerBackend
    from claude_bottle.backend.docker.bottle_plan import agent_run_args, bundle_run_args
    from claude_bottle.config.model import Config

    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLAUDE_BOTTLE_RUNTIME_DIR", str(tmp_path / "rt"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SSH_AUTH_SOCK", agent)
    monkeypatch.setenv("GIT_SSH_COMMAND", f"ssh -o UserKnownHostsFile={known}")
    (tmp_path / "home").mkdir()
    (tmp_path / "ws").mkdir()
    config = Config(git_remotes=(REMOTE,))
    config = config._replace(docker=config.docker._replace(bundle="container"))
    plan = DockerBackend().plan(
        LaunchRequest(name="proj-ssh", workspace=tmp_path / "ws", config=config, command=("sh",))
    )
    assert plan.bundle is not None
    bundle_args = " ".join(bundle_run_args(plan.bundle))
    assert f"source={agent},target={AGENT_SOCKET}" in bundle_args
    assert "target=/etc/passwd,readonly" in bundle_args
    assert plan.bundle.network == "host"  # the ssh remote is on the host's loopback
    agent_args = agent_run_args(plan.agent)
    leaked = [a for a in agent_args if agent in a or "ssh-agent" in a or "known_hosts" in a]
    assert not leaked
    assert "SSH_AUTH_SOCK" not in plan.env
    written = dict(plan.bundle_files)
    assert any(text.startswith("[127.0.0.1]:2222 ") for text in written.values())
