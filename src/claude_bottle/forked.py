"""The end of a forked child that runs Python: never return into the parent's code.

A child of `os.fork()` that raised or returned would go on running its parent's
stack (its event loop, its `finally` blocks, its atexit handlers). `exit_after` runs the
child's work and leaves with `os._exit` and the status the work asked for.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # `typing` is not loaded by the bundle's prestart before it serves
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn


def exit_after(work: Callable[[], object], *, returned: int = 0) -> NoReturn:
    """Run `work`, then `os._exit`: `returned` if it returns, its SystemExit status (a
    message printed: 1), or 1 with the traceback of anything else it raised; the standard
    streams flushed first."""
    code = 1
    try:
        work()
        code = returned
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
