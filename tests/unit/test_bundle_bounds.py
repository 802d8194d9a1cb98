"""Issue 27 item 2 and row 5, issue 26 "the bundle is bounded too": what a bottle can make
its bundle hold, and how long a connection may take, is bounded.

The first two run the short version of benchmarks/attack_bundle.py against a real
bundle process; the rest check each bound in process, with the timeouts shortened.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks.attack_bundle import (
    RSS_BOUND_MIB,
    held_bodies,
    running_bundle,
    waiting_connections,
)

from claude_bottle.bundle import connection, http1
from claude_bottle.bundle.api_policy import MAX_JSON_VALUES, GatewayPolicy
from claude_bottle.bundle.audit import AuditLog
from claude_bottle.bundle.body_budget import HELD_RULE, HeldBytes, Hold
from claude_bottle.bundle.connection import BODY_RULE
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.scanning import DlpInspector
from claude_bottle.bundle.server import BUNDLE_ADDRESS_SPACE
from claude_bottle.bundle.settings import BUNDLE_FILES, Pin
from claude_bottle.bundle.slots import BUSY, SLOTS_RULE, Slots, paused_server
from claude_bottle.policy.dlp import Scanner
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.integration.upstream import RecordingHTTPServer
from tests.unit.bundle_settings import bundle_settings
from tests.unit.test_gateway import (
    BOTTLE_HEADERS,
    REAL_KEY,
    messages_body,
    raw_request,
    start_gateway,
)
from tests.unit.test_proxy import RunningBundle, _events


def test_held_bodies_draw_on_one_budget(tmp_path: Path) -> None:
    """Four connections each hold all but the last byte of a 30 MiB gzip body: before,
    the bundle held all of them (and 40 took it past 1.3 GiB); now the ones past the
    budget are refused 503 with the rule, and the gateway still answers."""
    with running_bundle(tmp_path) as bundle:
        outcome = held_bodies(bundle, 4)
    assert outcome.refusals.get(HELD_RULE, 0) >= 1
    assert outcome.rss_peak_mib < RSS_BOUND_MIB
    assert outcome.gateway_status == 200
    assert outcome.control_answers


def test_connections_past_the_proxys_slots_cannot_lock_the_gateway_out(tmp_path: Path) -> None:
    """1,024 idle connections fill the proxy's slots and 600 more push bytes while they
    wait: before, the gateway shared those slots and did not answer, and every waiting
    connection buffered what it sent. Now the gateway answers, the connections past the
    waiting cap are turned away with the rule, and the bundle stays small."""
    with running_bundle(tmp_path) as bundle:
        outcome = waiting_connections(bundle, 1024, 600)
    assert outcome.gateway_status == 200
    assert outcome.control_answers
    assert outcome.refusals.get(SLOTS_RULE, 0) >= 1
    assert outcome.rss_peak_mib < RSS_BOUND_MIB


def _streams(
    sock: socket.socket,
) -> asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return asyncio.ensure_future(asyncio.open_unix_connection(sock=sock))


def test_a_trickled_head_does_not_renew_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte every 50 ms, each within any per-read timeout: the head as a whole must
    still arrive within HEADER_TIMEOUT of its first byte."""
    monkeypatch.setattr(connection, "HEADER_TIMEOUT", 0.5)

    async def attack() -> None:
        ours, theirs = socket.socketpair()
        reader, writer = await _streams(ours)

        async def trickle() -> None:
            theirs.send(b"GET /")
            for _ in range(200):  # 10 s at most
                await asyncio.sleep(0.05)
                theirs.send(b"a")

        sender = asyncio.ensure_future(trickle())
        try:
            with pytest.raises(TimeoutError):
                await connection.pull_head(http1.RequestReader(64 * 1024), reader, 60)
            assert not sender.done()  # ended by the deadline, not by the trickle stopping
        finally:
            sender.cancel()
            writer.close()
            theirs.close()

    asyncio.run(attack())


