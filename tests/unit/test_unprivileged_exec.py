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
