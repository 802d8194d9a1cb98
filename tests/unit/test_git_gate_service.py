"""The git gate's connection handling (bundle/git_gate.py) with real git, no bottle: what a
hostile client can do to the bundle through it."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.bundle import git_gate
from claude_bottle.bundle.git_gate import GitGate, GitGateConnection
from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.git_upstream import GitEnv

REMOTE = GateRemote("origin", "https://git.test/repo.git", credential="env:NO_SUCH_VAR")


def _gate(tmp_path: Path, records: list[dict[str, Any]]) -> GitGate:
    def record(kind: str, decision: str, **fields: Any) -> None:
        records.append({"kind": kind, "decision": decision, **fields})

    gate = GitGate((REMOTE,), tmp_path / "cache", GitEnv(), record)
    gate.prepare()
    subprocess.run(["git", "init", "-q", "--bare", str(gate.mirror(REMOTE))], check=True)
    return gate


async def _exchange(gate: GitGate, request: bytes) -> bytes:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    client_reader, client_writer = await asyncio.open_connection(sock=theirs)
    serving = asyncio.ensure_future(GitGateConnection(gate, reader, writer, None).serve())
    client_writer.write(request)
    await client_writer.drain()
    answer = await asyncio.wait_for(client_reader.read(), 30)
    await asyncio.wait_for(serving, 30)
    client_writer.close()
    return answer


def test_an_oversized_push_is_refused_and_nothing_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(git_gate, "MAX_REQUEST", 4096)
    monkeypatch.setenv("NO_SUCH_VAR", "token-value-for-the-test-1234")
    records: list[dict[str, Any]] = []
    gate = _gate(tmp_path, records)
    body = b"0" * 10000
    head = (
        b"POST /origin.git/git-receive-pack HTTP/1.1\r\nHost: 127.0.0.1:3130\r\n"
        b"Content-Type: application/x-git-receive-pack-request\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    answer = asyncio.run(_exchange(gate, head + body))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"git:too-large" in answer
    assert any(r["rule"] == "git:too-large" for r in records)


def test_a_truncated_push_gets_an_error_and_leaves_the_mirror_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_SUCH_VAR", "token-value-for-the-test-1234")
    records: list[dict[str, Any]] = []
    gate = _gate(tmp_path, records)
    head = (
        b"POST /origin.git/git-receive-pack HTTP/1.1\r\nHost: 127.0.0.1:3130\r\n"
        b"Content-Type: application/x-git-receive-pack-request\r\n"
        b"Content-Length: 5000\r\n\r\n"
    )
    body = (
        b"00a4" + b"0" * 40 + b" " + b"1" * 40 + b" refs/heads/bottle/x\x00 report-status\n0000PACK"
    )

    async def truncated() -> bytes:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        client_reader, client_writer = await asyncio.open_connection(sock=theirs)
        serving = asyncio.ensure_future(GitGateConnection(gate, reader, writer, None).serve())
        client_writer.write(head + body)
        await client_writer.drain()
        client_writer.write_eof()  # the client goes away mid-body
        answer = await asyncio.wait_for(client_reader.read(), 30)
        await asyncio.wait_for(serving, 30)
        return answer

    answer = asyncio.run(truncated())
    assert b"unpack ok" not in answer
    assert [r["rule"] for r in records] == ["git:aborted"]
    refs = subprocess.run(
        ["git", "-C", str(gate.mirror(REMOTE)), "for-each-ref"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert refs.stdout == ""
    quarantine = list(gate.mirror(REMOTE).glob("objects/tmp_objdir-*"))
    assert quarantine == []


def test_a_relayed_fetch_carries_only_the_gates_host_path_and_credential() -> None:
    # The bottle's request names another host, a credential and a path of its own, and
    # smuggles a header through an allowed name: none of it reaches the upstream.
    from claude_bottle.bundle import http1
    from claude_bottle.bundle.git_policy import UPLOAD, Route
    from claude_bottle.bundle.git_stream import _upstream_request
    from claude_bottle.bundle.git_upstream import Credential

    request = http1.RequestHead(
        method=b"POST",
        target=b"/origin.git/git-upload-pack",
        headers=[
            (b"host", b"evil.test"),
            (b"authorization", b"Basic bm9wZTpub3Bl"),
            (b"content-type", b"text/x-anything"),
            (b"git-protocol", b"version=2\r\nx-injected: 1"),
            (b"accept", b"application/x-git-upload-pack-result"),
            (b"content-encoding", b"br"),
            (b"cookie", b"session=1"),
        ],
        http_version="1.1",
        keep_alive=True,
        chunked=True,
        expects_continue=False,
    )
    where = Route(REMOTE, UPLOAD, False, "/origin.git/git-upload-pack")
    host, port, head = _upstream_request(
        request, where, Credential("x-access-token", "token-value-for-the-test-1234")
    )
    assert (host, port) == ("git.test", 443)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /repo.git/git-upload-pack HTTP/1.1"
    names = [line.split(":", 1)[0].lower() for line in lines[1:] if line]
    assert names.count("host") == 1 and "host: git.test" in head.decode().lower()
    assert names.count("authorization") == 1 and b"bm9wZTpub3Bl" not in head
    assert b"evil.test" not in head and b"x-injected" not in head and b"cookie" not in head
    assert b"content-type: application/x-git-upload-pack-request" in head.lower()
    assert b"content-encoding" not in head.lower()  # only gzip passes
    assert b"accept: application/x-git-upload-pack-result" in head.lower()


def test_the_judge_socket_answers_only_a_registered_push_once(tmp_path: Path) -> None:
    import json

    gate = _gate(tmp_path, [])
    judged: list[object] = []

    async def ask(payload: bytes) -> bytes:
        reader, writer = await asyncio.open_unix_connection("\0" + gate.judge_address[1:])
        writer.write(payload)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        return answer

    async def scenario() -> list[bytes]:
        push_id, push = await gate.push(REMOTE, {}, None)
        answers = [
            await ask(b"not json\n"),
            await ask(
                json.dumps({"push": "0" * 32, "updates": "", "quarantine": {}}).encode() + b"\n"
            ),
            await ask(b"x" * (git_gate.MAX_HOOK_REQUEST + 10) + b"\n"),
        ]
        assert push.outcomes is None  # none of those reached the registered push
        hook = {"push": push_id, "updates": "garbage", "quarantine": {}}
        answers.append(await ask(json.dumps(hook).encode() + b"\n"))
        answers.append(await ask(json.dumps(hook).encode() + b"\n"))  # a second ask: no answer
        judged.append(push.outcomes)
        return answers

    answers = asyncio.run(scenario())
    assert answers[:3] == [b"", b"", b""]
    verdict = json.loads(answers[3])
    assert verdict["status"] == 1 and "git:bad-update" in "\n".join(verdict["lines"])
    assert answers[4] == b""
    assert judged == [[]]  # judged once; a malformed update list names no ref
