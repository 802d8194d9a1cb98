"""The one registry of backends, keyed by name. Backends are imported lazily."""

from __future__ import annotations

import importlib
import sys

from claude_bottle.backend.base import BottleBackend
from claude_bottle.errors import ConfigError

# name -> "module:Class"; importing a backend is deferred until it is used.
_BACKENDS: dict[str, str] = {
    "namespace": "claude_bottle.backend.namespace:NamespaceBackend",
    "docker": "claude_bottle.backend.docker:DockerBackend",
    "smolmachines": "claude_bottle.backend.smolmachines:SmolmachinesBackend",
}


def names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def default_name() -> str:
    return "namespace" if sys.platform.startswith("linux") else "docker"


def get(name: str) -> BottleBackend:
    target = _BACKENDS.get(name)
    if target is None:
        raise ConfigError(
            f"unknown backend {name!r}",
            f"choose one of: {', '.join(_BACKENDS)}",
        )
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend = cls()
    assert isinstance(backend, BottleBackend)
    return backend
