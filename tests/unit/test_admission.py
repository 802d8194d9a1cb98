"""The admission pipeline's units, without a socket: target parsing, connect-time and
request-head admission, the body guard, the one refusal type and the audit record."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from claude_bottle.bundle.admission import (
    EgressAdmission,
    absolute_target,
    allow_decision,
    record_refusal,
)
from claude_bottle.bundle.connection import forwarded_headers
from claude_bottle.bundle.gate import EgressGate
from claude_bottle.bundle.proxy import block_body
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.scanning import DlpInspector
from claude_bottle.policy.dlp import Scanner

GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" * 2  # shaped like one, issued by nobody
GITHUB_TOKEN = GITHUB_TOKEN[:40]


class Records:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, kind: str, decision: str, **fields: Any) -> None:
        self.calls.append((kind, decision, fields))


async def public_resolver(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


def admission(records: Records, allow: tuple[str, ...] = ("allowed.test",)) -> EgressAdmission:
    gate = EgressGate(list(allow), resolver=public_resolver)
    return EgressAdmission(gate, DlpInspector(Scanner(), block=True, record=records))


@pytest.mark.parametrize(
    ("target", "authority", "path"),
    [
        ("http://a.test/x?y=1", "a.test", "/x?y=1"),
        ("http://a.test", "a.test", "/"),
        ("http://a.test?q", "a.test", "/?q"),
        ("http://a.test:8080/p#frag", "a.test:8080", "/p"),
    ],
)
def test_absolute_target_splits(target: str, authority: str, path: str) -> None:
    assert absolute_target(target) == (authority, path)


@pytest.mark.parametrize(
    ("target", "rule"),
    [("https://a.test/", "error:https-absolute"), ("/x", "error:not-a-proxy-request")],
)
def test_absolute_target_refuses(target: str, rule: str) -> None:
    with pytest.raises(Refusal) as caught:
        absolute_target(target)
    assert (caught.value.status, caught.value.rule) == (400, rule)


def test_route_admits_an_allowed_host_and_refuses_others() -> None:
    records = Records()
    pipeline = admission(records)

    async def scenario() -> None:
        dest, path = await pipeline.route("http://allowed.test:81/a", None)
        assert (dest.host, dest.port, dest.address, path) == (
            "allowed.test",
            81,
            "93.184.216.34",
            "/a",
        )
        with pytest.raises(Refusal) as caught:
            await pipeline.route("http://other.test/", None)
        assert (caught.value.status, caught.value.rule) == (403, "deny:not-allowlisted")
        # Inside an intercepted tunnel the destination is fixed and only origin-form passes.
        assert await pipeline.route("/in", dest) == (dest, "/in")
        with pytest.raises(Refusal) as caught:
            await pipeline.route("http://allowed.test/", dest)
        assert caught.value.rule == "error:not-origin-form"

    asyncio.run(scenario())


def test_connect_time_refuses_userinfo_before_the_gate() -> None:
    async def scenario() -> None:
        with pytest.raises(Refusal) as caught:
            await admission(Records()).destination("CONNECT", "u:p@allowed.test:443", 443)
        assert caught.value.rule == "deny:userinfo"

    asyncio.run(scenario())


def test_head_admission_refuses_a_token_in_a_header_and_audits_it() -> None:
    records = Records()
    pipeline = admission(records)
    dest = asyncio.run(pipeline.destination("HTTP", "allowed.test", 80))
    pipeline.head("GET", dest, "/", [(b"accept", b"*/*")])
    assert records.calls == []
    with pytest.raises(Refusal) as caught:
        pipeline.head("GET", dest, "/", [(b"x-note", f"token {GITHUB_TOKEN}".encode())])
    assert caught.value.status == 403
    assert caught.value.rule.startswith("dlp:")
    kind, decision, fields = records.calls[0]
    assert (kind, decision, fields["host"]) == ("dlp", "deny", "allowed.test")
    assert GITHUB_TOKEN not in repr(records.calls)


def test_body_guard_holds_back_and_refuses() -> None:
    records = Records()
    pipeline = admission(records)
    dest = asyncio.run(pipeline.destination("HTTP", "allowed.test", 80))
    guard = pipeline.body("POST", dest, "/", [])
    assert guard is not None
    released = guard.feed(b"x" * 10_000)
    assert 0 < len(released) < 10_000  # a window is held back until scanned past
    with pytest.raises(Refusal):
        guard.feed(GITHUB_TOKEN.encode())
        guard.finish()
    assert EgressAdmission(pipeline.gate).body("POST", dest, "/", []) is None


def test_refusal_decision_and_record() -> None:
    records = Records()
    refusal = Refusal(502, "error:dns", "could not resolve x")
    assert refusal.decision == "error"
    assert Refusal(403, "deny:x", "no").decision == "deny"
    record_refusal(
        records, "egress", refusal, decision="error", method="GET", host="h", port=1, path="/"
    )
    assert records.calls == [
        (
            "egress",
            "error",
            {
                "rule": "error:dns",
                "method": "GET",
                "host": "h",
                "port": 1,
                "path": "/",
                "detail": {"status": 502, "reason": "could not resolve x"},
            },
        )
    ]


def test_allow_decision_says_when_audit_mode_let_it_through() -> None:
    async def scenario() -> None:
        gate = EgressGate([], mode="audit", resolver=public_resolver)
        dest = await gate.check("any.test", 80)
        assert allow_decision(dest) == "audit-allow"

    asyncio.run(scenario())


def test_block_body_carries_the_hint() -> None:
    denied = Refusal(403, "deny:not-allowlisted", "not in the allowlist")
    assert block_body("b1", "x.test", denied).endswith(
        b"(rule deny:not-allowlisted). To allow it: claude-bottle allow b1 x.test\n"
    )
    hinted = Refusal(403, "l7:x", "no\r\nInjected: 1", hint="add a rule")
    assert block_body("b1", "x.test", hinted) == (
        b"claude-bottle: blocked x.test: no  Injected: 1 (rule l7:x). To allow it: add a rule\n"
    )


def test_forwarded_headers_drop_hop_by_hop_and_named() -> None:
    headers = [
        (b"connection", b"x-secret, keep-alive"),
        (b"x-secret", b"1"),
        (b"proxy-authorization", b"Basic abc"),
        (b"transfer-encoding", b"chunked"),
        (b"accept", b"*/*"),
    ]
    assert forwarded_headers(headers) == [(b"accept", b"*/*"), (b"transfer-encoding", b"chunked")]


# -- SSH ports (issue 21: no git push over ssh past the gate) ----------------------------


def ssh_gate(allow: tuple[str, ...], *, mode: str = "enforce") -> EgressAdmission:
    gate = EgressGate(
        list(allow),
        mode=mode,
        resolver=public_resolver,
        ssh_remotes=[("git.example.com", 2222)],  # [git.remotes.x] url = ssh://git@…:2222/…
    )
    return EgressAdmission(gate)


def _refused(pipeline: EgressAdmission, method: str, authority: str, port: int) -> Refusal:
    async def scenario() -> Refusal:
        with pytest.raises(Refusal) as caught:
            await pipeline.destination(method, authority, port)
        return caught.value

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("authority", "default_port"),
    [
        ("allowed.test:22", 443),  # CONNECT to an allowed host's ssh port
        ("ALLOWED.test.:22", 443),
        ("git.example.com:2222", 443),  # a configured remote's ssh port
        ("allowed.test:22", 80),  # plain http to it
        ("nowhere.test:22", 443),  # a host not listed at all
    ],
)
def test_ssh_ports_are_refused_unless_granted_exactly(authority: str, default_port: int) -> None:
    pipeline = ssh_gate(("allowed.test", "git.example.com", "granted.test:22"))
    refusal = _refused(pipeline, "CONNECT", authority, default_port)
    assert (refusal.status, refusal.rule) == (403, "git-ssh-outside-gate")
    assert "[git.remotes" in refusal.hint


def test_ssh_port_refused_in_audit_mode_too() -> None:
    """audit mode lets unlisted hosts through; never an ssh port."""
    refusal = _refused(ssh_gate((), mode="audit"), "CONNECT", "any.test:22", 443)
    assert refusal.rule == "git-ssh-outside-gate"


def test_granted_ssh_port_is_admitted_and_named() -> None:
    pipeline = ssh_gate(("allowed.test", "granted.test:22", "git.example.com:2222"))

    async def scenario() -> None:
        dest = await pipeline.destination("CONNECT", "granted.test:22", 443)
        assert (dest.host, dest.port, dest.rule) == ("granted.test", 22, "allow:granted.test:22")
        dest = await pipeline.destination("CONNECT", "git.example.com:2222", 443)
        assert dest.rule == "allow:git.example.com:2222"
        # the grant is that one port: the host's https is not allowed by it
        with pytest.raises(Refusal) as caught:
            await pipeline.destination("CONNECT", "granted.test:443", 443)
        assert caught.value.rule == "deny:not-allowlisted"

    asyncio.run(scenario())


def test_other_ports_of_allowed_hosts_keep_todays_behaviour() -> None:
    """SPEC says nothing of other ports: an allowed host is allowed on any port but 22 and
    a configured remote's ssh port (which is that remote's host only)."""
    pipeline = ssh_gate(("allowed.test", "git.example.com"))

    async def scenario() -> None:
        for authority in ("allowed.test:443", "allowed.test:2222", "git.example.com:443"):
            dest = await pipeline.destination("CONNECT", authority, 443)
            assert dest.rule.startswith("allow:")

    asyncio.run(scenario())


def test_denylisted_ssh_port_keeps_the_deny_rule() -> None:
    gate = EgressGate(
        ["x.example.com:22"], ["*.example.com"], resolver=public_resolver, ssh_remotes=()
    )
    refusal = _refused(EgressAdmission(gate), "CONNECT", "x.example.com:22", 443)
    assert refusal.rule == "deny:denylist:*.example.com"


def test_ssh_refusal_is_audited_with_its_rule() -> None:
    records = Records()
    refusal = _refused(ssh_gate(("allowed.test",)), "CONNECT", "allowed.test:22", 443)
    record_refusal(
        records,
        "egress",
        refusal,
        decision=refusal.decision,
        method="CONNECT",
        host="allowed.test",
        port=22,
        path="",
    )
    kind, decision, fields = records.calls[0]
    assert (kind, decision, fields["rule"], fields["port"]) == (
        "egress",
        "deny",
        "git-ssh-outside-gate",
        22,
    )


def test_allow_at_run_time_takes_a_port_entry() -> None:
    """`claude-bottle allow NAME host:22` (the user, over the control socket) opens exactly it."""
    pipeline = ssh_gate(("allowed.test",))

    async def scenario() -> None:
        assert pipeline.gate.allow("Allowed.test:22", "test") == "allowed.test:22"
        dest = await pipeline.destination("CONNECT", "allowed.test:22", 443)
        assert dest.rule == "allow:allowed.test:22"
        with pytest.raises(Refusal) as caught:
            await pipeline.destination("CONNECT", "other.test:22", 443)
        assert caught.value.rule == "git-ssh-outside-gate"

    asyncio.run(scenario())
