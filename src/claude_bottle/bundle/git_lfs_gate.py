"""Git LFS through the git gate: a gated remote's LFS objects, with the host-side credential.

git-lfs applies the bottle's `insteadOf` rewrites to its LFS endpoint too, so a gated
remote's LFS calls reach the gate at `/<remote>.git/info/lfs/…`. The gate serves:

* `POST /<remote>.git/info/lfs/objects/batch`: the bottle's request is checked and rebuilt
  (`git_lfs_batch.parse_request`, at most MAX_BATCH bytes), sent to the upstream's own
  batch API (`<url>/info/lfs/objects/batch`) with the host-side credential, and its answer
  rewritten (`git_lfs_batch.rewrite_answer`) so each action points back at the gate;
* `GET /<remote>.git/info/lfs/objects/<oid>/<ticket>`: the action the upstream gave for
  that object, followed by the gate with the upstream's headers (its credential among
  them), the object streamed back to the bottle.

So the bottle never sees the upstream's action headers nor the host-side credential, and
object hosts need not be in the egress allowlist: they are the upstream's choice, not the
bottle's. https remotes only (an ssh remote's LFS would take git-lfs-authenticate).
Operations other than `download` are refused (403): an upload is a push's content.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from claude_bottle.bundle import http1
from claude_bottle.bundle.connection import pull, response
from claude_bottle.bundle.git_lfs_batch import (
    ACTION_TTL,
    MAX_ANSWER,
    MAX_BATCH,
    MEDIA_TYPE,
    Action,
    parse_request,
    rewrite_answer,
    upstream_request,
)
from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.git_upstream import Credential, GitEnv, resolve_credential
from claude_bottle.bundle.refusal import Refusal

CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 120.0  # each read from the upstream or an object host
MAX_RESPONSE_HEAD = 64 * 1024
MAX_ACTIONS = 100_000  # actions the gate keeps for the bottle at once
_LFS_PATH = re.compile(r"/([A-Za-z0-9][A-Za-z0-9._-]{0,62})\.git/info/lfs(/[^?#]*)")
_OBJECT = re.compile(r"/objects/([0-9a-f]{64})/([A-Za-z0-9_-]{32})")
_GATE_HOST = re.compile(r"(127\.0\.0\.1|localhost|\[::1\]):[0-9]{1,5}")
NextEvent = Callable[[], Awaitable[http1.Event]]
Send = Callable[[bytes], Awaitable[None]]
Recorder = Callable[..., Any]


class LfsRoute(NamedTuple):
    remote: GateRemote
    batch: bool  # the batch API; else an object by its ticket
    oid: str = ""
    ticket: str = ""


def is_lfs(target: str) -> bool:
    return "/info/lfs/" in target.split("?", 1)[0]


def lfs_route(remotes: dict[str, GateRemote], method: str, target: str) -> LfsRoute:
    """The remote and LFS call a request asks for; `Refusal` otherwise."""
    found = _LFS_PATH.fullmatch(target.split("?", 1)[0])
    remote = remotes.get(found.group(1)) if found else None
    if found is None or remote is None:
        raise Refusal(404, "git:unknown-remote", "no such remote's LFS on the git gate")
    if not remote.url.startswith("https://"):
        raise Refusal(
            404,
            "git:lfs-unsupported",
            f"remote {remote.name}: the git gate serves LFS for https remotes only",
        )
    rest = found.group(2)
    if rest == "/objects/batch" and method == "POST":
        return LfsRoute(remote, True)
    got = _OBJECT.fullmatch(rest)
    if got is not None and method == "GET":
        return LfsRoute(remote, False, got.group(1), got.group(2))
    raise Refusal(
        404, "git:lfs-unsupported", "the git gate serves the LFS batch API and its objects only"
    )


class Exchange(NamedTuple):
    """One bottle request's means: its head, its body, a way to answer, and the gate's
    settings for the upstream (pins, CA)."""

    request: http1.RequestHead
    body_event: NextEvent
    send: Send
    git_env: GitEnv


class LfsGate:
    """The LFS actions the gate keeps for the bottle (by ticket), and how it follows them."""

    def __init__(self, record: Recorder) -> None:
        self.record = record
        self._actions: dict[str, tuple[float, Action]] = {}

    async def serve(self, exchange: Exchange, where: LfsRoute) -> None:
        credential = await asyncio.to_thread(resolve_credential, where.remote, os.environ)
        if where.batch:
            await self._batch(exchange, where.remote, credential)
        else:
            await self._object(exchange, where, credential)

    def _keep(self, actions: dict[str, Action]) -> None:
        now = time.monotonic()
        self._actions = {k: v for k, v in self._actions.items() if v[0] > now}
        if len(self._actions) + len(actions) > MAX_ACTIONS:
            raise Refusal(503, "git:lfs-busy", "too many LFS transfers under way; retry later")
        for ticket, action in actions.items():
            self._actions[ticket] = (now + ACTION_TTL, action)

    async def _batch(
        self, exchange: Exchange, remote: GateRemote, credential: Credential | None
    ) -> None:
        base = _gate_base(exchange.request, remote)
        body = await _read_body(exchange, MAX_BATCH)
        batch = parse_request(body)
        parts = urlsplit(remote.url)
        target = (parts.path.rstrip("/") + "/info/lfs/objects/batch").encode()
        host, port = parts.hostname or "", parts.port or 443
        sent = upstream_request(batch)
        headers = [
            (b"accept", MEDIA_TYPE.encode()),
            (b"content-type", MEDIA_TYPE.encode()),
            (b"content-length", b"%d" % len(sent)),
            *_basic(credential),
        ]
        status, answer = await self._call_whole(
            exchange, remote, host, port, b"POST", target, headers, sent
        )
        if status in (401, 403):
            raise Refusal(
                502,
                "git:upstream",
                f"remote {remote.name}: the upstream's LFS API refused the host-side "
                f"credential (HTTP {status})",
                f"fix [git.remotes.{remote.name}] credential in your user config, or the "
                "credential it names, on the host",
            )
        if status != 200:
            raise Refusal(
                502,
                "git:lfs-upstream",
                f"remote {remote.name}: the upstream's LFS API answered HTTP {status}",
            )
        rewritten = rewrite_answer(remote.name, batch, answer, base)
        self._keep(rewritten.actions)
        self.record(
            "git",
            "allow",
            rule="git:lfs-batch",
            method="LFS",
            host=host[:253],
            port=port,
            detail={
                "remote": remote.name,
                "operation": batch.operation,
                "objects": len(batch.objects),
            },
        )
        await exchange.send(
            response(
                200,
                [
                    (b"content-type", MEDIA_TYPE.encode()),
                    (b"content-length", b"%d" % len(rewritten.body)),
                    (b"connection", b"close"),
                ],
                rewritten.body,
            )
        )

    async def _object(
        self, exchange: Exchange, where: LfsRoute, credential: Credential | None
    ) -> None:
        kept = self._actions.get(where.ticket)
        action = kept[1] if kept and kept[0] > time.monotonic() else None
        if action is None or action.remote != where.remote.name or action.oid != where.oid:
            raise Refusal(404, "git:lfs-unknown-object", "no such LFS action (ask the batch API)")
        parts = urlsplit(action.href)
        host, port = parts.hostname or "", parts.port or 443
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = [(n.lower().encode(), v.encode()) for n, v in action.headers]
        remote_parts = urlsplit(where.remote.url)
        if not any(name == b"authorization" for name, _ in headers) and (host, port) == (
            remote_parts.hostname,
            remote_parts.port or 443,
        ):
            headers.extend(_basic(credential))  # the remote's own host: its credential
        reader, writer = await self._open(exchange.git_env, where.remote, host, port)
        try:
            writer.write(
                http1.request_head(b"GET", target.encode(), _with_host(host, port, headers))
            )
            messages = http1.ResponseReader(b"GET", MAX_RESPONSE_HEAD)
            answer = await self._head(where.remote, messages, reader)
            if answer.status != 200:
                raise Refusal(
                    502,
                    "git:lfs-upstream",
                    f"remote {where.remote.name}: the LFS object host answered HTTP "
                    f"{answer.status} for {action.oid}",
                )
            length = [v for n, v in answer.headers if n == b"content-length"]
            head = [(b"content-type", b"application/octet-stream"), (b"connection", b"close")]
            if length and not answer.chunked:
                head.append((b"content-length", length[0]))
            await exchange.send(response(200, head))
            sent = 0
            while True:
                try:
                    event = await pull(messages, reader, READ_TIMEOUT)
                except (OSError, TimeoutError, http1.ProtocolError) as exc:
                    raise ConnectionError(f"the object host broke off ({exc!r:.100})") from None
                if isinstance(event, bytes):
                    sent += len(event)
                    if sent > action.size:
                        raise ConnectionError("the object host sent more than the object")
                    await exchange.send(event)
                elif event is http1.END:
                    break
                else:
                    raise ConnectionError("the object host closed mid-object")
        finally:
            writer.close()
        self.record(
            "git",
            "allow",
            rule="git:lfs-download",
            method="GET",
            host=host[:253],
            port=port,
            detail={"remote": where.remote.name, "oid": action.oid, "size": sent},
        )

    async def _open(
        self, git_env: GitEnv, remote: GateRemote, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        address = (host, port)
        for pin in git_env.pins:
            if pin.host == host:
                address = (pin.address, pin.port or port)
        context = ssl.create_default_context()
        if git_env.ca_file:
            context.load_verify_locations(cafile=git_env.ca_file)
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(*address, ssl=context, server_hostname=host, limit=1 << 20),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise Refusal(
                502,
                "git:lfs-upstream",
                f"remote {remote.name}: {host} could not be reached ({type(exc).__name__})",
            ) from None

    async def _head(
        self, remote: GateRemote, messages: http1.ResponseReader, reader: asyncio.StreamReader
    ) -> http1.ResponseHead:
        try:
            answer = await pull(messages, reader, READ_TIMEOUT)
        except (OSError, TimeoutError, http1.ProtocolError) as exc:
            raise Refusal(
                502,
                "git:lfs-upstream",
                f"remote {remote.name}: no answer from the LFS host ({type(exc).__name__})",
            ) from None
        assert isinstance(answer, http1.ResponseHead)
        return answer

    async def _call_whole(
        self,
        exchange: Exchange,
        remote: GateRemote,
        host: str,
        port: int,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> tuple[int, bytes]:
        """One request whose answer is read whole (at most MAX_ANSWER bytes)."""
        reader, writer = await self._open(exchange.git_env, remote, host, port)
        try:
            writer.write(http1.request_head(method, target, _with_host(host, port, headers)))
            writer.write(body)
            messages = http1.ResponseReader(method, MAX_RESPONSE_HEAD)
            answer = await self._head(remote, messages, reader)
            received = bytearray()
            while True:
                try:
                    event = await pull(messages, reader, READ_TIMEOUT)
                except (OSError, TimeoutError, http1.ProtocolError) as exc:
                    raise Refusal(
                        502,
                        "git:lfs-upstream",
                        f"remote {remote.name}: the LFS answer broke off ({type(exc).__name__})",
                    ) from None
                if isinstance(event, bytes):
                    received += event
                    if len(received) > MAX_ANSWER:
                        raise Refusal(
                            502, "git:lfs-upstream", f"remote {remote.name}: LFS answer too large"
                        )
                elif event is http1.END:
                    return answer.status, bytes(received)
                else:
                    raise Refusal(
                        502, "git:lfs-upstream", f"remote {remote.name}: the LFS answer broke off"
                    )
        finally:
            writer.close()


def _basic(credential: Credential | None) -> list[tuple[bytes, bytes]]:
    if credential is None:
        return []
    pair = f"{credential.username}:{credential.password}".encode()
    return [(b"authorization", b"Basic " + base64.b64encode(pair))]


def _with_host(
    host: str, port: int, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    spelled = host if port == 443 else f"{host}:{port}"
    return [
        (b"host", spelled.encode("idna")),
        (b"user-agent", b"git-lfs/claude-bottle-gate"),
        *headers,
    ]


def _gate_base(request: http1.RequestHead, remote: GateRemote) -> str:
    """Where the bottle reaches the gate, as its git-lfs spelled it (a loopback address:
    the bottle's end of the relay), for the hrefs of the rewritten answer."""
    hosts = [value.decode("ascii", "replace") for name, value in request.headers if name == b"host"]
    if len(hosts) != 1 or not _GATE_HOST.fullmatch(hosts[0]):
        raise Refusal(400, "git:lfs-bad-request", "an LFS request names the gate by its address")
    return f"http://{hosts[0]}/{remote.name}.git/info/lfs/objects"


async def _read_body(exchange: Exchange, limit: int) -> bytes:
    if exchange.request.expects_continue:
        await exchange.send(http1.CONTINUE)
    held = bytearray()
    while True:
        event = await exchange.body_event()
        if isinstance(event, bytes):
            held += event
            if len(held) > limit:
                raise Refusal(
                    413, "git:lfs-too-large", f"an LFS batch request is at most {limit} bytes"
                )
        elif event is http1.END:
            return bytes(held)
        else:
            raise ConnectionError("the bottle's git-lfs went away mid-request")
