"""A host-bundle docker start: the container is run before its home is mounted, and
the command's way in opens only once the container is seen to hold the home image."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from claude_bottle.backend.docker import host_bundle, launch
from claude_bottle.errors import LaunchError


class _Launch:
    log: list[str]

    def __init__(self, plan: Any, runtime: Path, state_dir: Path) -> None:
        self.relay: dict[str, int] | None = None

    def remove(self) -> None:
        self.log.append("remove")

    def run_agent(self) -> None:
        self.log.append("run_agent")

    def rerun_agent(self) -> None:
        self.log.append("rerun_agent")

    def start_bundle(self) -> Any:
        self.log.append("start_bundle")
        return lambda: SimpleNamespace(pid=1)

    def wait_for_relay(self, build: Any, preflight: Any) -> None:
        self.log.append("wait_for_relay")


class _Home:
    def __init__(self, log: list[str], seen: list[bool]) -> None:
        self.log, self.seen = log, seen

    def finish(self) -> None:
        self.log.append("home_finish")

    def seen_by(self, relay: dict[str, int] | None) -> bool:
        self.log.append("seen_by")
        return self.seen.pop(0)


def _start(monkeypatch: pytest.MonkeyPatch, seen: list[bool]) -> list[str]:
    log: list[str] = []
    monkeypatch.setattr(_Launch, "log", log, raising=False)
    monkeypatch.setattr(host_bundle, "HostBundleLaunch", _Launch)
    monkeypatch.setattr(launch, "_relay_ref", lambda path: {"pid": 7, "start": 1})
    monkeypatch.setattr(launch.state, "process_ref", lambda pid: {"pid": pid, "start": 1})
    plan = SimpleNamespace(prepare_workspace_guard=lambda: log.append("guard"))
    with contextlib.ExitStack() as stack:
        launch._start_with_host_bundle(
            plan,  # type: ignore[arg-type]
            stack,
            Path("/nonexistent"),
            Path("/nonexistent"),
            list,
            _Home(log, seen),  # type: ignore[arg-type]
        )
    return log


def test_the_guard_precedes_the_container_and_the_home_follows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = _start(monkeypatch, [True])
    assert log == [
        "guard",
        "run_agent",
        "start_bundle",
        "home_finish",
        "wait_for_relay",
        "seen_by",
        "remove",
    ]


def test_a_container_quicker_than_the_mount_is_run_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = _start(monkeypatch, [False, True])
    assert log[log.index("seen_by") :] == [
        "seen_by",
        "rerun_agent",
        "wait_for_relay",
        "seen_by",
        "remove",
    ]


def test_a_home_never_seen_fails_the_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LaunchError, match="home image"):
        _start(monkeypatch, [False, False])
