"""A bundle in a container gets each git remote's credential from the CLI, resolved on the
host, over its control socket (backend/docker/git_credentials.py): kept in memory, never
echoed or written, refused for a remote that does not take one."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.backend.docker.git_credentials import (
    container_remotes,
    hand_credentials,
)
from claude_bottle.bundle import control
from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.git_upstream import HANDED, Credential, resolve_credential
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.errors import BottleError, LaunchError
from tests.unit.bundle_settings import bundle_settings

SECRET = "handed-token-value-0123456789abcdef"
HTTPS = GateRemote("origin", "https://git.test/acme/app.git", credential="env:T_HANDED")
SSH = GateRemote("deploy", "git@git.test:acme/app.git")


def test_the_containers_remotes_name_the_handed_source() -> None:
    assert [r.credential for r in container_remotes((HTTPS,))] == [HANDED]
    with pytest.raises(Refusal, match="not handed over by the CLI"):
        resolve_credential(HTTPS._replace(name="never-handed", credential=HANDED), {})


@pytest.fixture
def bundle(tmp_path: Path) -> Iterator[Path]:
    settings = bundle_settings(
        tmp_path,
        git_socket=str(tmp_path / "git.sock"),
        git_cache=str(tmp_path / "git"),
        git_remotes=(*container_remotes((HTTPS,)), SSH),
    )
    settings.dump(tmp_path / "bundle.json")
    process = subprocess.Popen(
        [sys.executable, "-m", "claude_bottle.bundle.server", str(tmp_path / "bundle.json")],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "bundle.log").open("wb"),
    )
    control_socket = tmp_path / "control.sock"
    try:
        for _ in range(500):  # bounded: ~10 s
            with contextlib.suppress(BottleError):
                if control.call(control_socket, "ping").get("ok"):
                    break
            time.sleep(0.02)
        yield control_socket
    finally:
        process.terminate()
        process.wait(10)


def test_the_cli_hands_each_credential_and_it_is_written_nowhere(
    bundle: Path, tmp_path: Path
) -> None:
    hand_credentials((HTTPS,), bundle, {"T_HANDED": SECRET})
    with pytest.raises(LaunchError, match="already"):  # taken once per remote
        hand_credentials((HTTPS,), bundle, {"T_HANDED": "another-token-0123456789"})
    # A remote that takes no handed credential (ssh, or one not configured) is refused.
    for name in ("deploy", "nosuch"):
        answer = control.call(bundle, "git-credential", remote=name, username="u", password="p")
        assert answer["ok"] is False
    answer = control.call(bundle, "git-credential", remote="origin", username="u", password=7)
    assert answer["ok"] is False
    control.call(bundle, "stop")
    audit = tmp_path / "audit.jsonl"
    for _ in range(500):  # bounded, ~10 s: the audit writer may still be flushing
        if "git:credential-handed" in audit.read_text():
            break
        time.sleep(0.02)
    assert "git:credential-handed" in audit.read_text()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_an_unreadable_credential_fails_the_start_naming_the_remote(bundle: Path) -> None:
    with pytest.raises(LaunchError, match="remote origin") as caught:
        hand_credentials((HTTPS,), bundle, {})
    assert "credential" in caught.value.hint


def test_a_handed_credential_is_kept_for_its_remote_only() -> None:
    from claude_bottle.bundle.git_upstream import hand_credential

    remote = HTTPS._replace(name="kept", credential=HANDED)
    hand_credential(remote, "x-access-token", SECRET)
    assert resolve_credential(remote, {}) == Credential("x-access-token", SECRET)
    assert SECRET not in repr(resolve_credential(remote, {}))
    with pytest.raises(ValueError):
        hand_credential(HTTPS, "u", "p")  # its source is the host's, not handed
    with pytest.raises(ValueError):
        hand_credential(remote, "u", "")
    with pytest.raises(ValueError, match="already"):  # taken once
        hand_credential(remote, "attacker", "their-own-token")
    assert resolve_credential(remote, {}) == Credential("x-access-token", SECRET)
