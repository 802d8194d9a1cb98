"""The git gate: the bundle's third service, git's smart HTTP for each configured remote.

The bottle reaches it at `http://127.0.0.1:<GIT_PORT>/<remote>.git` through the relay
(its ~/.gitconfig rewrites the remote's real URLs there). Each request passes the same
admission steps, and a `Refusal` from any of them is the answer (a text body git shows
as `remote:` lines, and one audit record):

1. `git_policy.route`: a configured remote and one of git's smart services, nothing else;
2. DLP of the request head, as the proxy does (`DlpInspector.check_head`);
3. a fetch's refs advertisement first brings the gate's mirror up to date with the
   upstream, with the host-side credential (`git_upstream.refresh_mirror`); a push's does
   so only for an empty mirror (its refs otherwise move with each fetch and push);
4. the exchange itself is real git, `git http-backend` on the mirror, hardened
   (`git_upstream.hardened_env`), with the request body capped at MAX_REQUEST bytes and
   the whole exchange at EXCHANGE_TIMEOUT; a push additionally runs the gate's
   pre-receive hook, which asks the gate (`GitGate.judge`, over a private socket) for the
   verdict of `git_hook.decide`: policy, DLP of the added content with the bundle's
   engine, then the upstream.

Memory stays bounded: bodies stream through pipes, never whole in the bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_bottle.bundle import git_prereceive, http1
from claude_bottle.bundle.connection import ClientConnection, response
from claude_bottle.bundle.git_hook import Outcome, Verdict, decide
from claude_bottle.bundle.git_lfs_gate import Exchange, LfsGate, is_lfs, lfs_route
from claude_bottle.bundle.git_policy import RECEIVE, UPLOAD, GateRemote, Route, route
from claude_bottle.bundle.git_stream import relay_fetch, served_upstream
from claude_bottle.bundle.git_upstream import (
    Credential,
    GitEnv,
    hardened_env,
    refresh_mirror,
    resolve_credential,
    upstream_host,
)
from claude_bottle.bundle.refusal import Refusal

if TYPE_CHECKING:
    from claude_bottle.bundle.scanning import DlpInspector
    from claude_bottle.policy.dlp import Scanner

MAX_REQUEST = 1 << 30  # bytes of one request body (a push's pack)
EXCHANGE_TIMEOUT = 900.0  # one http-backend exchange, a push's upstream leg included
MAX_CGI_HEAD = 16 * 1024
MAX_EXCHANGES = 8  # git processes the gate runs at once; more requests wait their turn
READ_SIZE = 256 * 1024
MAX_HOOK_REQUEST = 2 * git_prereceive.MAX_INPUT + 64 * 1024  # its lines, JSON-escaped
HOOK_REQUEST_TIMEOUT = 30.0
WARM_DELAY = 2.0  # seconds after a relayed fetch before the mirror follows the upstream
_GIT_PROTOCOL = re.compile(r"[A-Za-z0-9=:.,_-]{1,256}")
Recorder = Callable[..., Any]


class _Push:
    """A push whose hook may ask for its verdict, once (by its random id)."""

    def __init__(
        self, remote: GateRemote, env: dict[str, str], mirror: Path, scanner: Scanner | None
    ) -> None:
        self.remote, self.env, self.mirror, self.scanner = remote, env, mirror, scanner
        self.outcomes: list[Outcome] | None = None  # None: the hook never asked


class GitGate:
    """What every connection to the gate shares: remotes, mirrors, locks, settings."""

    def __init__(
        self,
        remotes: tuple[GateRemote, ...],
        cache: Path,
        git_env: GitEnv,
        record: Recorder,
    ) -> None:
        self.remotes = {remote.name: remote for remote in remotes}
        self.cache = cache
        self.git_env = git_env
        self.record = record
        self.lfs = LfsGate(record, cache / "lfs-spool")  # a gated remote's LFS (git_lfs_gate)
        self._locks = {name: asyncio.Lock() for name in self.remotes}
        # A bottle opening connections by the thousand gets them queued, not a thousand
        # host-side git processes.
        self.exchanges = asyncio.Semaphore(MAX_EXCHANGES)
        self._hooks = cache / "hooks"
        self._pushes: dict[str, _Push] = {}
        # Where the hook asks for its verdict: an abstract unix socket (no file to leave
        # behind, no path length limit), reachable from the bundle's own network namespace
        # only, and answering only a push id the gate handed to that push's hook.
        self.judge_address = f"@claude-bottle-git-judge-{secrets.token_hex(16)}"
        self._judge: asyncio.AbstractServer | None = None
        self._warming: dict[str, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[None]] = set()

    def prepare(self) -> None:
        """The cache dir and the gate's one hook, written by the bundle alone."""
        self.cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._hooks.mkdir(mode=0o700, exist_ok=True)
        hook = self._hooks / "pre-receive"
        script = shlex.quote(git_prereceive.__file__)
        hook.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S {script}\n")
        hook.chmod(0o700)

    async def push(
        self, remote: GateRemote, env: dict[str, str], scanner: Scanner | None
    ) -> tuple[str, _Push]:
        """Register a push (its hook's id and record); the judge socket is up after this."""
        if self._judge is None:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind("\0" + self.judge_address[1:])
            self._judge = await asyncio.start_unix_server(
                self._judge_client, sock=listener, limit=MAX_HOOK_REQUEST
            )
        push_id = secrets.token_hex(16)
        self._pushes[push_id] = _Push(remote, env, self.mirror(remote), scanner)
        return push_id, self._pushes[push_id]

    def warm_later(self, remote: GateRemote, env: dict[str, str]) -> None:
        """Bring the mirror up to date WARM_DELAY after the last relayed fetch exchange (a
        clone is two or three of them), so a later push finds the upstream's objects there
        and sends only its own."""
        pending = self._warming.pop(remote.name, None)
        if pending is not None:
            pending.cancel()
        loop = asyncio.get_running_loop()

        def start() -> None:
            self._warming.pop(remote.name, None)
            self._background.add(loop.create_task(self._warm(remote, env)))

        self._warming[remote.name] = loop.call_later(WARM_DELAY, start)

    def warm_due(self, remote: GateRemote) -> bool:
        """Whether a refresh after a fetch is still waiting for its delay (then it is
        cancelled: the caller refreshes now)."""
        pending = self._warming.pop(remote.name, None)
        if pending is None or pending.cancelled():
            return False
        pending.cancel()
        return True

    async def _warm(self, remote: GateRemote, env: dict[str, str]) -> None:
        try:
            async with self.lock(remote):
                await refresh_mirror(self.mirror(remote), remote, env)
        except (Refusal, OSError):
            pass  # the next push's advertisement fills an empty mirror, or says why not
        finally:
            self._background = {task for task in self._background if not task.done()}

    def forget(self, push_id: str) -> None:
        self._pushes.pop(push_id, None)

    async def _judge_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One hook's question: its push's verdict, from `git_hook.decide`."""
        try:
            verdict = await self._verdict(reader)
            answer = {"status": verdict.status, "lines": verdict.lines}
            writer.write(json.dumps(answer).encode())
            await writer.drain()
        except (
            OSError,
            ValueError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # the hook fails closed when it has no answer
        finally:
            writer.close()

    async def _verdict(self, reader: asyncio.StreamReader) -> Verdict:
        async with asyncio.timeout(HOOK_REQUEST_TIMEOUT):
            request = json.loads(await reader.readuntil(b"\n"))
        push = (
            self._pushes.pop(str(request.get("push")), None) if isinstance(request, dict) else None
        )
        if push is None:
            raise ValueError("no such push")
        updates, quarantine = request.get("updates"), request.get("quarantine")
        if not isinstance(updates, str) or not isinstance(quarantine, dict):
            raise ValueError("malformed hook request")
        verdict = await asyncio.to_thread(
            decide, push.remote, push.scanner, push.mirror, push.env, updates, quarantine
        )
        push.outcomes = verdict.outcomes
        return verdict

    def mirror(self, remote: GateRemote) -> Path:
        return self.cache / f"{remote.name}.git"

    def lock(self, remote: GateRemote) -> asyncio.Lock:
        return self._locks[remote.name]


class GitGateConnection(ClientConnection):
    """One connection from the bottle's git."""

    def __init__(
        self,
        gate: GitGate,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        inspector: DlpInspector | None,
    ) -> None:
        super().__init__(reader, writer)
        self.gate = gate
        self.inspector = inspector

    async def bad_request(self, exc: http1.ProtocolError) -> None:
        self.gate.record("git", "deny", rule="git:bad-request", detail={"reason": str(exc)[:200]})
        with contextlib.suppress(Exception):
            await self._answer(Refusal(exc.status, "git:bad-request", "malformed HTTP request"))

    async def handle(self, request: http1.RequestHead) -> bool:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        remote_name = ""
        try:
            if is_lfs(target):
                lfs = lfs_route(self.gate.remotes, method, target)
                remote_name = lfs.remote.name
                host, port = upstream_host(lfs.remote.url)
                if self.inspector is not None:
                    self.inspector.check_head(method, host, port, target, request.headers)
                async with self.gate.exchanges:
                    scanner = self.inspector.scanner if self.inspector is not None else None
                    exchange = Exchange(
                        request, self.body_event, self.send, self.gate.git_env, scanner
                    )
                    await self.gate.lfs.serve(exchange, lfs)
                return False
            where = route(self.gate.remotes, method, target)
            remote_name = where.remote.name
            host, port = upstream_host(where.remote.url)
            if self.inspector is not None:
                self.inspector.check_head(method, host, port, target, request.headers)
            async with self.gate.exchanges:
                await self._exchange(request, where)
        except Refusal as refusal:
            self.gate.record(
                "git",
                refusal.decision,
                rule=refusal.rule,
                method=method,
                path=target[:500],
                detail={"remote": remote_name, "status": refusal.status, "reason": refusal.message},
            )
            with contextlib.suppress(Exception):
                await self._answer(refusal, lfs=is_lfs(target))
        except (http1.ProtocolError, ConnectionError, TimeoutError) as exc:
            # The client broke the exchange off (truncated, malformed or stalled body):
            # git's quarantine keeps the mirror as it was; record it, and end the connection.
            self.gate.record(
                "git",
                "error",
                rule="git:aborted",
                method=method,
                path=target[:500],
                detail={"remote": remote_name, "reason": f"{type(exc).__name__}: {exc}"[:200]},
            )
            raise
        return False  # one exchange per connection: git's curl reconnects

    async def _answer(self, refusal: Refusal, lfs: bool = False) -> None:
        text = f"claude-bottle git gate: {refusal.message} (rule {refusal.rule})\n"
        if refusal.hint:
            text += f"claude-bottle git gate: to allow it: {refusal.hint}\n"
        body = text.encode()
        kind = b"text/plain; charset=utf-8"
        if lfs:  # git-lfs shows an error's `message` when the answer is its JSON
            body, kind = (
                json.dumps({"message": text.strip()}).encode(),
                b"application/vnd.git-lfs+json",
            )
        headers = [
            (b"content-type", kind),
            (b"content-length", b"%d" % len(body)),
            (b"x-claude-bottle-block", refusal.rule.encode("ascii", "replace")),
            (b"connection", b"close"),
        ]
        await self.send(response(refusal.status, headers, body))

    async def _exchange(self, request: http1.RequestHead, where: Route) -> None:
        gate, remote = self.gate, where.remote
        relayed = where.service == UPLOAD and served_upstream(remote)
        credential = None
        if where.advertise or where.service == RECEIVE or relayed:
            credential = await asyncio.to_thread(resolve_credential, remote, os.environ)
        upstream_env = hardened_env(os.environ, remote, gate.git_env, credential=credential)
        mirror = gate.mirror(remote)
        if relayed:
            if where.advertise:
                self._record_fetch(remote)
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                await relay_fetch(
                    request,
                    where,
                    credential,
                    gate.git_env,
                    self.body_event,
                    self.send,
                    MAX_REQUEST,
                )
            if not where.advertise:
                gate.warm_later(remote, upstream_env)
            return
        if where.advertise:
            async with gate.lock(remote):
                # A push is judged against the mirror's refs, which moved with every fetch
                # and push through the gate: only an empty mirror needs the upstream first
                # (a push based on newer upstream refs meets the upstream's lease check).
                if (
                    where.service == UPLOAD
                    or not (mirror / "HEAD").exists()
                    or gate.warm_due(remote)  # the bottle fetched newer refs: the mirror too
                ):
                    await refresh_mirror(mirror, remote, upstream_env)
            if where.service == UPLOAD:
                self._record_fetch(remote)
        elif not (mirror / "HEAD").exists():
            raise Refusal(
                400, "git:no-advertisement", "ask for the refs (info/refs) before an exchange"
            )
        if where.service == RECEIVE and not where.advertise:
            await self._push(request, where, upstream_env, credential)
        else:
            await self._run_backend(
                request, {**upstream_env, **_cgi_env(request, where, gate.cache)}, mirror
            )

    def _record_fetch(self, remote: GateRemote) -> None:
        host, port = upstream_host(remote.url)
        self.gate.record(
            "git",
            "allow",
            rule="git:fetch",
            method="FETCH",
            host=host[:253],
            port=port,
            detail={"remote": remote.name},
        )

    async def _push(
        self,
        request: http1.RequestHead,
        where: Route,
        upstream_env: dict[str, str],
        credential: Credential | None,
    ) -> None:
        """receive-pack, whose hook asks the gate for the verdict on this push."""
        gate, remote = self.gate, where.remote
        scanner = self.inspector.scanner if self.inspector is not None else None
        push_id, push = await gate.push(remote, upstream_env, scanner)
        env = hardened_env(
            os.environ, remote, gate.git_env, hooks=str(gate._hooks), credential=None
        )
        env[git_prereceive.JUDGE_VAR] = gate.judge_address
        env[git_prereceive.PUSH_VAR] = push_id
        env.update(_cgi_env(request, where, gate.cache))
        try:
            async with gate.lock(remote):  # one push at a time moves the mirror
                try:
                    await self._run_backend(request, env, gate.mirror(remote))
                finally:
                    _drop_quarantines(gate.mirror(remote))
        except BaseException:
            if push.outcomes is not None:  # judged (and maybe sent upstream), then broken off
                self._audit_push(remote, push.outcomes)
            raise
        else:
            self._audit_push(remote, push.outcomes)
        finally:
            gate.forget(push_id)

    def _audit_push(self, remote: GateRemote, outcomes: list[Outcome] | None) -> None:
        host, port = upstream_host(remote.url)
        if not outcomes:  # the hook did not run: receive-pack refused the request itself
            self.gate.record(
                "git",
                "error",
                rule="git:push",
                host=host,
                port=port,
                detail={"remote": remote.name},
            )
        for outcome in outcomes or ():
            self.gate.record(
                "git",
                outcome.decision,
                rule=outcome.rule,
                method="PUSH",
                host=host[:253],
                port=port,
                path=outcome.ref[:500],
                detail={
                    "remote": remote.name,
                    "ref": outcome.ref,
                    "old": outcome.old,
                    "new": outcome.new,
                    "commits": outcome.commits,
                },
            )

    async def _run_backend(
        self, request: http1.RequestHead, env: dict[str, str], cwd: Path
    ) -> None:
        process = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        errors = asyncio.ensure_future(_tail(process.stderr))
        feeding = asyncio.ensure_future(self._feed(request, process.stdin))
        try:
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                head = await _cgi_head(process.stdout)
                await feeding  # a refused body ends the exchange before any answer
                await self.send(head)
                while chunk := await process.stdout.read(READ_SIZE):
                    await self.send(chunk)
                await process.wait()
        except BaseException:
            # TERM first: receive-pack then removes its quarantine (a KILL would leave the
            # pushed objects behind in the mirror); KILL if it does not end.
            _signal_group(process.pid, signal.SIGTERM)
            raise
        finally:
            feeding.cancel()
            with contextlib.suppress(BaseException):
                await feeding
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(process.wait(), 5)
            if process.returncode is None:
                _signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(BaseException):
                stderr = await asyncio.wait_for(errors, 1)
                if stderr:
                    print(f"claude-bottle git gate: {stderr[-2000:]!r}", file=sys.stderr)

    async def _feed(self, request: http1.RequestHead, stdin: asyncio.StreamWriter) -> None:
        """The request body into http-backend, at most MAX_REQUEST bytes."""
        try:
            if request.method == b"POST":
                if request.expects_continue:
                    await self.send(http1.CONTINUE)
                total = 0
                while True:
                    event = await self.body_event()
                    if not isinstance(event, bytes):
                        break
                    total += len(event)
                    if total > MAX_REQUEST:
                        raise Refusal(
                            413,
                            "git:too-large",
                            f"a request to the git gate may carry at most {MAX_REQUEST} bytes",
                        )
                    stdin.write(event)
                    await stdin.drain()
        finally:
            with contextlib.suppress(Exception):
                stdin.close()


