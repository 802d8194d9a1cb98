"""A bundle container's secrets, handed once over its control socket (`secrets` op).

The CLI resolves them on the host and hands them after the bundle answers; the bundle
keeps them in memory, serves nothing that needs them before (a request waits, then goes
with the secret swapped in), and takes the handover once: any later attempt is refused
and audited, so whoever reached the socket later cannot swap a secret for their own.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.bundle import control
from claude_bottle.bundle.settings import InjectionSpec, Pin
from claude_bottle.errors import LaunchError
from tests.integration.upstream import RecordingHTTPServer
from tests.unit.bundle_settings import bundle_settings
from tests.unit.test_proxy import RunningBundle

SECRET = "ghp_" + "H4nd3dS3cr3tV4lu3F0rUn1tT3sts0nlyAb"[:36]
PLACEHOLDER = "ghp_" + "Pl4c3h0ld3rV4lu3F0rUn1tT3sts0nlyCd"[:36]
HOST_SECRET = "host-" + "s3cr3t-handed-for-dlp-0123456789"
KEY = "sk-ant-api03-" + "HandedKeyForUnitTests" * 4
INJECTION = InjectionSpec(("allowed.test",), "GITHUB_TOKEN", "handed", (), PLACEHOLDER)


@pytest.fixture
def upstream() -> Iterator[RecordingHTTPServer]:
    server = RecordingHTTPServer()
    yield server
    server.close()


def _bundle(tmp_path: Path, upstream: RecordingHTTPServer, **fields: object) -> RunningBundle:
    settings = bundle_settings(
        tmp_path,
        pins=(Pin("allowed.test", "127.0.0.1", upstream.port),),
        dlp_enabled=True,
        **fields,
    )
    return RunningBundle(settings)


@pytest.fixture
def handed(tmp_path: Path, upstream: RecordingHTTPServer) -> Iterator[RunningBundle]:
    running = _bundle(
        tmp_path,
        upstream,
        handed_secrets=True,
        injections=(INJECTION,),
        anthropic_credential="handed",
    )
    yield running
    running.stop()


def _hand(bundle: RunningBundle, **fields: object) -> dict[str, object]:
    return control.call(Path(bundle.settings.control_socket), "secrets", **fields)


def _rules(bundle: RunningBundle) -> list[str]:
    bundle.sync_audit()
    lines = Path(bundle.settings.audit_log).read_text().splitlines()
    return [str(json.loads(line).get("rule")) for line in lines]


def _get(bundle: RunningBundle, path: str, header: str) -> bytes:
    return bundle.request(
        f"GET http://allowed.test{path} HTTP/1.1\r\nHost: allowed.test\r\n{header}\r\n\r\n".encode()
    )


VALID = {
    "injected": {"GITHUB_TOKEN": SECRET},
    "host_secrets": {"MY_SERVICE_TOKEN": HOST_SECRET},
    "anthropic": KEY,
}


def test_a_request_waits_for_the_handover_then_carries_the_secret(
    handed: RunningBundle, upstream: RecordingHTTPServer
) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reply = pool.submit(_get, handed, "/early", f"Authorization: Bearer {PLACEHOLDER}")
        # Bounded: the request cannot have gone upstream, there is no secret to swap in.
        with pytest.raises(concurrent.futures.TimeoutError):
            reply.result(timeout=1)
        assert upstream.requests == []
        assert _hand(handed, **VALID) == {"ok": True}
        assert reply.result(timeout=10).startswith(b"HTTP/1.1 200")
    (request,) = upstream.requests
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    # The host's own secret, handed for DLP, is found on its way out.
    assert _get(handed, f"/leak?v={HOST_SECRET}", "X-A: b").startswith(b"HTTP/1.1 403")
    assert len(upstream.requests) == 1
    rules = _rules(handed)
    assert "control:secrets-handed" in rules
    text = Path(handed.settings.audit_log).read_text()
    assert SECRET not in text and HOST_SECRET not in text and KEY not in text


def test_the_handover_is_taken_once_and_later_attempts_are_refused(
    handed: RunningBundle, upstream: RecordingHTTPServer
) -> None:
    assert _hand(handed, **VALID) == {"ok": True}
    evil = {**VALID, "injected": {"GITHUB_TOKEN": "ghp_" + "attacker" * 5}}
    again = _hand(handed, **evil)
    assert again["ok"] is False and "already" in str(again["error"])
    assert _get(handed, "/", f"Authorization: Bearer {PLACEHOLDER}").startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    assert "control:secrets-refused" in _rules(handed)


def test_a_malformed_first_handover_uses_it_up_and_stops_the_bundle(
    handed: RunningBundle,
) -> None:
    answer = _hand(handed, **{**VALID, "injected": {}})  # an injection without its secret
    assert answer["ok"] is False and "GITHUB_TOKEN" in str(answer["error"])
    handed.thread.join(10)
    assert not handed.thread.is_alive(), "a bundle without its secrets must not serve"


@pytest.mark.parametrize(
    "bad",
    [
        {**VALID, "injected": {}},
        {**VALID, "injected": {"GITHUB_TOKEN": SECRET, "OTHER": SECRET}},
        {**VALID, "anthropic": None},
        {**VALID, "host_secrets": {"A_TOKEN": 7}},
        {**VALID, "anthropic": "short"},
        {**VALID, "injected": {"GITHUB_TOKEN": "two words"}},
    ],
)
def test_each_malformed_handover_is_refused(handed: RunningBundle, bad: dict[str, object]) -> None:
    answer = _hand(handed, **bad)
    assert answer["ok"] is False
    assert SECRET not in json.dumps(answer) and KEY not in json.dumps(answer)


def test_a_bundle_that_expects_no_handover_refuses_one(
    tmp_path: Path, upstream: RecordingHTTPServer
) -> None:
    running = _bundle(tmp_path, upstream)
    try:
        answer = _hand(running, **VALID)
        assert answer["ok"] is False and "takes no" in str(answer["error"])
    finally:
        running.stop()


def test_the_cli_refuses_a_handover_too_large_for_the_control_socket(tmp_path: Path) -> None:
    from claude_bottle.backend.docker.handover import Handover, hand_secrets

    huge = Handover({}, {f"T{i}_TOKEN": "x" * 4000 for i in range(40)}, None)
    with pytest.raises(LaunchError, match="too large"):
        hand_secrets(huge, tmp_path / "nowhere.sock")
