"""The bottle's home gets the user's git identity and nothing else of their git config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from claude_bottle.git_identity import GitIdentity, host_git_identity, seed_git_identity

HOST_GITCONFIG = """\
[user]
    name = Ada Lovelace
    email = ada@example.test
[credential]
    helper = store --file /home/ada/.git-credentials-MARKER
[url "https://x-access-token:TOKEN-MARKER@github.com/"]
    insteadOf = https://github.com/
[include]
    path = /home/ada/.gitconfig-work-MARKER
"""


@pytest.fixture
def host_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "host"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    return home


def test_only_name_and_email_reach_the_bottles_home(host_home: Path, tmp_path: Path) -> None:
    (host_home / ".gitconfig").write_text(HOST_GITCONFIG)
    identity = host_git_identity()
    assert identity == GitIdentity("Ada Lovelace", "ada@example.test")
    bottle_home = tmp_path / "bottle"
    bottle_home.mkdir()
    seed_git_identity(bottle_home, identity)
    written = (bottle_home / ".gitconfig").read_text()
    assert "MARKER" not in written and "helper" not in written and "include" not in written
    read_back = subprocess.run(
        ["git", "config", "--file", str(bottle_home / ".gitconfig"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert read_back == "user.name=Ada Lovelace\nuser.email=ada@example.test\n"


def test_quotes_and_backslashes_survive_and_control_characters_are_refused(
    host_home: Path, tmp_path: Path
) -> None:
    identity = GitIdentity('A "quoted" \\ name; # not a comment', "a@example.test")
    seed_git_identity(tmp_path, identity)
    name = subprocess.run(
        ["git", "config", "--file", str(tmp_path / ".gitconfig"), "user.name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert name == f"{identity.name}\n"
    (host_home / ".gitconfig").write_text('[user]\n\tname = "a\\nb"\n\temail = e@x.test\n')
    assert host_git_identity() is None  # a newline in the name: not carried over


def test_no_identity_without_both_values(host_home: Path) -> None:
    assert host_git_identity() is None
    (host_home / ".gitconfig").write_text("[user]\n\tname = Only Name\n")
    assert host_git_identity() is None


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "outside"
    target.write_text("untouched")
    bottle_home = tmp_path / "bottle"
    bottle_home.mkdir()
    (bottle_home / ".gitconfig").symlink_to(target)
    seed_git_identity(bottle_home, GitIdentity("n", "e@x.test"))
    assert target.read_text() == "untouched"


def test_git_identity_false_keeps_it_out_of_the_plan(
    host_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from claude_bottle.backend.base import LaunchRequest, common_plan_fields
    from claude_bottle.config.model import BottleSection, Config
    from claude_bottle.limits import Limits, plan_with

    (host_home / ".gitconfig").write_text(HOST_GITCONFIG)
    workspace = tmp_path / "project"  # not the dir holding the host's home (refused)
    workspace.mkdir()
    request = LaunchRequest("t", workspace, Config(), ("true",))
    limits = plan_with(Limits(), "test", "test")
    fields = common_plan_fields(
        "x", request, state_dir="s", runtime_dir="r", env={}, relay_port=1, limits=limits
    )
    assert fields["git_identity"] == GitIdentity("Ada Lovelace", "ada@example.test")
    off = request._replace(config=Config(bottle=BottleSection(git_identity=False)))
    fields = common_plan_fields(
        "x", off, state_dir="s", runtime_dir="r", env={}, relay_port=1, limits=limits
    )
    assert fields["git_identity"] is None


def test_config_keys_git_identity_and_docker_base_image(tmp_path: Path) -> None:
    from claude_bottle.config import load_config
    from claude_bottle.errors import ConfigError

    user = tmp_path / "config.toml"
    workspace = tmp_path / "ws"  # the user config is outside it
    workspace.mkdir()
    user.write_text('[bottle]\ngit_identity = false\n[docker]\nbase_image = "ghcr.io/acme/dev:1"\n')
    config = load_config(workspace=workspace, known_backends=("namespace",), user_config=user)
    assert config.bottle.git_identity is False
    assert config.docker.base_image == "ghcr.io/acme/dev:1"
    user.write_text('[docker]\nbase_image = "Not An Image!"\n')
    with pytest.raises(ConfigError, match=r"docker\.base_image"):
        load_config(workspace=workspace, known_backends=("namespace",), user_config=user)
    user.write_text('[docker]\nbase_image = ""\n')
    config = load_config(workspace=workspace, known_backends=("namespace",), user_config=user)
    assert config.docker.base_image is None


def test_each_remote_is_rewritten_to_the_gate_in_every_spelling(tmp_path: Path) -> None:
    from claude_bottle.git_identity import GateRewrite, gate_url, render_gate_config

    home = tmp_path / "bottle-home"
    home.mkdir()
    # The agent's own ~/.gitconfig (an earlier run's, or its own edits) stays as it is, and
    # the rewrites hold anyway: they come from the system-level file the bundle publishes.
    (home / ".gitconfig").write_text("[user]\n\tname = Agent\n[core]\n\tpager = cat\n")
    system = tmp_path / "gitconfig"
    system.write_bytes(
        render_gate_config((GateRewrite("origin", "https://github.com/acme/app.git"),))
    )
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "GIT_CONFIG_SYSTEM": str(system)}
    gate = gate_url("origin")
    for spelling in (
        "https://github.com/acme/app.git",
        "https://github.com/acme/app",
        "git@github.com:acme/app.git",
        "ssh://git@github.com/acme/app.git",
    ):
        found = subprocess.run(
            ["git", "ls-remote", "--get-url", spelling],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert found.stdout.strip() == gate, spelling
    other = subprocess.run(
        ["git", "ls-remote", "--get-url", "https://github.com/other/repo.git"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == "https://github.com/other/repo.git"
    assert (home / ".gitconfig").read_text().startswith("[user]\n\tname = Agent")
    name = subprocess.run(
        ["git", "config", "user.name"], env=env, capture_output=True, text=True, check=True
    )
    assert name.stdout == "Agent\n"


def test_the_gate_config_keeps_the_systems_own_and_the_env_names_it() -> None:
    from claude_bottle.bottle_env import GATE_GIT_CONFIG
    from claude_bottle.git_identity import GateRewrite, gate_config_env, render_gate_config

    rendered = render_gate_config((GateRewrite("o", "https://h.test/r.git"),)).decode()
    assert rendered.index('path = "/etc/gitconfig"') < rendered.index("[url")
    assert gate_config_env(()) == {}
    assert gate_config_env((GateRewrite("o", "u"),)) == {"GIT_CONFIG_SYSTEM": GATE_GIT_CONFIG}
