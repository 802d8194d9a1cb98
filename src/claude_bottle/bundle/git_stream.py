"""Fetches of an https remote, relayed to the upstream as they come.

A clone or fetch through the gate used to fill the gate's mirror from the upstream first
and then serve it: a first clone cost two clones. For an https remote the gate now relays
git's smart-HTTP fetch exchanges (`info/refs?service=git-upload-pack` and
`POST git-upload-pack`, protocol v0 or v2) to the upstream's own upload-pack, with the
host-side credential, streaming both ways; the mirror, which pushes need, is brought up to
date after the fetch, in the background (`GitGate.warm_later`).

What the bottle controls is only the body of a fetch request (pkt-lines git's upload-pack
parses; read-only by nature) and three checked headers (`Git-Protocol`, gzip
`Content-Encoding`, `Accept`). The method, the path (the configured URL's, plus the one
service), the host, the port, TLS and the credential are the gate's. The upstream's answer
must be a 200 of git's own content type; anything else is a `Refusal` naming the remote.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from claude_bottle.bundle import http1
from claude_bottle.bundle.connection import pull, response
from claude_bottle.bundle.refusal import Refusal

if TYPE_CHECKING:
    from claude_bottle.bundle.git_policy import GateRemote, Route
    from claude_bottle.bundle.git_upstream import Credential, GitEnv

CONNECT_TIMEOUT = 30.0
UPSTREAM_READ_TIMEOUT = 300.0  # a big repository's pack can take a while to start
MAX_RESPONSE_HEAD = 64 * 1024
_GIT_PROTOCOL = re.compile(rb"[A-Za-z0-9=:.,_-]{1,256}")
_ACCEPT = re.compile(rb"[A-Za-z0-9*/.,;=+ -]{1,256}")
Send = Callable[[bytes], Awaitable[None]]
# The bottle's request body, one event at a time at the connection's pace (`body_event`).
NextEvent = Callable[[], Awaitable[http1.Event]]


def served_upstream(remote: GateRemote) -> bool:
    """Whether fetches of `remote` are relayed (https); ssh remotes are served from the
    mirror."""
    return remote.url.startswith("https://")


def _context(git_env: GitEnv) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if git_env.ca_file:
        context.load_verify_locations(cafile=git_env.ca_file)
    return context


def _upstream_request(
    request: http1.RequestHead, where: Route, credential: Credential | None
) -> tuple[str, int, bytes]:
    """(host, port, the request head for the upstream)."""
    parts = urlsplit(where.remote.url)
    host, port = parts.hostname or "", parts.port or 443
    path = parts.path.rstrip("/") or "/"
    target = (
        f"{path}/info/refs?service=git-upload-pack"
        if where.advertise
        else f"{path}/git-upload-pack"
    )
    host_header = host if port == 443 else f"{host}:{port}"
    headers = [(b"host", host_header.encode("idna")), (b"user-agent", b"git/claude-bottle-gate")]
    if credential is not None:
        pair = f"{credential.username}:{credential.password}".encode()
        headers.append((b"authorization", b"Basic " + base64.b64encode(pair)))
    for name, value in request.headers:
        if (name == b"git-protocol" and _GIT_PROTOCOL.fullmatch(value)) or (
            name == b"accept" and _ACCEPT.fullmatch(value)
        ):
            headers.append((name, value))
    if request.method == b"POST":
        headers.append((b"content-type", b"application/x-git-upload-pack-request"))
        for name, value in request.headers:
            if name == b"content-encoding" and value in (b"gzip", b"x-gzip"):
                headers.append((name, value))
        headers.append((b"transfer-encoding", b"chunked"))
    return host, port, http1.request_head(request.method, target.encode(), headers)


async def relay_fetch(
    request: http1.RequestHead,
    where: Route,
    credential: Credential | None,
    git_env: GitEnv,
    client_event: NextEvent,
    send: Send,
    max_request: int,
) -> None:
    """One fetch exchange, relayed: the request body up, the upstream's answer down.

    Raises `Refusal` (nothing sent to the bottle yet) when the upstream cannot be reached
    or answers anything but git's 200; a failure once the answer is flowing ends the
    connection (the bottle's git reports a cut-off pack)."""
    remote = where.remote
    host, port, head = _upstream_request(request, where, credential)
    address = (host, port)
    for pin in git_env.pins:
        if pin.host == host:
            address = (pin.address, pin.port or port)
    hint = f"check the upstream and [git.remotes.{remote.name}] credential on the host"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                *address, ssl=_context(git_env), server_hostname=host, limit=1 << 20
            ),
            CONNECT_TIMEOUT,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise Refusal(
            502,
            "git:upstream",
            f"remote {remote.name}: the upstream could not be reached ({type(exc).__name__})",
            hint,
        ) from None
    try:
        writer.write(head)
        if request.method == b"POST":
            if request.expects_continue:
                await send(http1.CONTINUE)
            await _send_body(client_event, writer, max_request)
        messages = http1.ResponseReader(request.method, MAX_RESPONSE_HEAD)
        try:
            answer = await pull(messages, reader, UPSTREAM_READ_TIMEOUT)
        except (OSError, TimeoutError, http1.ProtocolError) as exc:
            raise Refusal(
                502,
                "git:upstream",
                f"remote {remote.name}: the upstream gave no answer ({type(exc).__name__})",
                hint,
            ) from None
        assert isinstance(answer, http1.ResponseHead)
        _check_answer(answer, where, remote)
        kind = b"advertisement" if where.advertise else b"result"
        await send(
            response(
                200,
                [
                    (b"content-type", b"application/x-git-upload-pack-" + kind),
                    (b"cache-control", b"no-cache"),
                    (b"connection", b"close"),
                ],
            )
        )
        while True:
            try:
                event = await pull(messages, reader, UPSTREAM_READ_TIMEOUT)
            except (OSError, TimeoutError, http1.ProtocolError) as exc:
                # the answer is under way: all that is left is to cut it off
                raise ConnectionError(f"the upstream's answer broke off ({exc!r:.100})") from None
            if isinstance(event, bytes):
                await send(event)
            elif event is http1.END:
                return
            else:
                raise ConnectionError("the upstream closed in the middle of its answer")
    finally:
        writer.close()


