"""HTTP/1.1 parsing and framing for the proxy, without sockets."""

from __future__ import annotations

import itertools
import random

import pytest

from claude_bottle.bundle import http1
from claude_bottle.bundle.http1 import (
    CLOSED,
    END,
    NEED_DATA,
    ProtocolError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
)

MAX_HEAD = 4096


def drain(reader: RequestReader | ResponseReader) -> list[object]:
    """Every event the reader has, bodies joined per message, up to NEED_DATA or an error
    (recorded as ("error", status))."""
    out: list[object] = []
    while True:
        try:
            event = reader.next_event()
        except ProtocolError as exc:
            out.append(("error", exc.status))
            return out
        if event is NEED_DATA:
            return out
        if isinstance(event, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += event
        else:
            out.append(event)


def requests(data: bytes, *pieces: int) -> list[object]:
    """Events for `data` fed whole, or cut at the offsets in `pieces`."""
    reader = RequestReader(MAX_HEAD)
    cuts = [0, *pieces, len(data)]
    for start, stop in itertools.pairwise(cuts):
        reader.receive(data[start:stop])
    return drain(reader)


def response(data: bytes, method: bytes = b"GET", eof: bool = False) -> tuple[list[object], bool]:
    reader = ResponseReader(method, MAX_HEAD)
    reader.receive(data)
    if eof:
        reader.receive(b"")
    return drain(reader), reader.reusable


GET = b"GET http://a.test/x?y=1 HTTP/1.1\r\nHost: a.test\r\nX-Thing:  v a l  \r\n\r\n"


def test_a_request_head_is_parsed_with_lower_case_names_and_trimmed_values() -> None:
    head, end = requests(GET)
    assert head == RequestHead(
        method=b"GET",
        target=b"http://a.test/x?y=1",
        headers=[(b"host", b"a.test"), (b"x-thing", b"v a l")],
        http_version="1.1",
        keep_alive=True,
        chunked=False,
        expects_continue=False,
    )
    assert end is END


def test_pipelined_requests_come_out_one_after_the_other() -> None:
    post = b"POST http://a.test/p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello"
    events = requests(GET + post + GET)
    assert [type(e).__name__ if e not in (END,) else "END" for e in events] == [
        "RequestHead", "END", "RequestHead", "bytes", "END", "RequestHead", "END",
    ]  # fmt: skip
    assert events[3] == b"hello"


def test_a_request_cut_anywhere_parses_the_same() -> None:
    data = (
        b"POST http://a.test/p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" + GET
    )
    whole = requests(data)
    assert whole[1] == b"hello world"
    for cut in range(1, len(data)):
        assert requests(data, cut) == whole, cut
    assert requests(data, *range(1, len(data))) == whole  # one byte at a time


def test_trailers_are_dropped() -> None:
    data = (
        b"POST http://a.test/p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Secret: sk-live-123\r\n\r\n"
    )
    head, body, end = requests(data)
    assert isinstance(head, RequestHead) and head.chunked
    assert head.headers == [(b"host", b"a.test"), (b"transfer-encoding", b"chunked")]
    assert (body, end) == (b"abc", END)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # smuggling: two framings, or two lengths
        (b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"Content-Length: -1\r\n\r\n", 400),
        (b"X: a\r\n folded\r\n\r\n", 400),
        (b"X : a\r\n\r\n", 400),
        (b"X: a\x00b\r\n\r\n", 400),
        (b"Connection: upgrade\r\nUpgrade: x\r\nContent-Length: 3\r\n\r\nabc", 400),
    ],
)
def test_ambiguous_or_malformed_requests_are_refused(data: bytes, status: int) -> None:
    events = requests(b"POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\n" + data)
    assert events[-1] == ("error", status)
    assert not any(isinstance(e, RequestHead) for e in events)


