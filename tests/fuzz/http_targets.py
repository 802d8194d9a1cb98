"""Fuzz targets for the proxy's HTTP/1 head parser (bundle/http1.py).

Every byte the bottle sends is hostile. Properties: the readers raise nothing but
ProtocolError (with a status a server can answer), whatever the bytes and however they
are split across reads; how the bytes are split does not change what is parsed; an
accepted head keeps its invariants (lower-case names, no CR/LF/NUL anywhere, version 1.0
or 1.1, exactly one Host on 1.1); and an accepted head, written out again the way the
proxy writes it (`request_head`), parses back to the same head: no value can smuggle a
header or a second request past the parser.
"""

from __future__ import annotations

from claude_bottle.bundle.connection import forwarded_headers
from claude_bottle.bundle.http1 import (
    CLOSED,
    END,
    NEED_DATA,
    ProtocolError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    request_head,
    response_head,
)
from tests.fuzz.source import Source

MAX_HEAD = 2048
STATUSES = frozenset({400, 431, 501})
MAX_EVENTS = 10_000  # a bounded drive loop: far more than any input here can produce

Outcome = list[object]


def drive(reader: RequestReader | ResponseReader, chunks: list[bytes]) -> Outcome:
    """Feed `chunks` then end of stream; the events, bodies joined, up to the first error
    (as ("error", status)), CLOSED, or a CONNECT head (its bytes then belong to a tunnel)."""
    out: Outcome = []
    for data in [*chunks, b""]:
        reader.receive(data)
        for _ in range(MAX_EVENTS):
            try:
                event = reader.next_event()
            except ProtocolError as exc:
                assert exc.status in STATUSES, exc.status
                out.append(("error", exc.status))
                return out
            if event is NEED_DATA:
                break
            if isinstance(event, bytes) and out and isinstance(out[-1], bytes):
                out[-1] += event
            else:
                out.append(event)
            if event is CLOSED:
                return out
            if isinstance(event, RequestHead) and event.method == b"CONNECT":
                return out
        else:
            raise AssertionError("a reader produced events without end")
    return out


def split(data: bytes, source: Source) -> list[bytes]:
    """`data` cut at up to six points the source chooses."""
    points = sorted({source.below(len(data) + 1) for _ in range(source.below(7))})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        if point > start:
            pieces.append(data[start:point])
            start = point
    return pieces


def check_head(head: RequestHead | ResponseHead) -> None:
    assert head.http_version in ("1.0", "1.1")
    for name, value in head.headers:
        assert name == name.lower()
        assert name and not any(byte in name for byte in b"\r\n\x00: \t")
        assert not any(byte in value for byte in b"\r\n\x00")
        assert value == value.rstrip(b" \t")
    if isinstance(head, ResponseHead):  # control bytes pass, as llhttp lets them (harmless)
        assert not any(byte in head.reason for byte in b"\r\n")
    if isinstance(head, RequestHead):
        assert head.method and not any(byte in head.method for byte in b"\r\n \x00")
        assert not any(byte in head.target for byte in b"\r\n \x00")
        if head.http_version == "1.1":
            assert sum(1 for name, _ in head.headers if name == b"host") == 1


def without_431(outcome: Outcome) -> bool:
    # The size limit counts a head arriving in pieces by the bytes fed (a slow endless
    # header must not grow a buffer), a whole head by its parsed parts: near the limit
    # the two can differ, by design.
    return ("error", 431) not in outcome


# -- a grammar that mostly writes valid HTTP, with a dash of every trap ------------------

TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
NASTY = b'\r\n\t \x00\x0b\x0c:;,"\\/\x7f\x80\xff@[]?=%'
NAMES = [
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Upgrade",
    b"Expect",
    b"Proxy-Authorization",
    b"Cookie",
    b"Host",
    b"X-A",
    b"X-A",
]
VALUES = [
    b"chunked",
    b"0",
    b"5",
    b"-1",
    b"100-continue",
    b"close",
    b"keep-alive",
    b"h2c",
    b"a.test",
]
METHODS = [b"GET", b"POST", b"HEAD", b"CONNECT", b"PUT", b"OPTIONS", b"DELETE"]
TARGETS = [b"/", b"/x?y=1", b"http://a.test/x", b"a.test:443", b"*", b"[::1]:80"]
VERSIONS = [b"HTTP/1.1"] * 6 + [
    b"HTTP/1.0",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"HTTP/0.9",
    b"HTTP/1.1x",
    b"",
]
LINE_ENDS = [b"\r\n"] * 40 + [b"\n", b"\r", b"\r\n ", b"\r\n\t"]
BODIES = [b"", b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n", b"\r\n", b"5;x=y\r\n"]


def _word(source: Source, common: list[bytes]) -> bytes:
    kind = source.byte()
    if kind < 222:
        return source.pick(common)
    if kind < 238:
        return source.chars(TOKEN, 12, minimum=1)
    if kind < 252:
        return source.chars(TOKEN + NASTY, 16)
    return source.raw(16)


def _end(source: Source) -> bytes:
    return source.pick(LINE_ENDS)


def _headers(source: Source) -> bytes:
    lines = [b"Host: a.test" + _end(source)] if source.chance(230) else []
    for _ in range(source.below(9)):
        separator = b": " if source.chance(230) else source.pick([b":", b" : ", b":\t", b""])
        name, value = _word(source, NAMES), _word(source, VALUES)
        lines.append(name + separator + value + _end(source))
    return b"".join(lines)


def request(source: Source) -> bytes:
    line = (
        _word(source, METHODS)
        + (b" " if source.chance(245) else source.pick([b"  ", b"\t", b""]))
        + _word(source, TARGETS)
        + b" "
        + source.pick(VERSIONS)
    )
    return line + _end(source) + _headers(source) + _end(source) + source.pick(BODIES)


def response(source: Source) -> bytes:
    status = _word(source, [b"200", b"200", b"204", b"100", b"101", b"304", b"404"])
    line = source.pick(VERSIONS) + b" " + status + b" " + _word(source, [b"OK", b""])
    return line + _end(source) + _headers(source) + _end(source) + source.pick(BODIES)


def _stream(source: Source, *, requests: bool) -> bytes:
    if source.chance(24):  # raw bytes now and then: what no grammar thinks of
        return source.raw(512)
    writer = request if requests else response
    return b"".join(writer(source) for _ in range(1 + source.below(3)))


# -- targets -----------------------------------------------------------------------------


def http1_request(data: bytes) -> None:
    source = Source(data)
    stream = _stream(source, requests=True)
    whole = drive(RequestReader(MAX_HEAD), [stream])
    pieces = drive(RequestReader(MAX_HEAD), split(stream, source))
    for event in whole:
        if isinstance(event, RequestHead):
            check_head(event)
    if without_431(whole) and without_431(pieces):
        assert whole == pieces, (whole, pieces)
    if whole and isinstance(whole[0], RequestHead):
        _check_forwarded(whole[0])


def _check_forwarded(head: RequestHead) -> None:
    """The head as the proxy sends it upstream (its own Host, hop-by-hop headers dropped)
    parses there as the same head: nothing in a value becomes a header or a request."""
    if head.method == b"CONNECT":
        return
    headers = [(b"host", b"a.test"), *forwarded_headers(head.headers)]
    again = drive(RequestReader(MAX_HEAD), [request_head(head.method, head.target, headers)])
    assert again and isinstance(again[0], RequestHead), again
    reparsed = again[0]
    assert (reparsed.method, reparsed.target, reparsed.headers, reparsed.chunked) == (
        head.method,
        head.target,
        headers,
        head.chunked,
    )


def http1_response(data: bytes) -> None:
    source = Source(data)
    method = source.pick([b"GET", b"HEAD", b"POST"])
    stream = _stream(source, requests=False)
    whole = drive(ResponseReader(method, MAX_HEAD), [stream])
    pieces = drive(ResponseReader(method, MAX_HEAD), split(stream, source))
    heads = [event for event in whole if isinstance(event, ResponseHead)]
    assert len(heads) <= 1, whole  # one response per reader; interim ones are skipped
    if without_431(whole) and without_431(pieces):
        assert whole == pieces, (whole, pieces)
    if not heads:
        return
    head = heads[0]
    check_head(head)
    assert 200 <= head.status <= 999, head.status
    if method == b"HEAD":
        assert whole[whole.index(head) + 1 :] == [END], whole
    again = drive(
        ResponseReader(method, MAX_HEAD), [response_head(head.status, head.reason, head.headers)]
    )
    assert again and isinstance(again[0], ResponseHead), again
    assert (again[0].status, again[0].reason, again[0].headers) == (
        head.status,
        head.reason,
        head.headers,
    )
