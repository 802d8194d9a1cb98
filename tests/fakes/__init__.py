"""Fakes of outside services, for tests: each is named as a fake and listens on loopback."""
