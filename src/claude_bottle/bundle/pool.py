"""Idle keep-alive connections to upstream servers, shared by all of a bundle's clients.

A bottle opens many short connections (each curl, each package download); without a
pool each one costs the bundle a TCP handshake upstream, and a TLS one when the tunnel
is intercepted. A connection is parked when its client leaves it idle, and handed out
again only to a request for the same destination reached the same way: same address,
port, TLS and server name. Every request still passes the gate before it gets one;
the pool saves handshakes, not checks.

No I/O here beyond closing what is dropped: the proxy asks `take` and `give`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

PoolKey = tuple[str, int, bool, str]  # address, port, TLS, server name

MAX_IDLE_PER_KEY = 4
MAX_IDLE = 64
IDLE_SECONDS = 20.0  # under the usual server keep-alive timeouts (nginx 75 s, h11 apps 5-60 s)


class Parkable(Protocol):
    def alive(self) -> bool: ...

    def close(self) -> None: ...


class UpstreamPool:
    """Parked connections per destination, newest handed out first, bounded in number
    and in idle time."""

    def __init__(
        self,
        *,
        per_key: int = MAX_IDLE_PER_KEY,
        total: int = MAX_IDLE,
        idle_seconds: float = IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_key = per_key
        self._total = total
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._parked: dict[PoolKey, list[tuple[float, Parkable]]] = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._parked.values())

    def take(self, key: PoolKey) -> Parkable | None:
        """A live parked connection to `key`, or None; dead and expired ones are closed."""
        self._drop_expired()
        entries = self._parked.get(key)
        while entries:
            _, connection = entries.pop()
            if connection.alive():
                if not entries:
                    del self._parked[key]
                return connection
            connection.close()
        self._parked.pop(key, None)
        return None

    def give(self, key: PoolKey, connection: Parkable) -> None:
        """Park an idle connection; the oldest ones go when a bound is reached."""
        if not connection.alive():
            connection.close()
            return
        self._drop_expired()
        entries = self._parked.setdefault(key, [])
        entries.append((self._clock(), connection))
        if len(entries) > self._per_key:
            entries.pop(0)[1].close()
        while len(self) > self._total:
            oldest = min(self._parked, key=lambda k: self._parked[k][0][0])
            self._parked[oldest].pop(0)[1].close()
            if not self._parked[oldest]:
                del self._parked[oldest]

    def close(self) -> None:
        for entries in self._parked.values():
            for _, connection in entries:
                connection.close()
        self._parked.clear()

    def _drop_expired(self) -> None:
        deadline = self._clock() - self._idle_seconds
        for key in list(self._parked):
            entries = self._parked[key]
            while entries and entries[0][0] < deadline:
                entries.pop(0)[1].close()
            if not entries:
                del self._parked[key]
