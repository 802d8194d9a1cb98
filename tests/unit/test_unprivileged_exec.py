"""unprivileged_exec.py, run for real (it needs root: skipped otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from claude_bottle.backend.namespace import backend

HELPER = str(backend.UNPRIVILEGED_EXEC)
HOST_ID = backend.UNPRIVILEGED_HOST_ID

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root starts bottles this way")


def _helper(*args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-S", HELPER, *args],
        capture_output=True,
        text=True,
        timeout=30,
        pass_fds=pass_fds,
    )


def test_idmapped_stage_shows_roots_files_as_the_bottle_uid_and_writes_as_root(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "mine").write_text("x")
    (tmp_path / "plain").touch()
    # Standing in for bwrap, a script that looks at the stage, then writes through it as
    # the bottle's uid (the helper passes it `--userns FD` first). Run through its fd: the
    # stage covers /tmp.
    staged = f"/tmp/0{workspace}"
    fake_bwrap = tmp_path / "fake-bwrap"
    fake_bwrap.write_text(
        f"#!/bin/sh\nstat -c %u {staged}/mine /tmp/1{tmp_path}/plain && "
        f"setpriv --reuid={HOST_ID} --regid={HOST_ID} --clear-groups touch {staged}/new\n"
    )
    fake_bwrap.chmod(0o755)
    fd = os.open(fake_bwrap, os.O_RDONLY)
    try:
        result = _helper(
            *("--host-id", str(HOST_ID), "--stage-root", "/tmp"),
            *("--stage", f"idmap:{workspace}", "--stage", f"plain:{tmp_path / 'plain'}"),
            *("--", f"/proc/self/fd/{fd}"),
            pass_fds=(fd,),
        )
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(HOST_ID), "0"]  # idmapped, and not
    assert (workspace / "new").stat().st_uid == 0  # the bottle's file is the user's


def test_a_path_that_cannot_be_staged_is_exit_3_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = _helper(
        *("--host-id", str(HOST_ID), "--stage-root", "/tmp"),
        *("--stage", f"idmap:{missing}", "--", "true"),
    )
    assert result.returncode == 3
    assert str(missing) in result.stderr


def test_with_wait_fd_it_stages_what_exists_once_told_to_go(tmp_path: Path) -> None:
    """The CLI starts the helper before the bottle's home exists; what the helper stages
    is what is there when it reads `g`, not when it started."""
    home = tmp_path / "home"  # made only after the helper runs
    marker = "made-while-waiting"
    fake_bwrap = tmp_path / "fake-bwrap"
    fake_bwrap.write_text(f"#!/bin/sh\ncat /tmp/0{home}/{marker}\n")
    fake_bwrap.chmod(0o755)
    fd = os.open(fake_bwrap, os.O_RDONLY)
    wait_r, wait_w = os.pipe()
    try:
        helper = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                HELPER,
                *("--host-id", str(HOST_ID), "--wait-fd", str(wait_r)),
                *("--stage-root", "/tmp", "--stage", f"plain:{home}"),
                *("--", f"/proc/self/fd/{fd}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=(fd, wait_r),
        )
        os.close(wait_r)
        with pytest.raises(subprocess.TimeoutExpired):
            helper.wait(0.5)  # it waits: nothing staged yet (the home does not exist)
        home.mkdir()
        (home / marker).write_text("seen\n")
        os.write(wait_w, b"g")
        out, err = helper.communicate(timeout=30)
    finally:
        os.close(fd)
        os.close(wait_w)
    assert helper.returncode == 0, err
    assert out == "seen\n"


def test_with_wait_fd_a_launch_given_up_stages_nothing(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    wait_r, wait_w = os.pipe()
    os.close(wait_w)  # the CLI gave up (or died) before `go`
    try:
        result = _helper(
            *("--host-id", str(HOST_ID), "--wait-fd", str(wait_r), "--stage-root", "/tmp"),
            *("--stage", f"plain:{tmp_path}", "--", "touch", str(ran)),
            pass_fds=(wait_r,),
        )
    finally:
        os.close(wait_r)
    assert result.returncode == 125, result.stderr
    assert not ran.exists()
