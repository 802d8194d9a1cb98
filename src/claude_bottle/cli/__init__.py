"""The claude-bottle command line: thin commands over plans, backends and the bundle."""
