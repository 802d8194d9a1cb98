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


def _unreferenced_commit(tmp_path: Path, content: str) -> tuple[Path, str]:
    """A bare mirror holding a commit (adding `content`) that no ref reaches: what a push
    adds, as `git_hook.decide` sees it."""
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "A",
        "GIT_AUTHOR_EMAIL": "a@b.test",
        "GIT_COMMITTER_NAME": "A",
        "GIT_COMMITTER_EMAIL": "a@b.test",
    }
    mirror, work = tmp_path / "mirror.git", tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", str(mirror)], check=True, env=env)
    subprocess.run(["git", "init", "-q", str(work)], check=True, env=env)
    (work / "notes.txt").write_text(content)
    subprocess.run(["git", "-C", str(work), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "c"], check=True, env=env)
    git = ["git", "-C", str(work)]
    subprocess.run([*git, "push", "-q", str(mirror), "HEAD:refs/tmp/x"], check=True, env=env)
    subprocess.run(["git", "-C", str(mirror), "update-ref", "-d", "refs/tmp/x"], check=True)
    sha = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return mirror, sha


def test_a_push_is_scanned_with_the_bundles_engine_which_knows_secrets_git_never_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIT_TOKEN is dropped from the environment of every git the gate runs, but the scan
    # runs in the bundle, whose engine was built from the user's whole environment.
    import base64

    from claude_bottle.bundle.git_hook import decide
    from claude_bottle.bundle.scanning import default_inspector

    monkeypatch.setenv("GIT_TOKEN", SECRET)
    scanner = default_inspector((), block=True, record=lambda *a, **k: None).scanner
    encoded = base64.b64encode(SECRET.encode()).decode()
    mirror, sha = _unreferenced_commit(tmp_path, f"line\nvalue: {encoded}\n")
    env = hardened_env(os.environ, REMOTE, GitEnv())
    assert "GIT_TOKEN" not in env
    verdict = decide(REMOTE, scanner, mirror, env, f"{'0' * 40} {sha} refs/heads/bottle/x\n", {})
    text = "\n".join(verdict.lines)
    assert verdict.status == 1, text
    assert "rule dlp:secret:" in text and "notes.txt" in text and "line 2" in text
    assert SECRET not in text and encoded not in text
    assert [o.rule for o in verdict.outcomes] == [verdict.outcomes[0].rule]
    assert verdict.outcomes[0].rule.startswith("dlp:") and verdict.outcomes[0].decision == "deny"


def test_a_quarantine_outside_the_mirror_is_refused(tmp_path: Path) -> None:
    from claude_bottle.bundle.git_hook import decide

    mirror, sha = _unreferenced_commit(tmp_path, "plain\n")
    outside = {
        "GIT_OBJECT_DIRECTORY": str(tmp_path / "elsewhere"),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(mirror / "objects"),
        "GIT_QUARANTINE_PATH": str(tmp_path / "elsewhere"),
    }
    env = hardened_env(os.environ, REMOTE, GitEnv())
    update = f"{'0' * 40} {sha} refs/heads/bottle/x\n"
    verdict = decide(REMOTE, None, mirror, env, update, outside)
    assert verdict.status == 1
    assert "rule git:quarantine" in "\n".join(verdict.lines)