def test_a_new_connection_owes_its_first_request_within_the_header_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection that sends nothing is closed after HEADER_TIMEOUT, not IDLE_TIMEOUT."""
    monkeypatch.setattr(connection, "HEADER_TIMEOUT", 0.3)
    monkeypatch.setattr(connection, "IDLE_TIMEOUT", 3600.0)

    class Silent(connection.ClientConnection):
        async def handle(self, request: http1.RequestHead) -> bool:
            raise AssertionError("no request was sent")

    async def attack() -> None:
        ours, theirs = socket.socketpair()
        reader, writer = await _streams(ours)
        try:
            await asyncio.wait_for(Silent(reader, writer).serve(), 30)
            theirs.settimeout(5)
            assert theirs.recv(1) == b""  # closed by the bundle's side
        finally:
            theirs.close()

    asyncio.run(attack())


@pytest.fixture
def upstream() -> Iterator[RecordingHTTPServer]:
    server = RecordingHTTPServer()
    yield server
    server.close()


@contextlib.contextmanager
def running_proxy(tmp_path: Path, upstream: RecordingHTTPServer) -> Iterator[RunningBundle]:
    """A bundle in this process (so the shortened timeouts apply) with one allowed and
    one denied host, both pinned to `upstream`."""
    settings = bundle_settings(
        tmp_path,
        allow=("allowed.test",),
        pins=(
            Pin("allowed.test", "127.0.0.1", upstream.port),
            Pin("denied.test", "127.0.0.1", upstream.port),
        ),
    )
    bundle = RunningBundle(settings)
    try:
        yield bundle
    finally:
        bundle.stop()


def _trickle(sock: socket.socket, head: bytes, length: int, step: bytes, every: float) -> bytes:
    """Send `head`, then its body `step` at a time every `every` seconds (for at most 20 s),
    until the bundle answers: the head of its answer (b"" if none came before the end)."""
    sock.settimeout(every)
    sock.sendall(head)
    sent = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            return _answer(sock, sock.recv(65536))
        if sent < length:
            chunk = step[: length - sent]
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return _answer(sock)  # answered and closed since the last look
            sent += len(chunk)
    return b""


def _answer(sock: socket.socket, answer: bytes = b"") -> bytes:
    """The head of the answer on `sock`, of which `answer` came already."""
    sock.settimeout(5)
    while b"\r\n\r\n" not in answer and (more := sock.recv(65536)):
        answer += more
    return answer


@pytest.fixture
def paced(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body must come at 100 bytes a second after its first half second."""
    monkeypatch.setattr(connection, "BODY_GRACE", 0.5)
    monkeypatch.setattr(connection, "BODY_MIN_RATE", 100)


def _proxy_post(host: str, length: int) -> bytes:
    return (
        f"POST http://{host}/up HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _egress_rules(bundle: RunningBundle) -> list[object]:
    return [event.get("rule") for event in _events(bundle)]


def test_a_trickled_body_is_answered_408_not_waited_for(
    paced: None, tmp_path: Path, upstream: RecordingHTTPServer
) -> None:
    """A byte every 50 ms (each read well within any per-read timeout): before, the proxy
    waited for the whole body, holding the connection and its slot as long as the
    trickle went on; now the body must keep a pace, and falling behind it is answered
    408 with the rule, audited, and the connection closed."""
    with running_proxy(tmp_path, upstream) as bundle:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(bundle.settings.proxy_socket)
            answer = _trickle(sock, _proxy_post("allowed.test", 10_000), 10_000, b"a", 0.05)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"x-claude-bottle-block: " + BODY_RULE.encode() in answer
            sock.settimeout(5)
            while sock.recv(65536):  # and then closed
                pass
        assert BODY_RULE in _egress_rules(bundle)


def test_a_body_that_keeps_the_pace_goes_through(
    paced: None, tmp_path: Path, upstream: RecordingHTTPServer
) -> None:
    """The same bound lets a slow but steady body through: 1,000 bytes over about two
    seconds, at five times the pace, well past the grace."""
    with running_proxy(tmp_path, upstream) as bundle:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(bundle.settings.proxy_socket)
            answer = _trickle(sock, _proxy_post("allowed.test", 1000), 1000, b"b" * 50, 0.1)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert upstream.requests[0].body == b"b" * 1000
        assert BODY_RULE not in _egress_rules(bundle)


def test_the_trickled_body_of_a_refused_request_is_not_drained_forever(
    paced: None, tmp_path: Path, upstream: RecordingHTTPServer
) -> None:
    """A refused request's body is read (up to 1 MiB) so the client sees the answer:
    before, at any speed, each byte renewing the wait; now at the body's pace, then the
    refusal goes out and the connection closes."""
    with running_proxy(tmp_path, upstream) as bundle:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(bundle.settings.proxy_socket)
            answer = _trickle(sock, _proxy_post("denied.test", 10_000), 10_000, b"c", 0.05)
        assert answer.startswith(b"HTTP/1.1 403"), answer
        assert not upstream.requests


def test_the_gateway_answers_a_trickled_body_408(paced: None, tmp_path: Path) -> None:
    with FakeAnthropic(api_key=REAL_KEY) as fake:
        audit = AuditLog(tmp_path / "audit.jsonl", "unit")
        gateway = start_gateway(fake, audit)
        try:
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
                body = messages_body()
                head = raw_request("POST", "/v1/messages", body, BOTTLE_HEADERS)[: -len(body)]
                # a byte every 0.2 s: over TCP, bytes that come just as the gateway
                # closes would make it reset the connection, answer and all
                answer = _trickle(sock, head, len(body), body[:1], 0.2)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            (record,) = gateway.wait_records(1)
            assert record["rule"] == BODY_RULE
        finally:
            gateway.close()
            audit.close()


def test_a_reader_that_stops_reading_does_not_hold_a_write_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection, "WRITE_TIMEOUT", 0.3)

    async def attack() -> None:
        ours, theirs = socket.socketpair()
        _, writer = await _streams(ours)
        try:
            writer.write(b"x" * (8 << 20))  # far more than the socket buffers take
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(connection.drain(writer), 30)
        finally:
            writer.close()
            theirs.close()

    asyncio.run(attack())


