"""Work kept off a start's critical path: one call in a thread while the caller goes on
(a mount's tools, a cgroup move's kernel wait), or a whole process at the lowest CPU
priority (the refillers of the CA and home image pools)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def run_at_lowest_priority() -> None:
    """This process runs only on a core nothing else wants (SCHED_IDLE): a refiller starts
    beside a bottle's start, and on two cores its CPU would come out of that start."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: the lowest niceness instead
        os.nice(19)


class Background:
    """`call` in a daemon thread; `join` waits for it and raises what it raised."""

    def __init__(self, call: Callable[[], object]) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                call()
            except BaseException as exc:  # re-raised in the joining thread
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self, *, quietly: bool = False) -> None:
        """Wait for the call; raise its exception (once) unless `quietly`."""
        self._thread.join()
        error, self._error = self._error, None
        if error is not None and not quietly:
            raise error
