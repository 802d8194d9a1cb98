"""`claude-bottle supervise`: the live view of running bottles (textual, imported lazily)."""
