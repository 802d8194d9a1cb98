"""Git LFS outside the git gate: the proxy lets batch downloads through and refuses every
other LFS API call (an upload is a push the gate never saw) before the upstream sees it."""

from __future__ import annotations

import asyncio
import json

import pytest

from claude_bottle.bundle.admission import EgressAdmission
from claude_bottle.bundle.gate import EgressGate
from claude_bottle.bundle.git_lfs import MAX_BATCH, is_lfs_api
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.scanning import DlpInspector
from claude_bottle.policy.dlp import Scanner

BATCH = "/acme/app.git/info/lfs/objects/batch"
LFS_JSON = [(b"content-type", b"application/vnd.git-lfs+json")]
OBJECT = {"oid": "a" * 64, "size": 3}


async def _resolver(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


def _body(operation: object, path: str = BATCH, dlp: bool = True, **extra: object) -> bytes:
    """What the proxy forwards of an LFS request's body; raises the refusal."""
    gate = EgressGate(["allowed.test"], resolver=_resolver)
    inspector = DlpInspector(Scanner(), block=True, record=lambda *a, **k: None) if dlp else None
    pipeline = EgressAdmission(gate, inspector)
    dest = asyncio.run(pipeline.destination("HTTP", "allowed.test", 443))
    guard = pipeline.body("POST", dest, path, LFS_JSON)
    assert guard is not None
    body = json.dumps({"operation": operation, "objects": [OBJECT], **extra}).encode()
    released = b"".join(guard.feed(body[i : i + 7]) for i in range(0, len(body), 7))
    assert released == b""  # nothing reaches the upstream before the check
    return guard.finish()


@pytest.mark.parametrize("dlp", [True, False])
def test_a_batch_download_passes_whole(dlp: bool) -> None:
    forwarded = _body("download", dlp=dlp)
    assert json.loads(forwarded)["operation"] == "download"


@pytest.mark.parametrize("operation", ["upload", "UPLOAD", None, ["download"], "download "])
def test_anything_but_a_download_is_refused_as_a_push_outside_the_gate(operation: object) -> None:
    with pytest.raises(Refusal) as caught:
        _body(operation)
    assert (caught.value.status, caught.value.rule) == (403, "git-push-outside-gate")
    assert "[git.remotes" in caught.value.hint


def test_other_lfs_calls_and_malformed_or_huge_batches_are_refused() -> None:
    with pytest.raises(Refusal, match="only batch downloads"):
        _body("download", path="/acme/app.git/info/lfs/locks")
    gate = EgressGate(["allowed.test"], resolver=_resolver)
    pipeline = EgressAdmission(gate)
    dest = asyncio.run(pipeline.destination("HTTP", "allowed.test", 443))
    guard = pipeline.body("POST", dest, BATCH, [])
    assert guard is not None
    guard.feed(b'{"operation": "download"')
    with pytest.raises(Refusal, match="not JSON"):
        guard.finish()
    guard = pipeline.body("POST", dest, BATCH + "?x=1", [])
    assert guard is not None
    with pytest.raises(Refusal, match="this large"):
        guard.feed(b" " * (MAX_BATCH + 1))


def test_what_counts_as_an_lfs_api_call() -> None:
    assert is_lfs_api("POST", BATCH, [])
    assert is_lfs_api("put", "/anything", [(b"Accept", b"application/vnd.git-lfs+json")])
    assert not is_lfs_api("GET", BATCH, LFS_JSON)  # no body: nothing to carry
    assert not is_lfs_api("POST", "/acme/app.git/git-upload-pack", [])
