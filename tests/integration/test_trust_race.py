"""The trust race (issue 27, row 1): an agent rewrites `.claude-bottle.toml` the moment a
reader closes it, as a real racing writer (inotify, in its own process).

`claude-bottle trust` must record exactly the bytes it showed, and a swapped-in file that
points the gateway at a server of the agent's choosing is refused whatever the timing.
No bottle is needed: the writer stands in for the agent, which reaches the workspace
the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

PROJECT = ".claude-bottle.toml"
BENIGN = '[egress]\nallow = ["registry.npmjs.org"]\n'
SWAPS_PER_TEST = 200
RACER_SECONDS = 30  # the writer stops by itself, whatever happens to the test

# A writer like the agent's: watch the workspace with inotify and, each time a reader
# closes the project file, atomically replace it with the next content in turn.
RACER = textwrap.dedent(
    """
    import ctypes, os, select, struct, sys, time
    workspace, limit, seconds, *contents = sys.argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    IN_CLOSE_NOWRITE = 0x10
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0 and libc.inotify_add_watch(fd, workspace.encode(), IN_CLOSE_NOWRITE) >= 0
    print("watching", flush=True)
    target = os.path.join(workspace, ".claude-bottle.toml")
    deadline, swaps = time.monotonic() + float(seconds), 0
    while swaps < int(limit) and time.monotonic() < deadline:
        if not select.select([fd], [], [], 0.5)[0]:
            continue
        data, offset, closed = os.read(fd, 65536), 0, False
        while offset < len(data):
            _, _, _, size = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16 : offset + 16 + size].rstrip(b"\\0")
            closed |= name == b".claude-bottle.toml"
            offset += 16 + size
        if closed:
            tmp = target + ".swap"
            with open(tmp, "w") as handle:
                handle.write(contents[swaps % len(contents)])
            os.replace(tmp, target)
            swaps += 1
    """
)


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "ws"
        self.path.mkdir()
        self.project = self.path / PROJECT
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root / "home"),
            "LANG": "C.UTF-8",
            "XDG_DATA_HOME": str(root / "data"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "CLAUDE_BOTTLE_STATE_DIR": str(root / "state"),
            "CLAUDE_BOTTLE_RUNTIME_DIR": str(root / "run"),
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "claude_bottle", *args],
            env=self.env,
            cwd=self.path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def trusted(self) -> dict[str, str]:
        store = self.root / "data" / "claude-bottle" / "trusted.json"
        if not store.exists():
            return {}
        files: dict[str, str] = json.loads(store.read_text())["files"]
        return files

    def review(self) -> str:
        """What the user does before trusting: read the file (a reader that then closes it)."""
        return subprocess.run(
            ["cat", str(self.project)], capture_output=True, text=True, timeout=10, check=True
        ).stdout


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture
def start_racer(workspace: Workspace) -> Iterator[Callable[[Sequence[str]], None]]:
    """Starts the writer with the contents it swaps in, in turn; kills it afterwards."""
    processes: list[subprocess.Popen[str]] = []

    def start(contents: Sequence[str]) -> None:
        argv = [str(workspace.path), str(SWAPS_PER_TEST), str(RACER_SECONDS), *contents]
        process = subprocess.Popen(
            [sys.executable, "-c", RACER, *argv], stdout=subprocess.PIPE, text=True
        )
        processes.append(process)
        assert process.stdout is not None and process.stdout.readline().strip() == "watching"

    yield start
    for process in processes:
        process.kill()
        process.wait(10)


def _shown_content(stdout: str) -> tuple[str, str]:
    """The hash `trust` printed and the content rebuilt from its numbered lines."""
    digest = re.search(r"sha256 ([0-9a-f]{64})", stdout)
    assert digest is not None, stdout
    lines = [
        match.group(1) for match in re.finditer(r"^ *\d+ \| ?(.*)$", stdout, flags=re.MULTILINE)
    ]
    return digest.group(1), "".join(line + "\n" for line in lines)


def test_the_swapped_in_gateway_upstream_is_refused(
    workspace: Workspace, start_racer: Callable[[Sequence[str]], None]
) -> None:
    workspace.project.write_text(BENIGN)
    start_racer(['[gateway]\nanthropic_upstream = "http://127.0.0.1:9/"\n'])
    assert workspace.review() == BENIGN
    for _ in range(50):  # the swap follows the reader's close; wait for it, boundedly
        if "gateway" in workspace.project.read_text():
            break
        time.sleep(0.05)
    result = workspace.cli("trust", "--yes")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "gateway.anthropic_upstream" in result.stderr
    assert workspace.trusted() == {}
    planned = workspace.cli("plan", "--json", "--", "true")
    assert planned.returncode == 0, planned.stderr
    assert "not trusted" in planned.stderr  # ignored, never honoured
    assert "127.0.0.1:9" not in planned.stdout


def test_trust_records_exactly_the_bytes_it_showed(
    workspace: Workspace, start_racer: Callable[[Sequence[str]], None]
) -> None:
    first = '[egress]\nallow = ["one.example.com"]\n'
    second = '[egress]\nallow = ["two.example.com"]\ndeny = ["x.example.com"]\n'
    workspace.project.write_text(first)
    start_racer([second, first])
    for _ in range(10):
        workspace.review()  # every close of the file makes the writer swap it
        result = workspace.cli("trust", "--yes")
        assert result.returncode == 0, result.stderr
        digest, shown = _shown_content(result.stdout)
        assert shown in (first, second)
        assert hashlib.sha256(shown.encode()).hexdigest() == digest
        assert workspace.trusted() == {str(workspace.project): digest}
