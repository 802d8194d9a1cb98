"""The one registry of backends, keyed by name. Backends are imported lazily."""

from __future__ import annotations

import importlib
import sys

from claude_bottle.errors import ConfigError

# The entry point asks `runs_host_bundle` before it forks the bundle: nothing heavy here,
# not even `typing`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from claude_bottle.backend.base import AgentImages, BottleBackend

# name -> "module:Class"; importing a backend is deferred until it is used.
_BACKENDS: dict[str, str] = {
    "namespace": "claude_bottle.backend.namespace:NamespaceBackend",
    "docker": "claude_bottle.backend.docker:DockerBackend",
    "smolmachines": "claude_bottle.backend.smolmachines:SmolmachinesBackend",
}


# Who builds the container images (`claude-bottle image build`, the microVM's agent image).
_IMAGES = "claude_bottle.backend.docker.images:DockerImages"


# Backends whose bundle is (or, for docker, usually is) a process on this host, started
# by `bundle.launcher`. The entry point prestarts one for them; the plan decides
# (`BottlePlan.runs_host_bundle`) and an unneeded one is discarded.
_HOST_BUNDLE = frozenset({"namespace", "smolmachines", "docker"})


def runs_host_bundle(name: str, docker_bundle: str | None = None) -> bool:
    """Whether a `run` on backend `name` likely needs a host bundle (`--docker-bundle`
    container says it does not)."""
    return name in _HOST_BUNDLE and not (name == "docker" and docker_bundle == "container")


def names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def default_name() -> str:
    return "namespace" if sys.platform.startswith("linux") else "docker"


def _load(target: str) -> type:
    module_name, _, class_name = target.partition(":")
    cls: type = getattr(importlib.import_module(module_name), class_name)
    return cls


def get(name: str) -> BottleBackend:
    target = _BACKENDS.get(name)
    if target is None:
        raise ConfigError(
            f"unknown backend {name!r}",
            f"choose one of: {', '.join(_BACKENDS)}",
        )
    backend: BottleBackend = _load(target)()
    return backend


def images() -> AgentImages:
    """The container images' builder, for the CLI and for backends that run the image."""
    provider: AgentImages = _load(_IMAGES)()
    return provider
