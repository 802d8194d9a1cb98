"""What the proxy submits to the audit log is bounded per request (issue 27 row 3), and a
refused CONNECT names host and port in their own fields (issue 19 item 5).

A 62 KB request holding 2,500 fake AWS key ids wrote one ~2.4 KB record per finding:
6 MB. Now each request writes one record with counts and rule ids, capped."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.bundle.settings import Pin
from tests.integration.upstream import RecordingHTTPServer
from tests.unit.bundle_settings import bundle_settings
from tests.unit.test_dlp import EXAMPLES
from tests.unit.test_proxy import RunningBundle

KEYS = 2500


def fake_key_ids() -> list[str]:
    rnd = random.Random(27)
    make = EXAMPLES["aws-access-key-id"][0][0]
    return [make(rnd) for _ in range(KEYS)]


@pytest.fixture
def upstream() -> Iterator[RecordingHTTPServer]:
    server = RecordingHTTPServer()
    yield server
    server.close()


def start(tmp_path: Path, upstream: RecordingHTTPServer, *, block: bool) -> RunningBundle:
    return RunningBundle(
        bundle_settings(
            tmp_path,
            pins=(Pin("allowed.test", "127.0.0.1", upstream.port),),
            dlp_enabled=True,
            dlp_block=block,
        )
    )


def records(bundle: RunningBundle) -> list[dict[str, object]]:
    bundle.sync_audit()
    return [json.loads(line) for line in Path(bundle.settings.audit_log).read_text().splitlines()]


def requests() -> dict[str, bytes]:
    keys = fake_key_ids()
    listed = ",".join(keys)
    body = " ".join(keys).encode() + b"\n" * 10_000  # ~62 KB
    return {
        "header": (
            f"GET http://allowed.test/h HTTP/1.1\r\nHost: allowed.test\r\nX-Keys: {listed}\r\n\r\n"
        ).encode(),
        "url": (
            f"GET http://allowed.test/u?k={listed} HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
        ).encode(),
        "body": (
            b"POST http://allowed.test/b HTTP/1.1\r\nHost: allowed.test\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        ),
    }


@pytest.mark.parametrize("block", [False, True], ids=["log-only", "block"])
@pytest.mark.parametrize("where", ["header", "url", "body"])
def test_thousands_of_findings_write_one_bounded_record(
    tmp_path: Path, upstream: RecordingHTTPServer, where: str, block: bool
) -> None:
    bundle = start(tmp_path, upstream, block=block)
    try:
        sent = requests()[where]
        reply = bundle.request(sent)
        assert reply.startswith(b"HTTP/1.1 403" if block else b"HTTP/1.1 200"), reply[:200]
        dlp = [r for r in records(bundle) if r["kind"] == "dlp"]
    finally:
        bundle.stop()
    assert 1 <= len(dlp) <= 2, len(dlp)  # a body: the first chunk's, then the rest's count
    assert sum(r["detail"]["findings"] for r in dlp) >= KEYS  # type: ignore[index]
    assert dlp[0]["rule"] == "dlp:aws-access-key-id"
    written = sum(len(json.dumps(r)) for r in dlp)
    assert written < len(sent) // 4, written  # was ~100 bytes written per byte sent


def test_many_rules_and_locations_are_capped(tmp_path: Path, upstream: RecordingHTTPServer) -> None:
    bundle = start(tmp_path, upstream, block=False)
    try:
        key = fake_key_ids()[0]
        headers = "".join(f"X-H{i}: {key}\r\n" for i in range(40))
        bundle.request(
            f"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n{headers}\r\n".encode()
        )
        [record] = [r for r in records(bundle) if r["kind"] == "dlp"]
    finally:
        bundle.stop()
    detail = record["detail"]
    assert isinstance(detail, dict)
    assert detail["findings"] == 40
    assert len(detail["locations"]) == 8
    assert detail["rules"] == {"dlp:aws-access-key-id": 40}


@pytest.mark.parametrize(
    ("target", "host", "port"),
    [("denied.test:443", "denied.test", 443), ("denied.test:8443", "denied.test", 8443)],
)
def test_a_refused_connect_names_host_and_port_apart(
    tmp_path: Path, upstream: RecordingHTTPServer, target: str, host: str, port: int
) -> None:
    bundle = RunningBundle(bundle_settings(tmp_path))
    try:
        reply = bundle.request(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        [record] = [r for r in records(bundle) if r["kind"] == "egress"]
    finally:
        bundle.stop()
    assert reply.startswith(b"HTTP/1.1 403")
    assert b"claude-bottle allow unit denied.test\n" in reply
    assert (record["method"], record["host"], record["port"]) == ("CONNECT", host, port)


def test_a_refused_request_never_records_its_userinfo(
    tmp_path: Path, upstream: RecordingHTTPServer
) -> None:
    bundle = RunningBundle(bundle_settings(tmp_path))
    try:
        secret = "hunter2-not-a-pattern"
        bundle.request(f"CONNECT u:{secret}@denied.test:443 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        bundle.request(
            f"GET http://u:{secret}@denied.test:81/p HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        egress = [r for r in records(bundle) if r["kind"] == "egress"]
        text = Path(bundle.settings.audit_log).read_text()
    finally:
        bundle.stop()
    assert [(r["host"], r["port"], r["path"]) for r in egress] == [
        ("denied.test", 443, ""),
        ("denied.test", 81, "/p"),
    ]
    assert secret not in text
