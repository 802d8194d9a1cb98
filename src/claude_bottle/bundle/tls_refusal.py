"""Refusals the agent can read: a refused HTTPS host answered inside TLS.

Clients never show the body of a refused CONNECT (curl says `CONNECT tunnel failed,
response 403`, exit 56), so the rule and the `claude-bottle allow` hint would be lost.
For a host the bundle would intercept, it instead completes the TLS handshake itself,
with a leaf from the bottle's own CA (which only the bottle trusts; no byte goes
upstream, nothing is resolved or dialled), reads the first request head and answers it
with the 403, the rule and the hint, then closes. curl, pip, npm, git and WebFetch show
that answer. A client that asks for JSON (npm) gets the same line as `{"error": …}`: npm
shows a 403's `error` field and nothing else of its body.

Not for hosts that are not intercepted (interception off, or `intercept_exclude`: clients
that pin certificates) nor for ports other than 443, nor for refusals that are not a
policy's `403` (a bad request, an error): those keep the plain CONNECT refusal. Whatever
goes wrong here (the client does not speak TLS, or pins, or stalls) only closes the
connection: the refusal was recorded before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import TYPE_CHECKING

from claude_bottle.bundle import http1
from claude_bottle.bundle.connection import HEADER_TIMEOUT, MAX_HEADER_BYTES, pull, response
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.tunnel import reading_transport
from claude_bottle.policy.allowlist import HostError, normalize_host
from claude_bottle.policy.netguard import parse_ip_literal

if TYPE_CHECKING:  # cryptography is imported only when interception is on
    from claude_bottle.bundle.interception import Interception

TLS_PORT = 443
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def answerable(interception: Interception | None, host: str, port: int, refusal: Refusal) -> bool:
    """Whether this refused CONNECT is answered inside TLS rather than with a plain 403."""
    if interception is None or port != TLS_PORT or refusal.status != 403:
        return False
    try:
        name = normalize_host(host)
    except HostError:
        return False
    return parse_ip_literal(name) is None and interception.applies_to(name)


def refusal_response(status: int, rule: str, body: bytes, accept: bytes = b"") -> bytes:
    """The refusal as a whole response: `body` as text, or as JSON's `error` when the
    client's Accept header asks for JSON."""
    content_type = b"text/plain; charset=utf-8"
    if b"json" in accept.lower():
        content_type = b"application/json"
        message = body.decode("utf-8", "replace").strip()
        body = json.dumps({"error": message, "rule": rule}).encode() + b"\n"
    return response(
        status,
        [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"x-claude-bottle-block", rule.encode("ascii", "replace")),
            (b"connection", b"close"),
        ],
        body,
    )


async def answer_inside_tls(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    interception: Interception,
    host: str,
    refusal: Refusal,
    body: bytes,
) -> None:
    """Accept the CONNECT, be the TLS server for `host`, and answer its first request
    with `refusal` and its `body`. The caller has checked `answerable`."""
    with contextlib.suppress(
        OSError, ssl.SSLError, TimeoutError, ConnectionError, http1.ProtocolError
    ):
        context = await asyncio.get_running_loop().run_in_executor(
            None, interception.authority.server_context, normalize_host(host)
        )
        # As for an intercepted tunnel: the ClientHello may follow our 200 at once and
        # must reach the TLS layer, not the plain-text reader.
        reading_transport(writer).pause_reading()
        writer.write(ESTABLISHED)
        async with asyncio.timeout(HEADER_TIMEOUT):
            await writer.start_tls(context)
        requests = http1.RequestReader(MAX_HEADER_BYTES)
        head = await pull(requests, reader, HEADER_TIMEOUT)
        if isinstance(head, http1.RequestHead):
            accept = b",".join(value for name, value in head.headers if name == b"accept")
            writer.write(refusal_response(refusal.status, refusal.rule, body, accept))
            async with asyncio.timeout(HEADER_TIMEOUT):
                await writer.drain()
