"""The policy bundle: the bottle's only way out (egress proxy, control socket, audit log)."""