async def _send_body(client_event: NextEvent, writer: asyncio.StreamWriter, limit: int) -> None:
    total = 0
    while True:
        event = await client_event()
        if isinstance(event, bytes):
            total += len(event)
            if total > limit:
                raise Refusal(
                    413,
                    "git:too-large",
                    f"a request to the git gate may carry at most {limit} bytes",
                )
            writer.write(http1.frame(event, True))
            await writer.drain()
        elif event is http1.END:
            writer.write(http1.end_of_body(True))
            await writer.drain()
            return
        else:
            raise ConnectionError("the bottle's git went away mid-request")


def _check_answer(answer: http1.ResponseHead, where: Route, remote: GateRemote) -> None:
    status = answer.status
    if status in (401, 403):
        raise Refusal(
            502,
            "git:upstream",
            f"remote {remote.name}: the upstream refused the host-side credential (HTTP {status})",
            f"fix [git.remotes.{remote.name}] credential in your user config, or the "
            "credential it names, on the host",
        )
    expected = b"application/x-git-upload-pack-" + (
        b"advertisement" if where.advertise else b"result"
    )
    content_type = b"".join(value for name, value in answer.headers if name == b"content-type")
    if status != 200 or content_type.split(b";")[0].strip() != expected:
        raise Refusal(
            502,
            "git:upstream",
            f"remote {remote.name}: the upstream answered HTTP {status}, not git's smart HTTP",
            f"check [git.remotes.{remote.name}] url on the host",
        )
