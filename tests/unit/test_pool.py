"""The upstream pool's bookkeeping, without sockets: what it hands out, keeps and closes."""

from __future__ import annotations

from claude_bottle.bundle.pool import PoolKey, UpstreamPool

A: PoolKey = ("127.0.0.1", 80, False, "a.test")
B: PoolKey = ("127.0.0.1", 80, False, "b.test")
A_TLS: PoolKey = ("127.0.0.1", 443, True, "a.test")


class FakeConnection:
    """Stands in for an upstream connection: alive until told otherwise."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_alive = True
        self.closed = False

    def alive(self) -> bool:
        return self.is_alive and not self.closed

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_parked_connection_goes_only_to_the_same_destination() -> None:
    pool = UpstreamPool()
    first = FakeConnection("first")
    pool.give(A, first)
    assert pool.take(B) is None
    assert pool.take(A_TLS) is None  # same host, but TLS: another connection entirely
    assert pool.take(A) is first
    assert pool.take(A) is None  # handed out once


def test_newest_first_and_dead_ones_are_closed_not_handed_out() -> None:
    pool = UpstreamPool()
    old, new = FakeConnection("old"), FakeConnection("new")
    pool.give(A, old)
    pool.give(A, new)
    new.is_alive = False  # the server closed it while it was parked
    assert pool.take(A) is old
    assert new.closed


def test_bounds_close_the_oldest() -> None:
    clock = Clock()
    pool = UpstreamPool(per_key=2, total=3, clock=clock)
    parked = []
    for key in (A, A, A, B, B):
        clock.now += 1
        connection = FakeConnection(f"{key[3]}-{clock.now}")
        parked.append(connection)
        pool.give(key, connection)
    # A kept its two newest; then the total bound dropped the oldest overall (A's).
    assert [c.closed for c in parked] == [True, True, False, False, False]
    assert len(pool) == 3


def test_idle_connections_expire() -> None:
    clock = Clock()
    pool = UpstreamPool(idle_seconds=20, clock=clock)
    stale = FakeConnection("stale")
    pool.give(A, stale)
    clock.now += 21
    assert pool.take(A) is None
    assert stale.closed


def test_close_closes_everything_parked() -> None:
    pool = UpstreamPool()
    connections = [FakeConnection(str(i)) for i in range(3)]
    for connection, key in zip(connections, (A, B, A_TLS), strict=True):
        pool.give(key, connection)
    pool.close()
    assert all(c.closed for c in connections)
    assert len(pool) == 0
