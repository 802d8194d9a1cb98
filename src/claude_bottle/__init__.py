"""claude-bottle: run a coding agent in a bottle whose only way out is a policy bundle."""

__version__ = "0.1.0"
