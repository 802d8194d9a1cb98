"""A refused HTTPS host is answered inside TLS (bundle/tls_refusal.py), so the client
shows the rule and the hint; hosts that are not intercepted keep the plain refusal."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.unit.bundle_settings import bundle_settings
from tests.unit.test_proxy import RunningBundle


def _connect(path: str, host: str) -> tuple[socket.socket, bytes]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return sock, head


def _read_all(sock: Any) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.fixture
def intercepting(tmp_path: Path) -> Any:
    settings = bundle_settings(
        tmp_path,
        intercept=True,
        ca_cert=str(tmp_path / "ca.pem"),
        intercept_exclude=("pinned.test",),
        dlp_enabled=False,
    )
    running = RunningBundle(settings)
    yield settings
    running.stop()


def test_a_refused_host_gets_its_403_and_hint_inside_tls(intercepting: Any) -> None:
    sock, head = _connect(intercepting.proxy_socket, "denied.test")
    assert head.startswith(b"HTTP/1.1 200 ")
    client = ssl.create_default_context(cafile=intercepting.ca_cert)
    with client.wrap_socket(sock, server_hostname="denied.test") as tls:
        tls.sendall(b"GET /x HTTP/1.1\r\nHost: denied.test\r\n\r\n")
        answer = _read_all(tls)
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"x-claude-bottle-block: deny:not-allowlisted" in answer
    assert b"To allow it: claude-bottle allow unit denied.test" in answer
    records = [json.loads(line) for line in Path(intercepting.audit_log).read_text().splitlines()]
    refused = [r for r in records if r["kind"] == "egress"]
    assert [(r["decision"], r["method"], r["host"]) for r in refused] == [
        ("deny", "CONNECT", "denied.test")
    ]


def test_a_host_excluded_from_interception_keeps_the_plain_refusal(intercepting: Any) -> None:
    sock, head = _connect(intercepting.proxy_socket, "pinned.test")
    with sock:
        assert head.startswith(b"HTTP/1.1 403 ")


def test_without_interception_the_refusal_stays_plain(tmp_path: Path) -> None:
    settings = bundle_settings(tmp_path, dlp_enabled=False)
    running = RunningBundle(settings)
    try:
        sock, head = _connect(settings.proxy_socket, "denied.test")
        with sock:
            assert head.startswith(b"HTTP/1.1 403 ")
    finally:
        running.stop()


def test_a_client_that_does_not_speak_tls_is_just_closed(
    intercepting: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sock, head = _connect(intercepting.proxy_socket, "denied.test")
    with sock:
        assert head.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n")  # plain text, not TLS
        assert b"403" not in _read_all(sock)  # closed: nothing to show it in
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_client_asking_for_json_gets_the_refusal_as_its_error_field() -> None:
    from claude_bottle.bundle.tls_refusal import refusal_response

    body = b"claude-bottle: blocked x.test: not allowed (rule deny:x). To allow it: hint\n"
    text = refusal_response(403, "deny:x", body, b"*/*")
    assert b"text/plain" in text and text.endswith(body)
    answer = refusal_response(403, "deny:x", body, b"application/json; q=0.8, */*")
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(payload) == {"error": body.decode().strip(), "rule": "deny:x"}
    assert f"content-length: {len(payload)}".encode() in head.lower()
