"""The git gate: the bundle's third service, git's smart HTTP for each configured remote.

The bottle reaches it at `http://127.0.0.1:<GIT_PORT>/<remote>.git` through the relay
(its ~/.gitconfig rewrites the remote's real URLs there). Each request passes the same
admission steps, and a `Refusal` from any of them is the answer (a text body git shows
as `remote:` lines, and one audit record):

1. `git_policy.route`: a configured remote and one of git's smart services, nothing else;
2. DLP of the request head, as the proxy does (`DlpInspector.check_head`);
3. a refs advertisement first brings the gate's mirror up to date with the upstream,
   with the host-side credential (`git_upstream.refresh_mirror`);
4. the exchange itself is real git, `git http-backend` on the mirror, hardened
   (`git_upstream.hardened_env`), with the request body capped at MAX_REQUEST bytes and
   the whole exchange at EXCHANGE_TIMEOUT; a push additionally runs the gate's
   pre-receive hook (`git_hook`): policy, DLP of the added content, then the upstream.

Memory stays bounded: bodies stream through pipes, never whole in the bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_bottle.bundle import http1
from claude_bottle.bundle.connection import ClientConnection, response
from claude_bottle.bundle.git_hook import DLP_VAR, REMOTE_VAR, REPORT_VAR
from claude_bottle.bundle.git_policy import RECEIVE, UPLOAD, GateRemote, Route, route
from claude_bottle.bundle.git_upstream import (
    GitEnv,
    hardened_env,
    refresh_mirror,
    resolve_credential,
    upstream_host,
)
from claude_bottle.bundle.refusal import Refusal

if TYPE_CHECKING:
    from claude_bottle.bundle.scanning import DlpInspector

MAX_REQUEST = 1 << 30  # bytes of one request body (a push's pack)
EXCHANGE_TIMEOUT = 900.0  # one http-backend exchange, a push's upstream leg included
MAX_CGI_HEAD = 16 * 1024
MAX_EXCHANGES = 8  # git processes the gate runs at once; more requests wait their turn
READ_SIZE = 256 * 1024
_GIT_PROTOCOL = re.compile(r"[A-Za-z0-9=:.,_-]{1,256}")
Recorder = Callable[..., Any]


class GitGate:
    """What every connection to the gate shares: remotes, mirrors, locks, settings."""

    def __init__(
        self,
        remotes: tuple[GateRemote, ...],
        cache: Path,
        git_env: GitEnv,
        record: Recorder,
        dlp: dict[str, object] | None,
    ) -> None:
        self.remotes = {remote.name: remote for remote in remotes}
        self.cache = cache
        self.git_env = git_env
        self.record = record
        self.dlp = dlp
        self._locks = {name: asyncio.Lock() for name in self.remotes}
        # A bottle opening connections by the thousand gets them queued, not a thousand
        # host-side git processes.
        self.exchanges = asyncio.Semaphore(MAX_EXCHANGES)
        self._hooks = cache / "hooks"

    def prepare(self) -> None:
        """The cache dir and the gate's one hook, written by the bundle alone."""
        self.cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._hooks.mkdir(mode=0o700, exist_ok=True)
        hook = self._hooks / "pre-receive"
        hook.write_text(
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -m claude_bottle.bundle.git_hook\n"
        )
        hook.chmod(0o700)

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
                await self._answer(refusal)
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

    async def _answer(self, refusal: Refusal) -> None:
        text = f"claude-bottle git gate: {refusal.message} (rule {refusal.rule})\n"
        if refusal.hint:
            text += f"claude-bottle git gate: to allow it: {refusal.hint}\n"
        body = text.encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"x-claude-bottle-block", refusal.rule.encode("ascii", "replace")),
            (b"connection", b"close"),
        ]
        await self.send(response(refusal.status, headers, body))

    async def _exchange(self, request: http1.RequestHead, where: Route) -> None:
        gate, remote = self.gate, where.remote
        credential = None
        if where.advertise or where.service == RECEIVE:
            credential = await asyncio.to_thread(resolve_credential, remote, os.environ)
        upstream_env = hardened_env(os.environ, remote, gate.git_env, credential=credential)
        if where.advertise:
            async with gate.lock(remote):
                await refresh_mirror(gate.mirror(remote), remote, upstream_env)
            if where.service == UPLOAD:
                host, port = upstream_host(remote.url)
                gate.record(
                    "git",
                    "allow",
                    rule="git:fetch",
                    method="FETCH",
                    host=host[:253],
                    port=port,
                    detail={"remote": remote.name},
                )
        elif not (gate.mirror(remote) / "HEAD").exists():
            raise Refusal(
                400, "git:no-advertisement", "ask for the refs (info/refs) before an exchange"
            )
        report = None
        env = upstream_env
        if where.service == RECEIVE and not where.advertise:
            fd, name = tempfile.mkstemp(prefix="push-", suffix=".json", dir=gate.cache)
            os.close(fd)
            report = Path(name)
            env = hardened_env(
                os.environ, remote, gate.git_env, hooks=str(gate._hooks), credential=credential
            )
            env[REMOTE_VAR] = json.dumps(remote._asdict())
            env.update(_stripped_secrets(os.environ, env))
            env[REPORT_VAR] = str(report)
            if gate.dlp is not None:
                env[DLP_VAR] = json.dumps(gate.dlp)
        env.update(_cgi_env(request, where, gate.cache))
        try:
            if report is not None:
                async with gate.lock(remote):  # one push at a time moves the mirror
                    await self._run_backend(request, env, gate.mirror(remote))
                self._audit_push(remote, report)
            else:
                await self._run_backend(request, env, gate.mirror(remote))
        finally:
            if report is not None:
                with contextlib.suppress(OSError):
                    report.unlink()

    def _audit_push(self, remote: GateRemote, report: Path) -> None:
        try:
            outcomes = json.loads(report.read_text() or "[]")
        except (OSError, ValueError):
            outcomes = []
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
        for outcome in outcomes:
            self.gate.record(
                "git",
                outcome["decision"],
                rule=outcome["rule"],
                method="PUSH",
                host=host[:253],
                port=port,
                path=str(outcome["ref"])[:500],
                detail={
                    "remote": remote.name,
                    "ref": outcome["ref"],
                    "old": outcome["old"],
                    "new": outcome["new"],
                    "commits": outcome["commits"],
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
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            raise
        finally:
            feeding.cancel()
            with contextlib.suppress(BaseException):
                await feeding
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(process.wait(), 5)
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


def _stripped_secrets(
    host: dict[str, str] | os._Environ[str], env: dict[str, str]
) -> dict[str, str]:
    """The user's secret values the hardened environment dropped (GIT_TOKEN…), under names
    the hook's DLP still reads as secrets: a push must not carry them either."""
    from claude_bottle.bundle.scanning import host_secrets

    return {
        f"CLAUDE_BOTTLE_SECRET_{name}": value
        for name, value in host_secrets(host).items()
        if name not in env
    }


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