@pytest.mark.parametrize(
    "data",
    [
        b"GET http://a.test/ HTTP/1.1\r\n\r\n",  # no Host
        b"GET http://a.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET http://a.test/ HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET http://a.test/ HTTP/1.1\nHost: a\n\n",  # bare LF
        b"GET http://a.test/\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT \r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ],
)
def test_bad_request_lines_and_hosts_are_400(data: bytes) -> None:
    assert requests(data) == [("error", 400)]


def test_http_1_0_needs_no_host_and_never_keeps_alive() -> None:
    head, end = requests(b"GET http://a.test/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert isinstance(head, RequestHead) and end is END
    assert (head.http_version, head.keep_alive) == ("1.0", False)


def test_connection_close_and_expect_continue_are_reported() -> None:
    (head, _) = requests(
        b"PUT http://a.test/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        b"Expect: 100-continue\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(head, RequestHead)
    assert (head.keep_alive, head.expects_continue) == (False, True)


def test_a_head_over_the_limit_is_431_whether_it_comes_at_once_or_drips() -> None:
    big = b"GET http://a.test/ HTTP/1.1\r\nHost: a\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n"
    assert requests(big) == [("error", 431)]
    # A value that never ends: refused once the bytes fed to it pass the limit, so the
    # parser's buffer never holds much more than the limit plus one read.
    reader = RequestReader(MAX_HEAD)
    reader.receive(b"GET http://a.test/ HTTP/1.1\r\nHost: a\r\nX: ")
    fed = 0
    with pytest.raises(ProtocolError) as caught:
        while fed < 10 * MAX_HEAD:
            assert reader.next_event() is NEED_DATA
            reader.receive(b"a" * 100)
            fed += 100
    assert caught.value.status == 431
    assert MAX_HEAD <= fed <= MAX_HEAD + 200


def test_many_small_requests_are_not_counted_as_one_big_head() -> None:
    data = GET * (3 * MAX_HEAD // len(GET))
    reader = RequestReader(MAX_HEAD)
    for start in range(0, len(data), 7):  # heads split across reads
        reader.receive(data[start : start + 7])
    events = drain(reader)
    assert events.count(END) == 3 * MAX_HEAD // len(GET)


def test_a_big_body_between_two_split_heads_is_not_counted_as_head() -> None:
    post = b"POST http://a.test/p HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n"
    body = b"b" * (3 * MAX_HEAD)
    reader = RequestReader(MAX_HEAD)
    reader.receive(post[:20])  # the first head arrives in two reads...
    reader.receive(post[20:] % len(body) + body + GET[:20])  # ...the next starts in the same
    reader.receive(GET[20:])
    first, got, end, second, second_end = drain(reader)
    assert isinstance(first, RequestHead) and (got, end, second_end) == (body, END, END)
    assert isinstance(second, RequestHead) and second.target == b"http://a.test/x?y=1"


def test_connect_stops_parsing_and_keeps_what_followed_for_the_tunnel() -> None:
    reader = RequestReader(MAX_HEAD)
    reader.receive(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n\x16\x03\x01junk")
    assert reader.trailing == b"\x16\x03\x01junk"
    reader.receive(b"GET / HTTP/1.1\r\n\r\n")  # tunnel bytes, never parsed as a request
    head, end, error = drain(reader)
    assert isinstance(head, RequestHead) and head.method == b"CONNECT"
    assert head.target == b"a.test:443" and end is END
    assert error == ("error", 400)
    assert reader.trailing == b"\x16\x03\x01junk"


def test_an_upgrade_request_is_a_plain_request_and_parsing_goes_on_after_it() -> None:
    upgrade = (
        b"GET http://a.test/ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n"
    )
    events = requests(upgrade + GET)
    assert [e is END for e in events] == [False, True, False, True]
    assert isinstance(events[2], RequestHead) and events[2].target == b"http://a.test/x?y=1"


def test_end_of_stream_between_requests_is_closed_and_inside_one_is_an_error() -> None:
    reader = RequestReader(MAX_HEAD)
    reader.receive(GET)
    reader.receive(b"")
    assert drain(reader)[1:] == [END, CLOSED]
    reader = RequestReader(MAX_HEAD)
    reader.receive(b"POST http://a.test/ HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc")
    reader.receive(b"")
    assert drain(reader)[1:] == [b"abc", ("error", 400)]


# -- responses ------------------------------------------------------------------


def test_a_response_with_a_length_is_reusable() -> None:
    (head, body, end), reusable = response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello"
    )
    assert head == ResponseHead(
        status=200,
        reason=b"OK",
        headers=[(b"content-length", b"5"), (b"server", b"x")],
        http_version="1.1",
        chunked=False,
        has_body=True,
        until_close=False,
    )
    assert (body, end, reusable) == (b"hello", END, True)


def test_a_chunked_response_is_decoded() -> None:
    (head, body, end), reusable = response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"
    )
    assert isinstance(head, ResponseHead) and head.chunked
    assert (body, end, reusable) == (b"hello", END, True)


def test_a_response_without_length_ends_when_the_server_closes() -> None:
    events, reusable = response(b"HTTP/1.1 200 OK\r\n\r\nsome bytes")
    assert isinstance(events[0], ResponseHead) and events[0].until_close
    assert events[1:] == [b"some bytes"]
    events, reusable = response(b"HTTP/1.1 200 OK\r\n\r\nsome bytes", eof=True)
    assert (events[1:], reusable) == ([b"some bytes", END], False)


def test_a_head_response_ends_at_its_head_and_the_connection_is_not_reused() -> None:
    (head, end), reusable = response(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", b"HEAD")
    assert isinstance(head, ResponseHead) and not head.has_body
    assert (end, reusable) == (END, False)


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_end_at_the_head(status: int) -> None:
    (head, end), reusable = response(b"HTTP/1.1 %d X\r\n\r\n" % status)
    assert isinstance(head, ResponseHead) and not head.has_body
    assert (end, reusable) == (END, True)


def test_interim_responses_are_skipped() -> None:
    (head, body, end), _ = response(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    )
    assert isinstance(head, ResponseHead) and head.status == 201
    assert head.headers == [(b"content-length", b"2")]
    assert (body, end) == (b"ok", END)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n", "extra bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\x00garbage", "garbage after"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", "close"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", "HTTP/1.0"),
    ],
)
def test_a_whole_response_is_not_reusable_when(data: bytes, why: str) -> None:
    events, reusable = response(data)
    assert events[1:] == [b"hello", END], why
    assert not reusable, why


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n",
    ],
)
def test_invalid_responses_are_errors(data: bytes) -> None:
    events, reusable = response(data)
    assert isinstance(events[-1], tuple) and events[-1][0] == "error"
    assert not any(isinstance(e, ResponseHead) for e in events)
    assert not reusable


