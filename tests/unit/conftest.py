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
