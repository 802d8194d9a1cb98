"""asyncio streams over TLS whose decrypted bytes are copied once, not three times.

The event loop's TLS protocol (uvloop's, as asyncio's) hands a plain stream protocol
each decrypted record as a new object and joins them (two copies before the stream
buffer's own); a *buffered* protocol instead gets the plaintext decrypted straight into
its buffer. `_Decrypted` is that buffer in front of an ordinary `StreamReaderProtocol`:
reads land in one buffer all connections share (the loop has one thread, and each read
is emptied into its stream at once), so a connection holds no more memory than before.
`start_tls` (the server side of an intercepted CONNECT) and `open_connection` (to an
upstream, over TLS or not) give the usual stream pair, its reader the
`connection.StreamReader` whose reads copy once.
"""

from __future__ import annotations

import asyncio
import ssl

from claude_bottle.bundle.connection import READ_SIZE, StreamReader

_DECRYPTED = bytearray(READ_SIZE)  # shared: emptied into the stream as each read ends


class _Decrypted(asyncio.BufferedProtocol):
    """Takes decrypted bytes into the shared buffer and feeds them to `stream`; every
    other event is the stream protocol's own."""

    def __init__(self, stream: asyncio.StreamReaderProtocol) -> None:
        self.stream = stream
        self.view = memoryview(_DECRYPTED)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stream.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self.stream.pause_writing()

    def resume_writing(self) -> None:
        self.stream.resume_writing()

    def eof_received(self) -> bool | None:
        return self.stream.eof_received()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        # StreamReader.feed_data extends its bytearray: a view is as good as bytes.
        self.stream.data_received(self.view[:nbytes])  # type: ignore[arg-type]


async def start_tls(writer: asyncio.StreamWriter, context: ssl.SSLContext) -> None:
    """`writer.start_tls(context)` as the server side, over `_Decrypted`.

    What asyncio's own does, with the buffered protocol in the TLS layer's hands; the
    stream's protocol stays the writer's (its drain and close waiters are unchanged).
    """
    protocol: asyncio.StreamReaderProtocol = writer._protocol  # type: ignore[attr-defined]
    await writer.drain()
    loop = asyncio.get_running_loop()
    transport = await loop.start_tls(
        writer.transport, _Decrypted(protocol), context, server_side=True
    )
    writer._transport = transport  # type: ignore[attr-defined]
    protocol._replace_writer(writer)  # type: ignore[attr-defined]


async def open_connection(
    host: str,
    port: int,
    *,
    limit: int,
    ssl: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_connection`, over `_Decrypted` with `ssl`, with `StreamReader`."""
    loop = asyncio.get_running_loop()
    reader = StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(
        (lambda: _Decrypted(protocol)) if ssl else (lambda: protocol),
        host,
        port,
        ssl=ssl,
        server_hostname=server_hostname,
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