def test_a_response_cut_short_is_an_error() -> None:
    events, _ = response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", eof=True)
    assert events[1:] == [b"abc", ("error", 400)]
    events, _ = response(b"", eof=True)
    assert events == [CLOSED]


# -- framing what leaves ----------------------------------------------------------


def test_heads_and_chunks_are_framed_byte_for_byte() -> None:
    headers = [(b"host", b"a.test"), (b"x-a", b"1")]
    assert http1.request_head(b"GET", b"/p?q", headers) == (
        b"GET /p?q HTTP/1.1\r\nhost: a.test\r\nx-a: 1\r\n\r\n"
    )
    assert http1.response_head(404, b"Not Found", []) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert http1.chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert http1.LAST_CHUNK == b"0\r\n\r\n"


def test_body_bytes_are_framed_as_the_message_is() -> None:
    assert http1.frame(b"abc", chunked=True) == b"3\r\nabc\r\n"
    assert http1.frame(b"abc", chunked=False) == b"abc"
    # An empty chunk is the last chunk: no bytes must never end a chunked body early.
    assert http1.frame(b"", chunked=True) == b""
    assert http1.end_of_body(chunked=True) == http1.LAST_CHUNK
    assert http1.end_of_body(chunked=False) == b""


def test_what_we_frame_parses_back_to_what_we_sent() -> None:
    body = bytes(range(256)) * 40
    data = http1.request_head(
        b"POST", b"http://a.test/", [(b"host", b"a.test"), (b"transfer-encoding", b"chunked")]
    )
    data += http1.chunk(body[:1000]) + http1.chunk(body[1000:]) + http1.LAST_CHUNK
    events = requests(data)
    assert events[1:] == [body, END]


# -- hostile input ------------------------------------------------------------------

