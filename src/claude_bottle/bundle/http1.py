"""HTTP/1.1 messages for the egress proxy, without I/O.

llhttp (Node's parser, through httptools) parses and de-frames what arrives; the
small writers at the end frame what leaves. Readers turn bytes into a queue of
events, one message after another: a head, body pieces (`bytes`), then `END`.
The caller feeds bytes with `receive` (b"" for end of stream) and pulls events
with `next_event` until it gets `NEED_DATA`, as with h11, but at a fraction of
h11's cost per exchange (llhttp is C; h11's state machine was a third of the
proxy's CPU per request).

llhttp is strict by default: both Content-Length and Transfer-Encoding, a
duplicate Content-Length, bare LF, obs-fold and bad bytes in names or values are
all errors. On top of it we refuse what h11 refused and we do not serve: a
transfer coding other than plain `chunked`, an HTTP version other than 1.0 and
1.1, a 1.1 request without exactly one Host, and heads over `max_head` bytes
(checked even while a head is still arriving, so a slow endless header cannot
grow a buffer). Trailers are dropped in both directions: the DLP scanner never
sees them, so a request must not carry them past it.

A body framed by Content-Length goes around llhttp once its head is parsed: the
reader counts the remaining bytes itself and passes each read on as one body piece
(the very object it was given, when the read is all body), where llhttp would copy
it into new objects a callback at a time. What follows the body goes to a fresh
parser (the next pipelined request), or makes a response's connection unusable, as
llhttp would have it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Final

import httptools


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Marker("NEED_DATA")
END: Final = _Marker("END")  # the current message is complete
CLOSED: Final = _Marker("CLOSED")  # the peer closed cleanly between messages

NO_BODY_STATUSES = frozenset({204, 304})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; `status` is what a server should answer."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased, in order
    http_version: str
    keep_alive: bool  # the client may send another request on this connection
    chunked: bool
    expects_continue: bool


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: str
    chunked: bool
    has_body: bool
    until_close: bool  # no length given: the body ends when the server closes


Event = RequestHead | ResponseHead | bytes | _Marker


class _HeadEnds(Exception):
    """Raised from a callback to stop llhttp after a head that has no body (HEAD)."""


class _Reader(ABC):
    """What requests and responses share: the event queue, head bookkeeping, limits."""

    def __init__(self, max_head: int) -> None:
        self.max_head = max_head
        self._events: deque[Event | ProtocolError] = deque()
        self._headers: list[tuple[bytes, bytes]] = []
        self._first_line = bytearray()  # the URL or the reason phrase, in pieces
        self._head_bytes = 0  # counted from the parser's callbacks
        self._drip_bytes = 0  # fed while one head was arriving across reads
        self._in_head = False
        self._head_began = False  # during the current feed
        self._in_body = False
        self._failed = False
        self._eof = False
        # Bytes of a Content-Length body still to come (None: no such body is arriving).
        self._body_left: int | None = None

    # -- llhttp callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_began = True
        self._headers = []
        self._first_line.clear()
        self._head_bytes = 0
        self._drip_bytes = 0

    def _grow_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head:
            raise ProtocolError(f"message head over {self.max_head} bytes", 431)

    def _first_line_piece(self, piece: bytes) -> None:
        """A piece of the request target or the reason phrase (llhttp may split them)."""
        self._grow_head(len(piece))
        self._first_line += piece

    def _end_head(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser) -> str:
        """The head is in: leave head state; its HTTP version, which must be 1.0 or 1.1."""
        self._in_head = False
        version = parser.get_http_version()
        _check_version(version)
        return version

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow_head(len(name) + len(value) + 4)
        if self._in_head:  # after the body they are trailers, which we drop
            self._headers.append((name.lower(), value.rstrip(b" \t")))

    def on_body(self, body: bytes) -> None:
        if self._body_left is not None:
            self._body_left -= len(body)
        self._events.append(body)

    def _length_framed(self, headers: list[tuple[bytes, bytes]]) -> None:
        """The message just headed has a body of its Content-Length (llhttp checked that
        there is exactly one, all digits): count it from here."""
        values = _header_values(headers, b"content-length")
        self._body_left = int(values[0].strip()) if values else None

    # -- feeding and pulling -------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the peer; b"" means it closed its side."""
        if self._failed or self._eof:
            return
        if not data:
            self._eof = True
            self._end_of_stream()
            return
        if self._body_left:  # the rest of a Content-Length body: llhttp is not needed
            self._pass_body(data)
            return
        continuing_head = self._in_head
        self._head_began = False
        self._feed(data)
        # Every byte of this feed belongs to the head still arriving only if that head
        # began before it (llhttp holds a partial header where we cannot count it).
        if continuing_head and self._in_head and not self._head_began and not self._failed:
            self._drip_bytes += len(data)
            if self._drip_bytes > self.max_head:
                self._fail(ProtocolError(f"message head over {self.max_head} bytes", 431))

    def _pass_body(self, data: bytes) -> None:
        assert self._body_left
        take = min(len(data), self._body_left)
        self._events.append(data if take == len(data) else data[:take])
        self._body_left -= take
        if self._body_left:
            return
        # llhttp still waits for the bytes it never saw: the message ends here, and
        # whatever follows is parsed afresh (or refused) by `_body_passed`.
        self._body_left = None
        self._in_body = False
        self._body_passed()
        if take < len(data):
            self.receive(data[take:])

    def next_event(self) -> Event:
        if not self._events:
            return NEED_DATA
        event = self._events.popleft()
        if isinstance(event, ProtocolError):
            raise event
        return event

    def _fail(self, error: ProtocolError) -> None:
        self._failed = True
        self._events.append(error)

    def _callback_error(self, exc: httptools.HttpParserError) -> ProtocolError:
        cause = exc.__context__
        if isinstance(cause, ProtocolError):
            return cause
        return ProtocolError(str(exc) or type(exc).__name__)

    @abstractmethod
    def _feed(self, data: bytes) -> None: ...

    @abstractmethod
    def _body_passed(self) -> None:
        """A Content-Length body went around llhttp and has ended: end the message."""

    @abstractmethod
    def _end_of_stream(self) -> None: ...


