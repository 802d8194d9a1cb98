"""smolmachines backend: smolvm microVMs with no network device, bundle on the host."""

from claude_bottle.backend.smolmachines.backend import SmolmachinesBackend

__all__ = ["SmolmachinesBackend"]