SEEDS = [
    GET,
    b"POST http://a.test/p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" + GET,
    b"POST http://a.test/p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"CONNECT a.test:443 HTTP/1.1\r\nHost: a\r\n\r\nabc",
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(len(buf) + 1)
        choice = rng.randrange(3)
        if choice == 0 and buf:
            del buf[min(pos, len(buf) - 1)]
        elif choice == 1:
            buf[pos:pos] = bytes([rng.randrange(256)])
        else:
            buf[pos:pos] = rng.choice(
                [b"\r\n", b"\n", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b" "]
            )
    return bytes(buf)


def _until_a_tunnel(events: list[object]) -> list[object]:
    """Events up to a CONNECT's end: what is fed after it is the tunnel's, and is refused
    if fed to the reader in a later read."""
    for i, event in enumerate(events):
        if isinstance(event, RequestHead) and event.method == b"CONNECT":
            return events[: i + 2]
    return events


def test_mutated_requests_give_only_events_or_protocol_errors_however_they_are_cut() -> None:
    rng = random.Random(8)
    for _ in range(3000):
        data = _mutate(rng, rng.choice(SEEDS))
        whole = _until_a_tunnel(requests(data))
        cut = requests(data, *sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1))))
        # Events are the same however the bytes arrive, apart from how a body is split.
        assert whole == _until_a_tunnel(cut), data
        heads = [e for e in whole if isinstance(e, RequestHead)]
        for head in heads:
            assert all(name == name.lower() for name, _ in head.headers)
            assert not any(b"\r" in v or b"\n" in v for _, v in head.headers)


# -- Content-Length bodies pass around llhttp ------------------------------------------

SMUGGLED = b"GET /evil HTTP/1.1\r\nHost: evil.test\r\n\r\n"
PIPELINE = (
    b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED)
    + b"POST /b HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    + b"GET /c HTTP/1.1\r\nHost: a.test\r\n\r\n"
    + b"POST /d HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nConnection: close\r\n\r\nwxyz"
    + b"GET /after-close HTTP/1.1\r\nHost: a.test\r\n\r\n"
)


def test_length_framed_bodies_read_alike_however_the_bytes_arrive() -> None:
    """A body counted past llhttp ends where llhttp would end it, at every cut: a request
    inside a body stays body bytes, the next request is parsed, one after a request that
    closes the connection is refused."""
    whole = requests(PIPELINE)
    assert [e.target for e in whole if isinstance(e, RequestHead)] == [b"/a", b"/b", b"/c", b"/d"]
    assert SMUGGLED in whole and whole[-1] == ("error", 400)
    for cut in range(1, len(PIPELINE)):
        assert requests(PIPELINE, cut) == whole, cut
    rnd = random.Random(7)
    for _ in range(300):
        cuts = sorted(rnd.sample(range(1, len(PIPELINE)), 4))
        assert requests(PIPELINE, *cuts) == whole, cuts


def test_a_read_that_is_all_body_is_passed_on_as_it_came() -> None:
    reader = ResponseReader(b"GET", MAX_HEAD)
    reader.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01")
    piece = b"2345"
    reader.receive(piece)
    reader.receive(b"6789")
    events = [reader.next_event() for _ in range(5)]
    assert isinstance(events[0], ResponseHead) and events[1] == b"01"
    assert events[2] is piece  # not a copy made by a parser callback
    assert events[3:] == [b"6789", END] and reader.reusable


def test_a_passed_body_cut_short_or_overrun() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    reader = ResponseReader(b"GET", MAX_HEAD)
    reader.receive(head)
    reader.receive(b"012345")
    reader.receive(b"")  # the server closed 4 bytes short
    assert drain(reader)[1:] == [b"012345", ("error", 400)]
    reader = ResponseReader(b"GET", MAX_HEAD)
    reader.receive(head)
    reader.receive(b"0123456789HTTP/1.1 200 OK\r\n")  # more than the response
    assert drain(reader)[1:] == [b"0123456789", END] and not reader.reusable
    client = RequestReader(MAX_HEAD)
    client.receive(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\n")
    client.receive(b"0123")
    client.receive(b"")  # the client went away mid-body
    assert drain(client)[1:] == [b"0123", ("error", 400)]
