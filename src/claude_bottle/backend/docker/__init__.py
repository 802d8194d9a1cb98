"""docker backend: agent container with no network, bundle container on its own network."""

from claude_bottle.backend.docker.backend import DockerBackend

__all__ = ["DockerBackend"]
