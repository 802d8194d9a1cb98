"""One call run in a thread while the caller goes on, for waits that would otherwise be in
series (a mount's tools, a cgroup move's kernel wait)."""

from __future__ import annotations

import threading
from collections.abc import Callable


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