def test_a_hold_refuses_past_its_cap_and_past_the_budget_and_gives_back() -> None:
    budget = HeldBytes(100)
    first = Hold(budget, 80, "test:too-large", "too large")
    first.add(60)
    with pytest.raises(Refusal) as too_large:
        first.add(30)
    assert (too_large.value.status, too_large.value.rule) == (413, "test:too-large")
    second = Hold(budget, 80, "test:too-large", "too large")
    with pytest.raises(Refusal) as full:
        second.add(50)
    assert (full.value.status, full.value.rule) == (503, HELD_RULE)
    first.release()
    first.release()  # idempotent
    second.add(50)
    assert budget.total == 50


def test_an_encoded_body_holds_its_bytes_until_released() -> None:
    inspector = DlpInspector(Scanner(), block=True, record=lambda *a, **k: None)
    body = gzip.compress(os.urandom(256 * 1024))
    guard = inspector.body([(b"content-encoding", b"gzip")], "POST", "h.test", 80, "/")
    assert guard.feed(body[:-10]) == b""
    assert inspector.held.total == len(body) - 10
    guard.release()  # the request ended early (refused, or its client went away)
    assert inspector.held.total == 0
    whole = inspector.body([(b"content-encoding", b"gzip")], "POST", "h.test", 80, "/")
    assert whole.feed(body) == b""
    assert whole.finish() == body
    assert inspector.held.total == 0


def test_connections_past_the_waiting_cap_or_the_wait_are_turned_away(
    tmp_path: Path,
) -> None:
    async def attack() -> tuple[bytes, bytes, int]:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(tmp_path / "s.sock"))
        listener.listen(8)
        full: list[int] = []
        slots = Slots(1, 1, full.append, wait=0.3)
        hold_slot = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await hold_slot.wait()
            writer.close()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await slots.serve(handler, reader, writer)

        server = await paused_server(serve, listener, 8)
        path = str(tmp_path / "s.sock")
        loop = asyncio.get_running_loop()
        try:
            served = socket.socket(socket.AF_UNIX)
            served.connect(path)
            await asyncio.sleep(0.1)
            waiting = socket.socket(socket.AF_UNIX)
            waiting.connect(path)
            await asyncio.sleep(0.1)
            turned_away = socket.socket(socket.AF_UNIX)
            turned_away.connect(path)
            for sock in (waiting, turned_away):
                sock.setblocking(False)
            past_cap = await asyncio.wait_for(loop.sock_recv(turned_away, 4096), 10)
            timed_out = await asyncio.wait_for(loop.sock_recv(waiting, 4096), 10)
            hold_slot.set()
            for sock in (served, waiting, turned_away):
                sock.close()
            return past_cap, timed_out, len(full)
        finally:
            server.close()

    past_cap, timed_out, told = asyncio.run(attack())
    assert past_cap == BUSY
    assert timed_out == BUSY
    assert told == 1  # one audit record per burst


def _limits(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {line[:26].strip(): line[26:47].strip() for line in lines}


def test_the_bundle_runs_under_its_own_file_and_address_space_limits(tmp_path: Path) -> None:
    """Where it has no cgroup of its own (docker's host placement, a host without
    cgroups), the rlimits are what keeps a bottle from making its bundle take the host."""
    with running_bundle(tmp_path) as bundle:
        limits = _limits(bundle.process.pid)
    assert limits["Max open files"] == str(BUNDLE_FILES)
    assert limits["Max address space"] == str(BUNDLE_ADDRESS_SPACE)


def test_a_json_body_of_millions_of_values_is_refused_before_it_is_parsed() -> None:
    """32 MiB of `[],` parses to 770 MiB of lists: the gateway counts values first."""
    bomb = b"[" + b"[]," * (MAX_JSON_VALUES + 1) + b"[]]"
    with pytest.raises(Refusal) as refused:
        GatewayPolicy().check_body(bomb)
    assert (refused.value.status, refused.value.rule) == (413, "gateway:body-too-complex")
    # Commas and brackets inside strings (code in a prompt) are not values.
    prompt = 'a, [{b}], " c, ' * (MAX_JSON_VALUES // 2)
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    GatewayPolicy().check_body(json.dumps(body).encode())


def test_a_body_with_stacked_codings_is_not_decoded() -> None:
    """Each stage may expand 100:1: two would let one slice decode to 64 MiB at once."""
    inspector = DlpInspector(Scanner(), block=True, record=lambda *a, **k: None)
    with pytest.raises(Refusal) as refused:
        inspector.body([(b"content-encoding", b"gzip, gzip")], "POST", "h.test", 80, "/")
    assert refused.value.status == 415
