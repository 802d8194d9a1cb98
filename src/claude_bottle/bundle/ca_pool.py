"""Bottle CAs minted ahead: a small pool per user, each CA used by one bottle only.

Minting a bottle's CA needs `cryptography`, whose import is most of what a bundle does
before it is ready (~45 ms of CPU, ~7 MiB). A helper process (`python -m
claude_bottle.bundle.ca_pool DIR`, started by `run` once its bottle is up) mints a few
ahead; a bundle claims one, publishes its certificate without loading `cryptography`,
and loads it only when its first connection is intercepted.

Who can read a pooled key: the pool is `<state dir>/ca-pool`, a 0700 directory of 0600
files owned by the user, so only the user's own host processes (and root), the same
principals that could already read a running bundle's memory. Bottles never see it:
the namespace backend mounts an empty tmpfs over it (`masked_roots`), docker and
microVM bottles get no host paths, and a bottle runs as another uid where root starts
it. Used once: a bundle claims an entry with rename(2) (atomic; a second claimer gets
ENOENT), reads it and unlinks it before it serves, so no two bottles share a CA and no
key outlives its bottle on disk. An entry that is not a regular file of ours with mode
0600, or older than a day, or malformed, is deleted unread and the bundle mints its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import ssl

    from claude_bottle.bundle.tls import CertificateAuthority

POOL_SIZE = 20  # bottles started at once beyond it mint in-process, as without a pool
REFILL_BELOW = 10  # one refiller (an interpreter and cryptography, ~80 ms) per 10+ bottles
MAX_AGE_S = 24 * 3600  # a pooled CA is valid 30 days from minting; a bottle gets >= 29
MAX_ENTRY = 16 * 1024
SUFFIX = ".ca"
LOCK = ".refill.lock"


class PooledCA(NamedTuple):
    """A claimed CA: its certificate and key (PEM), and a Java trust store of it alone."""

    cert_pem: bytes
    key_pem: bytes
    java_truststore: bytes


def pool_dir() -> Path:
    from claude_bottle import paths

    return paths.state_root() / "ca-pool"


def _private_dir(directory: Path) -> bool:
    """`directory` is a real directory of ours that no one else may enter."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def entries(directory: Path) -> list[str]:
    try:
        # Not the dot files: one being claimed or minted must not be claimed again.
        return sorted(
            n for n in os.listdir(directory) if n.endswith(SUFFIX) and not n.startswith(".")
        )
    except OSError:
        return []


def claim(directory: Path) -> PooledCA | None:
    """Take one CA out of the pool for good; None when there is none to take."""
    if not _private_dir(directory):
        return None
    for name in entries(directory):
        taken = directory / f".claimed-{os.getpid()}-{os.urandom(6).hex()}"
        try:
            os.rename(directory / name, taken)
        except OSError:
            continue  # another bundle claimed it first
        try:
            entry = _read(taken)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(taken)
        if entry is not None:
            return entry
    return None


def _read(path: Path) -> PooledCA | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.getuid()
            or stat.S_IMODE(info.st_mode) != 0o600
            or time.time() - info.st_mtime > MAX_AGE_S
        ):
            return None
        data = handle.read(MAX_ENTRY + 1)
    if len(data) > MAX_ENTRY:
        return None
    try:
        raw = json.loads(data)
        import base64

        return PooledCA(
            raw["cert"].encode("ascii"),
            raw["key"].encode("ascii"),
            base64.b64decode(raw["java_truststore"], validate=True),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class LazyAuthority:
    """A claimed CA that loads `cryptography` on its first intercepted connection."""

    def __init__(self, bottle: str, pooled: PooledCA) -> None:
        import threading

        self._bottle = bottle
        self._pooled: PooledCA | None = pooled
        self._authority: CertificateAuthority | None = None
        self._lock = threading.Lock()

    def server_context(self, host: str) -> ssl.SSLContext:
        with self._lock:
            if self._authority is None:
                from claude_bottle.bundle.tls import CertificateAuthority

                assert self._pooled is not None
                self._authority = CertificateAuthority.from_pem(
                    self._bottle, self._pooled.cert_pem, self._pooled.key_pem
                )
                self._pooled = None  # the key lives in the authority from now on
            authority = self._authority
        return authority.server_context(host)


def publish(pooled: PooledCA, cert_file: Path, bundle_file: Path | None) -> None:
    """What `CertificateAuthority.publish` writes when no host is tunnelled: the CA
    certificate, the host's trust store plus it, a Java trust store of it alone."""
    cert_file.write_bytes(pooled.cert_pem)
    if bundle_file is not None:
        import ssl

        system = ssl.get_default_verify_paths().openssl_cafile
        try:
            host_store = Path(system).read_bytes() if system else b""
        except OSError:
            host_store = b""
        # In place: the bottle may already have it bind-mounted (see tls.publish).
        with bundle_file.open("r+b" if bundle_file.exists() else "wb") as handle:
            handle.truncate(0)
            handle.write(host_store.rstrip(b"\n") + b"\n" + pooled.cert_pem)
    from claude_bottle.bottle_env import JAVA_TRUSTSTORE

    cert_file.with_name(JAVA_TRUSTSTORE).write_bytes(pooled.java_truststore)


def needs_refill(directory: Path) -> bool:
    return len(entries(directory)) < REFILL_BELOW


def refill_in_background(directory: Path) -> None:
    """Start the refiller when the pool runs low; never waits for it."""
    if not needs_refill(directory):
        return
    import subprocess

    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-I", "-m", "claude_bottle.bundle.ca_pool", str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives a short `run`; not tied to its terminal
        )


def refill(directory: Path, size: int = POOL_SIZE) -> int:
    """Mint CAs until the pool holds `size`; how many were added. One refiller at a
    time (a lock file); expired and half-claimed entries are removed first."""
    import fcntl

    from claude_bottle import paths

    paths.make_private_dir(directory)
    if not _private_dir(directory):
        return 0
    lock = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another refiller is at it
        for name in os.listdir(directory):
            path = directory / name
            with contextlib.suppress(OSError):
                # Left by a bundle or a refiller that died midway, or too old to hand out.
                stale = name.startswith((".claimed-", ".minting-"))
                old = time.time() - os.lstat(path).st_mtime > MAX_AGE_S / 2
                if name != LOCK and (stale or old):
                    os.unlink(path)
        added = 0
        while len(entries(directory)) < size:
            _mint_into(directory)
            added += 1
        return added
    finally:
        os.close(lock)


def _mint_into(directory: Path) -> None:
    import base64
    import secrets

    from claude_bottle.bundle.tls import CertificateAuthority, java_truststore

    label = secrets.token_hex(8)
    authority = CertificateAuthority(f"one bottle ({label[:6]})")
    body = json.dumps(
        {
            "cert": authority.cert_pem().decode("ascii"),
            "key": authority.key_pem().decode("ascii"),
            "java_truststore": base64.b64encode(java_truststore([authority.cert])).decode(),
        }
    ).encode()
    partial = directory / f".minting-{label}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(partial, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        os.rename(partial, directory / f"{label}{SUFFIX}")  # whole, or not there
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def _yield_to_everything() -> None:
    """Run only on a core nothing else wants (SCHED_IDLE): the refiller starts while a
    bottle starts, and on two cores its ~80 ms of CPU came out of that start."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: the lowest niceness instead
        os.nice(19)


if __name__ == "__main__":
    _yield_to_everything()
    refill(Path(sys.argv[1]))
