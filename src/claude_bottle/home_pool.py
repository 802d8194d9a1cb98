"""Blank home images made ahead: a new bottle's empty home takes one (a rename) instead
of running mkfs.ext4 and an fsync while it starts (~10-15 ms of its critical path).

    python -m claude_bottle.home_pool SIZE

makes the spares for homes of SIZE bytes; a `take` starts it in the background, at the
lowest CPU priority (SCHED_IDLE: it must not slow the start that took one). The spares
live in the state dir (`home-pool/<key>/`, 0700, on the bottles' filesystem, so that a
rename moves one into a bottle's dir); the key is the size, the owner and mkfs's options,
so an image is only ever what `home_image.make` would have made for that bottle. A
rename claims a spare for one bottle only; a spare left half-made by a killed refiller
is never taken (it has a temporary name) and is removed by the next refill.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path

SPARES = 2  # per key: a start that finds none runs mkfs itself, as without a pool
SUFFIX = ".img"
LOCK = ".lock"


def key(size: int) -> str:
    """What makes two blank images interchangeable: mkfs's argv (owner, options) and size."""
    from claude_bottle.home_image import mkfs_argv

    return hashlib.sha256("\0".join([*mkfs_argv(size), str(size)]).encode()).hexdigest()[:24]


def pool_dir(size: int) -> Path:
    from claude_bottle import paths

    return paths.state_root() / "home-pool" / key(size)


def take(image: Path, size: int) -> bool:
    """Move a spare to `image` (absent); False if there was none to take. The pool is
    refilled in the background, unless it cannot serve `image` (another filesystem)."""
    import errno

    directory = pool_dir(size)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        names = []  # no pool yet
    for name in names:
        if not name.endswith(SUFFIX):
            continue
        try:
            os.replace(directory / name, image)  # one taker wins; the others move on
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False  # the bottles' dir is elsewhere: mkfs it is, every time
            break
        _refill_in_background(size)
        return True
    _refill_in_background(size)
    return False


def _refill_in_background(size: int) -> None:
    import subprocess

    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-I", "-m", "claude_bottle.home_pool", str(size)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives a short `run`
            env={k: v for k, v in os.environ.items() if k in _ENV},
        )


# What the refiller needs to find the state dir and mkfs (never a secret of the caller's).
_ENV = frozenset({"PATH", "HOME", "XDG_STATE_HOME", "CLAUDE_BOTTLE_STATE_DIR", "LANG"})


def refill(size: int, spares: int = SPARES) -> int:
    """Make spares until `spares` are ready; how many were made. One refiller per key at a
    time (a lock); what a killed one left half-made is removed first."""
    import fcntl

    from claude_bottle import home_image

    directory = pool_dir(size)
    if not directory.parent.parent.is_dir():
        return 0  # the state dir is gone (removed after the run that asked): not remade
    for level in (directory.parent, directory):
        level.mkdir(mode=0o700, exist_ok=True)
        os.chmod(level, 0o700)
    lock = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another refiller is at it
        names = os.listdir(directory)
        for name in names:
            if name.startswith(".") and name != LOCK:
                (directory / name).unlink(missing_ok=True)
        ready = sum(name.endswith(SUFFIX) for name in names)
        made = 0
        while ready + made < spares:
            home_image.make(directory / f"{os.getpid()}-{made}{SUFFIX}", size)
            made += 1
        return made
    finally:
        os.close(lock)


if __name__ == "__main__":
    from claude_bottle.background import run_at_lowest_priority

    run_at_lowest_priority()
    with contextlib.suppress(Exception):  # nobody reads its output: a failed refill is a miss
        refill(int(sys.argv[1]))
