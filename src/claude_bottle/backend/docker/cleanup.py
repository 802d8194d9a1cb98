"""`cleanup` of the docker backend: what bottles that are not running left on the engine.

Containers, networks and volumes carry the state root's label; those of a bottle that
is not live (or of an older launch of a live one) are leftovers. The shared bundle
network goes when no container uses it; images only when asked (`--images`).

Right after `kill -9` of a CLI, its launch may still be in flight (see `orphans`): the
plan is made once that launch's clients and watchdog are done, and the removal lists
again until nothing of the killed launches is left, so one `cleanup` does the job and
says so (exit 0), however close behind the kill it runs.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from typing import Any

from claude_bottle.backend import records
from claude_bottle.backend.base import CleanupPlan
from claude_bottle.backend.docker import docker, images, launch, network, orphans
from claude_bottle.backend.docker.backend import state_label
from claude_bottle.backend.docker.bottle_plan import LABEL_BOTTLE, LABEL_INSTANCE, LABEL_STATE
from claude_bottle.backend.docker.network import SHARED_NETWORK
from claude_bottle.errors import ConfigError

SETTLE_TIMEOUT = 30.0  # a killed launch's watchdog stops a bundle container (5 s) and more
SETTLE_POLL = 0.1


@dataclasses.dataclass(frozen=True)
class DockerCleanupPlan(CleanupPlan):
    live_names: frozenset[str] = frozenset()  # listed again after removal, with these kept


def plan(backend: str, live_names: set[str], *, images: bool = False) -> CleanupPlan:
    if shutil.which(docker.DOCKER) is None:
        return CleanupPlan(backend, ())
    label = state_label()
    _wait_for_killed_launches(label, live_names)
    try:
        leftovers = _leftovers(label, live_names)
    except docker.DockerError:
        return CleanupPlan(backend, ())  # no engine: nothing of ours can be running
    items = [*(_stale_images() if images else []), *leftovers]
    if network.unused():
        items.append(("network", f"{SHARED_NETWORK} (shared by bundle containers, unused)"))
    return DockerCleanupPlan(backend, tuple(items), frozenset(live_names))


def run(cleanup_plan: CleanupPlan) -> list[str]:
    kinds = ("container", "network", "volume")
    leftovers = [
        (kind, what)
        for kind, what in cleanup_plan.items
        if kind in kinds and what.split()[0] != SHARED_NETWORK
    ]
    problems = _remove(leftovers)
    if isinstance(cleanup_plan, DockerCleanupPlan):
        problems = _finish_killed_launches(cleanup_plan.live_names, problems)
    names = [what.split()[0] for _, what in cleanup_plan.items]
    if SHARED_NETWORK in names:  # after the bottles' containers: it may be unused only now
        problems += network.remove_if_unused()
    for kind, what in cleanup_plan.items:
        if kind == "image":
            problems += _remove_image(what.split()[0])
    return problems


def _instance_of(name: str) -> str | None:
    """Which launch of live bottle `name` runs (None: not a docker bottle, or its record
    went or cannot be read meanwhile: then every launch of it is a leftover)."""
    try:
        own = records.read(name).own
    except ConfigError:
        return None
    return own.labels.get(LABEL_INSTANCE) if isinstance(own, launch.DockerRecord) else None


def _leftovers(label: str, live_names: set[str]) -> list[tuple[str, str]]:
    """Containers, networks and volumes of this state root whose bottle is not live, or
    which an older launch of a live bottle left."""
    labels = {LABEL_STATE: label}
    containers = docker.ps(labels)
    networks = docker.network_ls(labels)
    volumes = docker.volume_ls(labels)
    live_instances: dict[str, str | None] = {}
    for name in live_names:
        live_instances[name] = _instance_of(name)

    def orphan(row: dict[str, Any]) -> str | None:
        row_labels = docker.parse_labels(row.get("Labels"))
        bottle = row_labels.get(LABEL_BOTTLE, "?")
        if bottle in live_names and row_labels.get(LABEL_INSTANCE) == live_instances[bottle]:
            return None
        return bottle

    items: list[tuple[str, str]] = []
    for row in containers:
        bottle = orphan(row)
        if bottle is not None:
            state_text = row.get("State")
            items.append(("container", f"{row.get('Names')} (bottle {bottle}, {state_text})"))
    for kind, rows in (("network", networks), ("volume", volumes)):
        for row in rows:
            bottle = orphan(row)
            if bottle is not None:
                items.append((kind, f"{row.get('Name')} (bottle {bottle})"))
    return items


def _remove(items: list[tuple[str, str]]) -> list[str]:
    found: dict[str, list[str]] = {"agents": [], "bundles": [], "networks": [], "volumes": []}
    for kind, what in items:
        name = what.split()[0]
        if kind == "container":
            found["bundles" if name.endswith("-bundle") else "agents"].append(name)
        else:
            found[f"{kind}s"].append(name)
    return launch.teardown(**found)


def _wait_for_killed_launches(label: str, live_names: set[str]) -> None:
    """Until no killed launch of this state root has a docker client or its watchdog's
    teardown in flight (bounded): then a listing shows what they finally left."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        if all(o.attached for o in orphans.find(label, live_names)):
            return
        time.sleep(SETTLE_POLL)


