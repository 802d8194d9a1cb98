"""`run_with_pipes`: a command without a terminal on stdin gets pipes, never our own fds."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from claude_bottle.terminal import run_with_pipes


class _Stdio:
    def __init__(self, tmp_path: Path, data: bytes) -> None:
        (tmp_path / "in").write_bytes(data)
        self.files = [
            open(tmp_path / "in", "rb"),  # noqa: SIM115 - closed by the fixture
            open(tmp_path / "out", "wb+"),  # noqa: SIM115
            open(tmp_path / "err", "wb+"),  # noqa: SIM115
        ]

    def output(self) -> tuple[bytes, bytes]:
        out, err = self.files[1:]
        out.seek(0)
        err.seek(0)
        return out.read(), err.read()


def _run(
    monkeypatch: pytest.MonkeyPatch, stdio: _Stdio, script: str
) -> tuple[int, list[int], tuple[bytes, bytes]]:
    for name, handle in zip(("stdin", "stdout", "stderr"), stdio.files, strict=True):
        monkeypatch.setattr(sys, name, io.TextIOWrapper(handle))  # type: ignore[arg-type]
    given: list[int] = []

    def start(fds: tuple[int, int, int]) -> subprocess.Popen[bytes]:
        given.extend(fds)
        return subprocess.Popen(
            ["/bin/sh", "-c", script], stdin=fds[0], stdout=fds[1], stderr=fds[2]
        )

    status = run_with_pipes(start, lambda p: os.pidfd_open(p.pid), lambda p: p.wait())
    return status, given, stdio.output()


def test_stdio_is_copied_through_pipes_not_handed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(1 << 20)  # more than any pipe holds: input and output interleave
    stdio = _Stdio(tmp_path, data)
    status, given, (out, err) = _run(monkeypatch, stdio, "cat; echo to-stderr >&2; exit 3")
    assert status == 3
    assert out == data and err == b"to-stderr\n"
    assert not ({0, 1, 2} | {f.fileno() for f in stdio.files}) & set(given)


def test_a_command_that_ignores_its_input_still_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdio = _Stdio(tmp_path, os.urandom(4 << 20))
    status, _, (out, _) = _run(monkeypatch, stdio, "echo done")
    assert (status, out) == (0, b"done\n")


def test_output_left_open_by_a_background_process_does_not_hold_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdio = _Stdio(tmp_path, b"")
    status, _, (out, _) = _run(monkeypatch, stdio, "sleep 5 & echo first; exit 0")
    assert (status, out) == (0, b"first\n")