def _header_values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


def _has_length(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        value.strip() not in (b"", b"0") for value in _header_values(headers, b"content-length")
    )


def _check_transfer_coding(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the body is chunked; any other transfer coding is refused."""
    codings = _header_values(headers, b"transfer-encoding")
    if not codings:
        return False
    if len(codings) != 1 or codings[0].strip().lower() != b"chunked":
        raise ProtocolError("unsupported Transfer-Encoding (only chunked)", 501)
    return True


def _check_version(version: str) -> None:
    if version not in ("1.1", "1.0"):
        raise ProtocolError(f"unsupported HTTP version {version[:8]}")


class RequestReader(_Reader):
    """Requests from one client connection, pipelined or not.

    After a CONNECT the reader stops: the bytes that came with it are in `trailing`,
    and belong to the tunnel, not to HTTP; anything fed later is an error.
    """

    def __init__(self, max_head: int) -> None:
        super().__init__(max_head)
        self._parser = httptools.HttpRequestParser(self)
        self.trailing = b""
        self._stopped = False
        self._method = b""
        self._keep_alive = True  # the current request's: False refuses what follows it
        self._after_close = False  # a passed body ended a request that closes the connection

    def on_url(self, url: bytes) -> None:
        self._first_line_piece(url)

    def on_headers_complete(self) -> None:
        parser, headers = self._parser, self._headers
        version = self._end_head(parser)
        if version == "1.1" and len(_header_values(headers, b"host")) != 1:
            raise ProtocolError("an HTTP/1.1 request needs exactly one Host header")
        chunked = _check_transfer_coding(headers)
        method = self._method = parser.get_method()
        if parser.should_upgrade() and method != b"CONNECT" and (chunked or _has_length(headers)):
            # llhttp would take the body for the upgraded protocol's bytes; we forward
            # no upgrade, so they would reach the server unframed.
            raise ProtocolError("an Upgrade request cannot carry a body")
        expect = _header_values(headers, b"expect")
        self._keep_alive = parser.should_keep_alive()
        if method != b"CONNECT" and not chunked:
            self._length_framed(headers)
        self._events.append(
            RequestHead(
                method=method,
                target=bytes(self._first_line),
                headers=headers,
                http_version=version,
                keep_alive=version == "1.1" and parser.should_keep_alive(),
                chunked=chunked,
                expects_continue=version == "1.1"
                and any(v.lower() == b"100-continue" for v in expect),
            )
        )
        self._in_body = True

    def on_message_complete(self) -> None:
        self._in_body = False
        self._body_left = None
        self._events.append(END)

    def _body_passed(self) -> None:
        self._events.append(END)
        self._parser = httptools.HttpRequestParser(self)
        # llhttp refuses a request after one that closes the connection; so do we.
        self._after_close = not self._keep_alive

    def _feed(self, data: bytes) -> None:
        if self._stopped:  # whoever took the tunnel reads its bytes itself
            self._fail(ProtocolError("bytes after a CONNECT are not HTTP"))
            return
        if self._after_close:
            self._fail(ProtocolError("a request after one that closes the connection"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            if self._method == b"CONNECT":
                self._stopped = True
                self.trailing = rest
                return
            # An Upgrade request: we forward it without the Upgrade header, so HTTP
            # goes on after it, on a fresh parser.
            self._parser = httptools.HttpRequestParser(self)
            if rest:
                self._feed(rest)
        except httptools.HttpParserCallbackError as exc:
            self._fail(self._callback_error(exc))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(str(exc) or "malformed request"))

    def _end_of_stream(self) -> None:
        if self._in_head or self._in_body:
            self._fail(ProtocolError("the client closed in the middle of a request"))
        else:
            self._events.append(CLOSED)


class ResponseReader(_Reader):
    """The one response to a request sent with `method`; interim (1xx) responses are
    skipped. `reusable` says, once it has ended, whether the connection may carry
    another request."""

    def __init__(self, method: bytes, max_head: int) -> None:
        super().__init__(max_head)
        self._parser = httptools.HttpResponseParser(self)
        self.method = method
        self._interim = False
        self._done = False
        self._until_close = False
        self._keep_alive = False  # the response's, known at its head
        self.reusable = False

    def on_message_begin(self) -> None:
        if self._done:  # bytes after the response: the connection is not reused
            self.reusable = False
            raise _HeadEnds
        super().on_message_begin()

    def on_status(self, reason: bytes) -> None:
        self._first_line_piece(reason)

    def on_headers_complete(self) -> None:
        parser, headers = self._parser, self._headers
        version = self._end_head(parser)
        status = parser.get_status_code()
        if status == 101:
            raise ProtocolError("the server switched protocols, which we never asked for")
        if 100 <= status < 200:
            self._interim = True
            return
        chunked = _check_transfer_coding(headers)
        has_body = self.method != b"HEAD" and status not in NO_BODY_STATUSES
        self._until_close = (
            has_body and not chunked and not _header_values(headers, b"content-length")
        )
        self._events.append(
            ResponseHead(
                status=status,
                reason=bytes(self._first_line),
                headers=headers,
                http_version=version,
                chunked=chunked,
                has_body=has_body,
                until_close=self._until_close,
            )
        )
        self._in_body = True
        self._keep_alive = parser.should_keep_alive()
        if has_body and not chunked and not self._until_close:
            self._length_framed(headers)
        if self.method == b"HEAD":
            # llhttp would wait for the Content-Length bytes a HEAD response never
            # sends; we end the message here and do not reuse the connection.
            self._finish(reusable=False)
            raise _HeadEnds

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self._done:
            self._finish(reusable=self._parser.should_keep_alive() and not self._until_close)

    def _body_passed(self) -> None:
        self._finish(reusable=self._keep_alive)

    def _finish(self, *, reusable: bool) -> None:
        self._in_body = False
        self._body_left = None
        self._done = True
        self.reusable = reusable
        self._events.append(END)

    def _feed(self, data: bytes) -> None:
        if self._done:
            self.reusable = False
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HeadEnds):
                self._fail(self._callback_error(exc))
        except httptools.HttpParserError as exc:
            if self._done:
                self.reusable = False  # garbage after a whole response
            else:
                self._fail(ProtocolError(str(exc) or "malformed response"))
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the server switched protocols, which we never asked for"))

    def _end_of_stream(self) -> None:
        if self._done:
            self.reusable = False
        elif self._in_body and self._until_close:
            self._finish(reusable=False)
        elif self._in_head or self._in_body:
            self._fail(ProtocolError("the server closed in the middle of a response"))
        else:
            self._events.append(CLOSED)


# -- framing what leaves ------------------------------------------------------


def _head(first_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join([first_line, *(b"%s: %s\r\n" % pair for pair in headers), b"\r\n"])


def request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return _head(b"%s %s HTTP/1.1\r\n" % (method, target), headers)


def response_head(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return _head(b"HTTP/1.1 %d %s\r\n" % (status, reason), headers)


def relay_head(
    request: RequestHead, response: ResponseHead, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, bool, bool]:
    """How `response` to `request` goes on to the client, with `headers` (hop-by-hop
    ones already dropped, `transfer-encoding: chunked` kept when the response had it):
    the head to send, whether the body goes out chunked, and whether the client's
    connection may carry another request afterwards."""
    keep_client = request.keep_alive
    chunk_out = False
    if response.has_body and (response.chunked or response.until_close):
        if request.http_version == "1.1":
            chunk_out = True
            if not response.chunked:
                headers = [*headers, (b"transfer-encoding", b"chunked")]
        else:
            # An HTTP/1.0 client knows no chunks: the body ends when we close.
            headers = [(n, v) for n, v in headers if n != b"transfer-encoding"]
            keep_client = False
    if not keep_client:
        headers = [*headers, (b"connection", b"close")]
    return response_head(response.status, response.reason, headers), chunk_out, keep_client


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def frame(data: bytes, chunked: bool) -> bytes:
    """Body bytes as they go on the wire: a chunk of a chunked body (nothing for no bytes:
    an empty chunk would end the body), else as they are."""
    if not chunked:
        return data
    return chunk(data) if data else b""


def end_of_body(chunked: bool) -> bytes:
    """What ends a body on the wire: the last chunk, or nothing for a body framed by its
    length or by the connection closing."""
    return LAST_CHUNK if chunked else b""
