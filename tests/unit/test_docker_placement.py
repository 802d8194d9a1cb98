"""`[docker] bundle`: what each setting means, and what auto decides from the engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.backend.docker import docker, placement

REAL_DETECT = placement.detect  # the unit-test conftest replaces it for plans


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fake engine: its socket is a file under tmp_path; `docker info`, the image check
    and the bind probe answer from this dict and count their calls."""
    sock = tmp_path / "docker.sock"
    sock.write_text("")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("CLAUDE_BOTTLE_CACHE_DIR", str(tmp_path / "cache"))
    state: dict[str, Any] = {
        "info": {"OperatingSystem": "Debian GNU/Linux 12", "KernelVersion": os.uname().release},
        "image": True,
        "probe": None,
        "calls": 0,
        "sock": sock,
    }

    def info() -> dict[str, Any]:
        state["calls"] += 1
        return dict(state["info"])

    monkeypatch.setattr(docker, "info", info)
    monkeypatch.setattr(
        docker, "image_inspect", lambda ref: {"Id": "x"} if state["image"] else None
    )
    monkeypatch.setattr(placement, "probe_bind", lambda image, uid, gid: state["probe"])
    return state


def _detect() -> placement.Placement:
    return REAL_DETECT("claude-bottle-agent:0123", 1000, 1000)


def test_host_and_container_are_taken_as_said() -> None:
    assert placement.choose("host", "img", 0, 0).kind == "host"
    assert placement.choose("container", "img", 0, 0).kind == "container"


def test_auto_picks_host_on_a_local_engine_that_reaches_a_host_socket(
    engine: dict[str, Any],
) -> None:
    found = _detect()
    assert found.kind == "host" and "reachable from inside" in found.reason


def test_auto_asks_the_engine_once_per_engine(engine: dict[str, Any]) -> None:
    assert _detect().kind == "host"
    again = _detect()
    assert again.kind == "host" and again.reason.endswith("(cached)")
    assert engine["calls"] == 1
    # A restarted daemon makes a new socket: asked again.
    engine["sock"].unlink()
    engine["sock"].write_text("")
    engine["info"]["OperatingSystem"] = "Docker Desktop"
    assert _detect().kind == "container"
    assert engine["calls"] == 2


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"OperatingSystem": "Docker Desktop"}, "in a VM"),
        ({"KernelVersion": "5.15.49-linuxkit"}, "not this host's"),
    ],
)
def test_auto_picks_container_on_an_engine_in_a_vm(
    engine: dict[str, Any], change: dict[str, str], why: str
) -> None:
    engine["info"].update(change)
    found = _detect()
    assert found.kind == "container" and why in found.reason


def test_auto_picks_container_on_a_remote_engine(
    engine: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://build-box:2376")
    found = _detect()
    assert found.kind == "container" and "not local" in found.reason
    assert engine["calls"] == 0


def test_auto_picks_container_when_the_bind_probe_fails(engine: dict[str, Any]) -> None:
    engine["probe"] = "connection refused"
    found = _detect()
    assert found.kind == "container" and "connection refused" in found.reason


def test_without_the_agent_image_auto_says_container_and_asks_again_later(
    engine: dict[str, Any],
) -> None:
    engine["image"] = False
    assert _detect().kind == "container"
    engine["image"] = True
    assert _detect().kind == "host"  # not cached: the image can be built meanwhile
    assert engine["calls"] == 2


def test_a_corrupt_cache_is_ignored(engine: dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "cache" / placement.CACHE_FILE
    cache.parent.mkdir(parents=True)
    cache.write_text('{"engine": 1, "kind": "host"')
    assert _detect().kind == "host" and engine["calls"] == 1
