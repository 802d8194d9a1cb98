"""The bundle's budget for request bytes it holds instead of forwarding.

Some bodies cannot stream through: an encoded body is held whole until it has been
decoded and scanned, and the API gateway keeps a JSON body to check it once it has
ended. Each such request has its own cap, and all of them together draw on one budget
per bundle, so a bottle opening many connections cannot make its bundle hold more than
`HELD_MAX` bytes: past it a request is refused with 503 (and past its own cap with
413), and the bundle's memory does not grow.
"""

from __future__ import annotations

from claude_bottle.bundle.refusal import Refusal

HELD_MAX = 64 * 1024 * 1024
"""Bytes all of a bundle's requests may hold at once. A bundle idles at ~45 MiB; with
this and its connection caps it stays under 256 MiB, however the bottle drives it."""
HELD_RULE = "limit:held-bytes"


class HeldBytes:
    """The bundle-wide count of held request bytes."""

    def __init__(self, limit: int = HELD_MAX) -> None:
        self.limit = limit
        self.total = 0

    def take(self, count: int) -> None:
        """Count `count` more bytes as held; Refusal (503) if the budget has no room."""
        if self.total + count > self.limit:
            raise Refusal(
                503,
                HELD_RULE,
                "the bundle holds as many request bytes as it may; retry when other "
                "requests have ended",
            )
        self.total += count

    def give(self, count: int) -> None:
        self.total -= count


class Hold:
    """The bytes one request holds, within its own cap and the bundle's budget.

    `release` must run however the request ends (a `finally`); it is idempotent.
    """

    def __init__(self, budget: HeldBytes, cap: int, rule: str, message: str) -> None:
        self.budget = budget
        self.cap = cap
        self.too_large = (rule, message)  # the 413 past `cap`
        self.count = 0

    def add(self, count: int) -> None:
        if self.count + count > self.cap:
            raise Refusal(413, *self.too_large)
        self.budget.take(count)
        self.count += count

    def release(self) -> None:
        self.budget.give(self.count)
        self.count = 0
