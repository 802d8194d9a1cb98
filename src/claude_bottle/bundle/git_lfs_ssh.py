"""An ssh remote's LFS endpoint, found the way git-lfs finds it: `git-lfs-authenticate`.

For `git@host:acme/app.git` git-lfs runs `ssh git@host git-lfs-authenticate acme/app.git
download` (or `upload`) and the host answers JSON: the LFS API's `href`, the `header`s to
send with every call of it (a short-lived token, e.g. GitHub's `Authorization: RemoteAuth
…`) and when they expire (`expires_in` seconds or `expires_at`, RFC 3339). The gate does
the same on the host side, with the ssh of the remote's git traffic (`git_upstream.
ssh_argv`: the user's `GIT_SSH_COMMAND`, agent, keys and known_hosts, in `hardened_env`),
and keeps the answer until it expires (at most MAX_TTL). The bottle's git-lfs talks plain
HTTP to the gate, so git-lfs's pure-ssh protocol (`git-lfs-transfer`) never comes up.

Nothing of the remote command comes from the bottle: the path is the configured URL's,
the operation one of two words the gate picks; a request can only choose which of the
two. The answer is hostile (bounded, the href https to a named host, each header a short
printable string) and its headers never leave the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import time
from collections.abc import Mapping
from datetime import datetime
from typing import NamedTuple

from claude_bottle.bundle.git_lfs_batch import checked_headers, checked_href, json_object
from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.git_upstream import SshTarget, ssh_argv, ssh_target
from claude_bottle.bundle.refusal import Refusal

AUTH_TIMEOUT = 30.0  # seconds for ssh to connect, authenticate and answer
MAX_AUTH_ANSWER = 64 * 1024  # bytes of git-lfs-authenticate's JSON
MAX_STDERR = 4096
MAX_TTL = 3600.0  # seconds an answer is kept at most, whatever it says
DEFAULT_TTL = 300.0  # when it names no expiry
EXPIRY_MARGIN = 10.0  # seconds before the stated expiry the gate asks again
MAX_CACHED = 256
OPERATIONS = ("download", "upload")


class SshAuth(NamedTuple):
    """git-lfs-authenticate's answer, checked: where the LFS API is and what to send it."""

    href: str  # https://host[:port]/path, the LFS API's base (…/info/lfs)
    headers: tuple[tuple[str, str], ...]  # a credential: never shown, logged or repr'd
    expires: float  # time.monotonic() after which it is asked again

    def __repr__(self) -> str:
        return f"SshAuth(href={self.href!r}, headers=<hidden>)"


def lfs_path(target: SshTarget) -> str:
    """The repository path git-lfs 3 hands git-lfs-authenticate, which is git's own:
    `ssh://host/acme/app.git` gives `/acme/app.git` (the URL's path, slash kept), and
    `git@host:acme/app.git` gives `acme/app.git`. Checked against Debian's git-lfs 3.3.0
    with a recording GIT_SSH. git-lfs 2 dropped that slash; servers take both."""
    return target.path


def authenticate_argv(remote: GateRemote, env: Mapping[str, str], operation: str) -> list[str]:
    """The ssh command line for `remote`'s `operation`: from the config and the gate's own
    choice of operation only."""
    if operation not in OPERATIONS:
        raise ValueError(f"not an LFS operation: {operation!r}")
    target = ssh_target(remote.url)
    command = f"git-lfs-authenticate {shlex.quote(lfs_path(target))} {operation}"
    return ssh_argv(env, target, command)


def _failed(remote: GateRemote, why: str) -> Refusal:
    host = ssh_target(remote.url).destination.rpartition("@")[2]
    return Refusal(
        502,
        "git:lfs-ssh",
        f"remote {remote.name}: git-lfs-authenticate over ssh to {host} failed ({why})",
        f"on the host, check that `ssh {host} git-lfs-authenticate …` works with the ssh "
        f"of [git.remotes.{remote.name}] (GIT_SSH_COMMAND, agent, known_hosts), and that "
        "the host serves Git LFS over ssh",
    )


