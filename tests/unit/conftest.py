"""Unit tests never ask a real Docker engine where a bundle may run."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_engine_placement_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """`[docker] bundle = "auto"` would run `docker info` and a probe container; plans made
    by unit tests get the container placement instead (tests of the probe call it)."""
    from claude_bottle.backend.docker import placement

    def detect(probe_image: str, uid: int, gid: int) -> placement.Placement:
        return placement.Placement(placement.CONTAINER, "auto: unit test (no engine asked)")

    monkeypatch.setattr(placement, "detect", detect)


@pytest.fixture(autouse=True)
def _no_shared_home_pool(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Homes made by unit tests take blank images from a pool of their own, never the
    user's, and start no refiller (tests/unit/test_home_pool.py tests both)."""
    if request.module.__name__.endswith("test_home_pool"):
        return
    from claude_bottle import home_pool

    directory = tmp_path_factory.mktemp("home-pool")
    monkeypatch.setattr(home_pool, "pool_dir", lambda size: directory)
    monkeypatch.setattr(home_pool, "_refill_in_background", lambda size: None)