def _signal_group(pid: int, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal_number)


def _drop_quarantines(mirror: Path) -> None:
    """What a receive-pack that was killed left of a push (its quarantine): with the
    remote's lock held no other receive-pack runs on this mirror, so any is stale."""
    for stale in (mirror / "objects").glob("tmp_objdir-*"):
        shutil.rmtree(stale, ignore_errors=True)


async def _tail(stream: asyncio.StreamReader, keep: int = 4096) -> bytes:
    """Read `stream` to its end (so its writer never blocks), keeping the last bytes."""
    kept = b""
    while chunk := await stream.read(READ_SIZE):
        kept = (kept + chunk)[-keep:]
    return kept


async def _cgi_head(stdout: asyncio.StreamReader) -> bytes:
    """http-backend's CGI header block as an HTTP/1.1 response head (the body follows until
    the connection closes)."""
    status, headers = 200, []
    size = 0
    while True:
        line = await stdout.readline()
        size += len(line)
        if not line or size > MAX_CGI_HEAD:
            raise Refusal(502, "git:backend", "git http-backend gave no answer")
        line = line.rstrip(b"\r\n")
        if not line:
            break
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"status":
            status = int(value.split()[0])
        else:
            headers.append((name, value))
    headers.append((b"connection", b"close"))
    return response(status, headers)


def _cgi_env(request: http1.RequestHead, where: Route, root: Path) -> dict[str, str]:
    env = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "GIT_PROJECT_ROOT": str(root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "REMOTE_USER": "bottle",  # receive-pack is served to an authenticated user only
        "REMOTE_ADDR": "127.0.0.1",
        "REQUEST_METHOD": request.method.decode("ascii"),
        "PATH_INFO": where.path_info,
        "QUERY_STRING": f"service={where.service}" if where.advertise else "",
    }
    for name, value in request.headers:
        text = value.decode("latin-1")
        if name == b"content-type":
            env["CONTENT_TYPE"] = text
        elif name == b"content-length":
            env["CONTENT_LENGTH"] = text
        elif name == b"content-encoding" and text in ("gzip", "x-gzip"):
            env["HTTP_CONTENT_ENCODING"] = text
        elif name == b"git-protocol" and _GIT_PROTOCOL.fullmatch(text):
            env["GIT_PROTOCOL"] = text
    return env