def parse_answer(remote: GateRemote, answer: bytes, now: float, wall: float) -> SshAuth:
    """git-lfs-authenticate's JSON, checked; `Refusal` (502) naming the remote otherwise.
    `now` is the monotonic clock, `wall` the epoch time (for `expires_at`)."""
    if len(answer) > MAX_AUTH_ANSWER:
        raise _failed(remote, "its answer is too large")
    parsed = json_object(answer, lambda why: _failed(remote, f"its answer is {why}"))
    try:
        href = checked_href(remote.name, parsed.get("href")).rstrip("/")
        headers = checked_headers(remote.name, parsed.get("header", {}))
    except Refusal as refusal:
        raise _failed(remote, refusal.message.rpartition("(")[2].rstrip(")")) from None
    ttl = DEFAULT_TTL
    expires_in = parsed.get("expires_in")
    expires_at = parsed.get("expires_at")
    if type(expires_in) is int and expires_in > 0:
        ttl = float(expires_in)
    elif isinstance(expires_at, str) and expires_at:
        try:
            at = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
        except ValueError:
            raise _failed(remote, "its expires_at is not a date") from None
        if at.tzinfo is None:
            raise _failed(remote, "its expires_at has no time zone")
        ttl = at.timestamp() - wall
    ttl = min(ttl, MAX_TTL) - EXPIRY_MARGIN
    return SshAuth(href, headers, now + max(ttl, 0.0))


async def _run(argv: list[str], env: Mapping[str, str]) -> tuple[int, bytes, bytes]:
    """ssh to completion: (status, stdout at most MAX_AUTH_ANSWER + 1 bytes, stderr's
    tail); killed as a process group at AUTH_TIMEOUT."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        cwd="/",  # not the bundle's working directory (the workspace); ssh needs none
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stderr is not None

    async def bounded(stream: asyncio.StreamReader, limit: int, tail: bool) -> bytes:
        kept = b""
        while chunk := await stream.read(65536):
            kept = (kept + chunk)[-limit:] if tail else (kept + chunk)[:limit]
        return kept

    try:
        async with asyncio.timeout(AUTH_TIMEOUT):
            out, err = await asyncio.gather(
                bounded(process.stdout, MAX_AUTH_ANSWER + 1, False),
                bounded(process.stderr, MAX_STDERR, True),
            )
            status = await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(process.wait(), 5)
        raise
    return status, out, err


def _reason(stderr: bytes) -> str:
    """ssh's last words, short and printable (its own messages: a refused key, an unknown
    host key, a command not found on the host; never the answer, which holds the token)."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    return "".join(c if c.isprintable() else "?" for c in last)[:200]


class SshAuthCache:
    """git-lfs-authenticate's answers by (remote, operation), each until it expires."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], SshAuth] = {}
        self._asking: dict[tuple[str, str], asyncio.Lock] = {}

    async def get(self, remote: GateRemote, env: Mapping[str, str], operation: str) -> SshAuth:
        key = (remote.name, operation)
        lock = self._asking.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent batches of one remote ask ssh once
            kept = self._kept.get(key)
            if kept is not None and kept.expires > time.monotonic():
                return kept
            try:
                argv = authenticate_argv(remote, env, operation)
            except ValueError as exc:
                raise _failed(remote, str(exc)) from None
            try:
                status, out, err = await _run(argv, env)
            except TimeoutError:
                raise _failed(remote, f"no answer in {AUTH_TIMEOUT:.0f} s") from None
            except OSError as exc:
                raise _failed(remote, f"ssh could not be run: {type(exc).__name__}") from None
            if status != 0:
                why = _reason(err) or f"ssh exited with status {status}"
                raise _failed(remote, why)
            auth = parse_answer(remote, out, time.monotonic(), time.time())
            if len(self._kept) >= MAX_CACHED:
                now = time.monotonic()
                self._kept = {k: v for k, v in self._kept.items() if v.expires > now}
                if len(self._kept) >= MAX_CACHED:
                    self._kept.clear()
            self._kept[key] = auth
            return auth

    def forget(self, remote: GateRemote, operation: str) -> None:
        """Drop an answer the LFS API refused (its token revoked or expired early)."""
        self._kept.pop((remote.name, operation), None)
