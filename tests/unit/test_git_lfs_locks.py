"""The LFS locks API through the git gate, without I/O (bundle/git_lfs_locks.py): what is
forwarded, rebuilt how, and which writes the push policy refuses."""

from __future__ import annotations

import json

import pytest

from claude_bottle.bundle.git_lfs_gate import lfs_route
from claude_bottle.bundle.git_lfs_locks import _answer_body, _scan, rebuild
from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.policy.dlp import Scanner

REMOTE = GateRemote("origin", "https://git.test/acme/app.git", push=("bottle/*",))


def _body(value: object) -> bytes:
    return json.dumps(value).encode()


def test_each_locks_call_is_routed() -> None:
    remotes = {"origin": REMOTE}
    base = "/origin.git/info/lfs"
    assert lfs_route(remotes, "GET", base + "/locks?path=a").locks == "list"
    assert lfs_route(remotes, "POST", base + "/locks").locks == "lock"
    assert lfs_route(remotes, "POST", base + "/locks/verify").locks == "verify"
    unlock = lfs_route(remotes, "POST", base + "/locks/17/unlock")
    assert (unlock.locks, unlock.lock_id) == ("unlock", "17")
    for method, path in [
        ("DELETE", "/locks"),
        ("POST", "/locks/../x/unlock"),
        ("POST", "/locks/../unlock"),
        ("POST", "/locks/a%2Fb/unlock"),
        ("GET", "/locks/verify"),
    ]:
        with pytest.raises(Refusal) as refused:
            lfs_route(remotes, method, base + path)
        assert refused.value.status == 404


def test_reads_are_rebuilt_from_checked_fields_only() -> None:
    sent, query, _ = rebuild(REMOTE, "list", b"", "path=a.bin&limit=10&evil=1&refspec=refs/heads/x")
    assert sent == b"" and query == "path=a.bin&limit=10&refspec=refs%2Fheads%2Fx"
    body = _body({"ref": {"name": "refs/heads/main", "x": 1}, "limit": 100, "extra": "no"})
    sent, query, detail = rebuild(REMOTE, "verify", body, "")
    assert json.loads(sent) == {"ref": {"name": "refs/heads/main"}, "limit": 100}
    assert detail == {"ref": "refs/heads/main"}
    sent, _, _ = rebuild(REMOTE, "verify", b"", "")
    assert json.loads(sent) == {}  # an old git-lfs sends no ref: verify is a read


@pytest.mark.parametrize(
    ("call", "body", "query"),
    [
        ("verify", b"{", ""),
        ("verify", b"[]", ""),
        ("verify", _body({"limit": 10**9}), ""),
        ("verify", _body({"ref": "refs/heads/x"}), ""),
        ("list", b"", "limit=0"),
        ("list", b"", "&".join(["path=a"] * 50)),
        ("list", b"", "path=" + "a" * 5000),
        ("lock", _body({"ref": {"name": "refs/heads/bottle/x"}}), ""),  # no path
        ("lock", _body({"path": "a\u0000b", "ref": {"name": "refs/heads/bottle/x"}}), ""),
    ],
)
def test_a_malformed_request_is_a_400(call: str, body: bytes, query: str) -> None:
    with pytest.raises(Refusal) as refused:
        rebuild(REMOTE, call, body, query)
    assert refused.value.status == 400


def test_a_lock_on_a_branch_the_bottle_may_push_is_forwarded() -> None:
    body = _body({"path": "art/a.psd", "ref": {"name": "refs/heads/bottle/art"}, "x": 1})
    sent, _, detail = rebuild(REMOTE, "lock", body, "")
    assert json.loads(sent) == {"path": "art/a.psd", "ref": {"name": "refs/heads/bottle/art"}}
    assert detail["path"] == "art/a.psd"
    sent, _, _ = rebuild(
        REMOTE, "unlock", _body({"force": False, "ref": {"name": "refs/heads/bottle/art"}}), ""
    )
    assert json.loads(sent) == {"ref": {"name": "refs/heads/bottle/art"}}


@pytest.mark.parametrize(
    ("call", "body", "rule"),
    [
        ("lock", {"path": "a", "ref": {"name": "refs/heads/main"}}, "git:lfs-lock"),
        ("lock", {"path": "a"}, "git:lfs-lock"),  # no ref: no branch to check
        ("lock", {"path": "a", "ref": {"name": "refs/tags/v1"}}, "git:lfs-lock"),
        ("unlock", {"ref": {"name": "refs/heads/main"}}, "git:lfs-lock"),
        ("unlock", {"force": True, "ref": {"name": "refs/heads/bottle/x"}}, "git:lfs-unlock-force"),
    ],
)
def test_a_write_outside_the_push_policy_is_refused_naming_the_config_line(
    call: str, body: dict[str, object], rule: str
) -> None:
    with pytest.raises(Refusal) as refused:
        rebuild(REMOTE, call, _body(body), "")
    assert refused.value.status == 403 and refused.value.rule == rule
    assert "remote origin" in refused.value.message
    if rule == "git:lfs-lock":
        assert "[git.remotes.origin] push" in refused.value.hint


def test_the_upstreams_answer_passes_as_json_only() -> None:
    lock = {"lock": {"id": "1", "path": "a", "owner": {"name": "x"}}}
    assert json.loads(_answer_body(201, _body(lock))) == lock
    assert json.loads(_answer_body(404, b"<html>not found</html>")) == {
        "message": "the upstream's LFS locks API answered HTTP 404"
    }


@pytest.mark.parametrize(
    ("body", "query", "lock_id"),
    [
        (b'{"path": "AKIA' + b"Z7Q2LXK4" + b'MBN3VWPR.bin"}', "", ""),
        (b"", "path=AKIA" + "Z7Q2LXK4" + "MBN3VWPR", ""),
        (b"{}", "", "AKIA" + "Z7Q2LXK4" + "MBN3VWPR"),  # the unlock URL's id goes up too
    ],
)
def test_a_secret_anywhere_the_locks_call_sends_upstream_is_refused(
    body: bytes, query: str, lock_id: str
) -> None:
    with pytest.raises(Refusal) as refused:
        _scan(Scanner(), "unlock", body, query, lock_id)
    assert refused.value.rule.startswith("dlp:") and refused.value.status == 403
    assert "Z7Q2LXK4" not in str(refused.value)
    _scan(Scanner(), "unlock", b"{}", "", "lock-1")  # nothing found: nothing said