def _finish_killed_launches(live_names: frozenset[str], problems: list[str]) -> list[str]:
    """List and remove again until nothing of a killed launch is left, neither on the
    engine nor as a process (bounded); the problems of the last removal.

    What the first removal could not remove because a killed launch was removing it too
    ("volume is in use", "removal already in progress"), or what such a launch created
    after the listing, goes here; a problem that stays (the engine refuses) is reported."""
    label = state_label()
    names = set(live_names)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        left = orphans.find(label, names)
        if not left and not problems:
            return []  # the removal went through, and no killed launch may add to it
        if all(o.attached for o in left):
            try:
                again = _leftovers(label, names)
            except docker.DockerError as exc:
                return [*problems, f"cannot list what is left: {exc.message}"]
            if not again and not left:
                return []  # all gone: what failed before was removed by the killed launch
            if again:  # an attached client ends once its container, made late, is removed
                problems = _remove(again)
        if time.monotonic() > deadline:
            if left:
                pids = ", ".join(str(o.pid) for o in left)
                problems.append(f"processes of a killed launch still run (pids {pids})")
            return problems
        time.sleep(SETTLE_POLL)


def _remove_image(ref: str) -> list[str]:
    try:
        docker.image_rm([ref])
    except docker.DockerError as exc:
        # A container started from it since it was listed: in use, so not stale.
        in_use = "is using its referenced image" in exc.stderr
        if not exc.missing and not in_use:
            return [f"could not remove image {ref}: {exc.message}"]
    return []


def _stale_images() -> list[tuple[str, str]]:
    """Our images (built by claude-bottle: labelled so, in our repositories) whose tag is
    not this installation's and that no container, anyone's, uses. Another source tree or
    version of claude-bottle on this engine builds other tags: only `cleanup --images`
    removes its images (they are a cache: a removed one is built again when next run)."""
    try:
        current = {images.agent_image().tag, images.bundle_image().tag}
        rows = [row for role in images.ROLES for row in docker.image_ls({images.IMAGE_LABEL: role})]
        used = {str(row.get("Image")) for row in docker.ps({})}
    except (OSError, docker.DockerError):
        return []
    stale = []
    for row in rows:
        repo, tag = str(row.get("Repository")), str(row.get("Tag"))
        ref = f"{repo}:{tag}"
        if repo not in (images.AGENT_REPO, images.BUNDLE_REPO) or tag == "<none>":
            continue
        if ref not in current and ref not in used:
            stale.append(("image", f"{ref} ({row.get('Size')}, built from other inputs)"))
    return stale
