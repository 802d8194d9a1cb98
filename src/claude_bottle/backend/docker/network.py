"""The one bridge network every bundle container of this engine joins (container placement).

A network per bottle cost ~30 `iptables` runs to create and ~18 to remove on every
start. Instead one network, `claude-bottle`, is made on first use and kept: labelled as
ours, with traffic between its containers disabled (one bottle's bundle cannot reach
another's), so sharing it gives a bundle nothing another bottle's bundle has. `cleanup`
removes it when no container uses it; a launch that loses that race makes it again.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from claude_bottle import paths
from claude_bottle.backend.docker import docker
from claude_bottle.backend.docker.bottle_plan import LABEL_ROLE
from claude_bottle.errors import LaunchError

SHARED_NETWORK = "claude-bottle"
LABEL_SHARED = "claude-bottle.shared"  # "engine": one per engine, not one bottle's
ICC_OPTION = "com.docker.network.bridge.enable_icc"  # traffic between its containers


def ours(info: dict[str, Any]) -> bool:
    """Made by us, and still a bridge that keeps its containers apart."""
    labels = info.get("Labels") or {}
    options = info.get("Options") or {}
    return (
        labels.get(LABEL_SHARED) == "engine"
        and info.get("Driver") == "bridge"
        and options.get(ICC_OPTION) == "false"
    )


_making = threading.Lock()  # one launch checks it from two threads (the check, a retry)


def ensure() -> None:
    """The shared network exists and is ours; LaunchError if the name is taken.

    The engine does not enforce unique network names against concurrent creates (two at
    once make two networks of one name, and every later `--network claude-bottle` is
    ambiguous), so creating is serialised: across this process's threads, and across
    this user's launches by a lock file; duplicates made anyway are removed."""
    with _making, _lock_file():
        _ensure()


@contextlib.contextmanager
def _lock_file() -> Iterator[None]:
    import fcntl

    path = paths.cache_root() / "docker-network.lock"
    try:
        paths.make_private_dir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        yield  # no cache dir: duplicates are still found and removed below
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _inspect() -> dict[str, Any] | None:
    try:
        return docker.network_inspect(SHARED_NETWORK)
    except docker.DockerError as exc:
        if "ambiguous" not in exc.stderr.lower():
            raise
    _remove_duplicates()
    return docker.network_inspect(SHARED_NETWORK)


def _remove_duplicates() -> None:
    """Keep the oldest of our networks named `claude-bottle`; remove the unused others."""
    rows = [
        row
        for row in docker.network_ls({LABEL_SHARED: "engine"})
        if row.get("Name") == SHARED_NETWORK
    ]
    found = [docker.network_inspect(str(row.get("ID"))) for row in rows]
    mine = sorted(
        (info for info in found if info is not None and ours(info)),
        key=lambda info: str(info.get("Created", "")),
    )
    for info in mine[1:]:
        if not info.get("Containers"):
            with contextlib.suppress(docker.DockerError):
                docker.network_rm([str(info.get("Id"))])


def _ensure() -> None:
    info = _inspect()
    if info is None:
        try:
            docker.network_create(
                SHARED_NETWORK,
                labels={LABEL_ROLE: "network", LABEL_SHARED: "engine"},
                options={ICC_OPTION: "false"},
            )
        except docker.DockerError as exc:
            if "already exists" not in exc.stderr.lower():  # another launch made it meanwhile
                raise
        info = _inspect()
    if info is None or not ours(info):
        raise LaunchError(
            f"a docker network named {SHARED_NETWORK} exists that claude-bottle did not make "
            "(or it lets its containers reach each other)",
            f"remove it (docker network rm {SHARED_NETWORK}) or run the bundle as a host "
            'process ([docker] bundle = "host")',
        )


def vanished(exc: docker.DockerError) -> bool:
    """A `docker run` failed because the shared network was removed under it."""
    text = exc.stderr.lower()
    return SHARED_NETWORK in text and "network" in text and "not found" in text


def unused() -> bool:
    """Ours, and no container (of any user or state root) is attached to it."""
    try:
        info = _inspect()
    except docker.DockerError:
        return False
    return info is not None and ours(info) and not info.get("Containers")


def remove_if_unused() -> list[str]:
    """Remove it unless a bottle started meanwhile (the engine refuses then: not a problem)."""
    if not unused():
        return []
    try:
        docker.network_rm([SHARED_NETWORK])
    except docker.DockerError as exc:
        text = exc.stderr.lower()
        if "active endpoints" in text or "no such" in text or "not found" in text:
            return []
        return [f"could not remove network {SHARED_NETWORK}: {exc.message}"]
    return []
