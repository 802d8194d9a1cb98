"""Fakes of outside services, for tests. Each one is named as a fake and listens on loopback only."""
