"""namespace backend: bubblewrap user/pid/net namespaces, bundle as a host process."""

from claude_bottle.backend.namespace.backend import NamespaceBackend

__all__ = ["NamespaceBackend"]
