"""Backends: where a bottle runs. Shared code reaches them only through `registry`."""
