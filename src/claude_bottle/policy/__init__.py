"""Egress policy as pure logic: host allowlists and the address-range guard (no I/O)."""
