"""The git gate's host side (bundle/git_upstream.py): hardened git and the credential."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.git_upstream import (
    PASSWORD_VAR,
    Credential,
    GitEnv,
    hardened_env,
    resolve_credential,
)
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.settings import Pin

REMOTE = GateRemote("origin", "https://git.test/acme/app.git", credential="env:T_TOKEN")
SECRET = "s3cr3t-value-for-the-gate-0123"


def _config(env: dict[str, str]) -> list[tuple[str, str]]:
    count = int(env["GIT_CONFIG_COUNT"])
    return [(env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"]) for i in range(count)]


def test_hardened_env_drops_the_callers_git_variables_and_config() -> None:
    base = {
        "PATH": "/usr/bin:/bin",
        "GIT_DIR": "/elsewhere",
        "GIT_SSH_COMMAND": "ssh -i ~/.ssh/deploy",
        "GIT_CONFIG_PARAMETERS": "'core.hooksPath'='/tmp/evil'",
        "SSH_ASKPASS": "/tmp/evil",
    }
    env = hardened_env(base, REMOTE, GitEnv())
    assert "GIT_DIR" not in env and "SSH_ASKPASS" not in env
    assert env["GIT_SSH_COMMAND"] == "ssh -i ~/.ssh/deploy"  # the user's own way to their hosts
    assert "GIT_CONFIG_PARAMETERS" not in env
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == "/dev/null"
    config = dict(_config(env))
    assert config["core.hooksPath"] == "/dev/null"
    assert config["protocol.allow"] == "never"
    assert config["protocol.https.allow"] == config["protocol.ssh.allow"] == "always"
    assert config["transfer.fsckObjects"] == "true"


def test_the_credential_is_in_the_environment_only_never_in_config_values() -> None:
    env = hardened_env({}, REMOTE, GitEnv(), credential=Credential("u", SECRET))
    assert env[PASSWORD_VAR] == SECRET
    assert all(SECRET not in value for _, value in _config(env))
    assert SECRET not in repr(Credential("u", SECRET))


def test_a_pin_with_a_port_reaches_the_pinned_address_under_the_hosts_name() -> None:
    env = hardened_env({}, REMOTE, GitEnv((Pin("git.test", "127.0.0.1", 8443),)))
    config = _config(env)
    assert ("http.curloptResolve", "git.test:8443:127.0.0.1") in config
    assert ("url.https://git.test:8443/.insteadOf", "https://git.test/") in config


def test_hardened_git_runs_no_hook_and_no_global_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[alias]\n\tsneaky = !touch /tmp/never\n[user]\n\tname=x\n")
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    ran = tmp_path / "hook-ran"
    hook = repo / ".git/hooks/post-commit"
    hook.write_text(f"#!/bin/sh\ntouch {ran}\n")
    hook.chmod(0o755)
    env = hardened_env({"PATH": os.environ["PATH"], "HOME": str(home)}, REMOTE, GitEnv())
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(
        ["git", "-C", str(repo), *identity, "commit", "-q", "--allow-empty", "-m", "x"],
        env=env,
        check=True,
    )
    assert not ran.exists()
    found = subprocess.run(
        ["git", "-C", str(repo), "config", "alias.sneaky"], env=env, capture_output=True
    )
    assert found.returncode != 0  # the global config was not read


def test_hardened_git_refuses_file_and_ext_transports(tmp_path: Path) -> None:
    env = hardened_env({"PATH": os.environ["PATH"], "HOME": str(tmp_path)}, REMOTE, GitEnv())
    for url in (f"file://{tmp_path}", "ext::sh -c touch% /tmp/pwned"):
        found = subprocess.run(
            ["git", "ls-remote", url], env=env, capture_output=True, text=True, timeout=30
        )
        assert found.returncode != 0
        assert "not allowed" in found.stderr


def test_credential_sources(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    assert resolve_credential(REMOTE, {"T_TOKEN": SECRET}).password == SECRET  # type: ignore[union-attr]
    from_file = REMOTE._replace(credential=f"file:{token_file}")
    assert resolve_credential(from_file, {}).password == SECRET  # type: ignore[union-attr]
    command = REMOTE._replace(credential=f"command:cat {token_file}")
    assert resolve_credential(command, {"PATH": os.environ["PATH"]}).password == SECRET  # type: ignore[union-attr]
    ssh = REMOTE._replace(url="git@git.test:acme/app.git")
    assert resolve_credential(ssh, {}) is None  # the host's ssh decides


@pytest.mark.parametrize("source", ["env:T_TOKEN", "file:/nonexistent/token", "command:false"])
def test_an_unreadable_credential_names_the_remote_never_a_value(source: str) -> None:
    with pytest.raises(Refusal) as refused:
        resolve_credential(REMOTE._replace(credential=source), {"PATH": os.environ["PATH"]})
    assert refused.value.status == 502 and refused.value.rule == "git:credential-unavailable"
    assert "remote origin" in refused.value.message
    assert "[git.remotes.origin] credential" in refused.value.hint


def test_secrets_the_hardened_env_drops_still_reach_the_push_hooks_dlp() -> None:
    from claude_bottle.bundle.git_gate import _stripped_secrets

    host = {"GIT_TOKEN": SECRET, "GITHUB_TOKEN": "other-secret-value-123", "PATH": "/bin"}
    env = hardened_env(host, REMOTE, GitEnv())
    added = _stripped_secrets(host, env)
    assert added == {"CLAUDE_BOTTLE_SECRET_GIT_TOKEN": SECRET}  # GITHUB_TOKEN was kept as is
