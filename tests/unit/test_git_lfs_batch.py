"""The git gate's LFS batch checks and rewriting (`bundle/git_lfs_batch.py`): hostile
requests from the bottle, hostile answers from upstream, and no upstream header ever in
what the bottle is told."""

from __future__ import annotations

import json

import pytest

from claude_bottle.bundle.git_lfs_batch import (
    MAX_ANSWER,
    MAX_BATCH,
    MAX_OBJECTS,
    MAX_UPLOAD,
    BatchRequest,
    LfsObject,
    parse_request,
    rewrite_answer,
    upload_answer,
    upstream_request,
    upstream_upload,
)
from claude_bottle.bundle.refusal import Refusal

OID = "a" * 64
OTHER = "b" * 64
BASE = "http://127.0.0.1:3130/origin.git/info/lfs/objects"
SECRET = "RemoteAuth s3cr3t-storage-token"


def _request(**fields: object) -> bytes:
    return json.dumps(
        {"operation": "download", "objects": [{"oid": OID, "size": 3}], **fields}
    ).encode()


def _answer(*objects: object, **fields: object) -> bytes:
    return json.dumps({"transfer": "basic", "objects": list(objects), **fields}).encode()


def _download(href: str = "https://lfs.example.test/o/1?sig=x", **header: str) -> dict[str, object]:
    return {
        "oid": OID,
        "size": 3,
        "actions": {"download": {"href": href, "header": header or {"Authorization": SECRET}}},
    }


BATCH = BatchRequest("download", (LfsObject(OID, 3),))


def test_a_download_request_is_rebuilt_from_checked_fields_only() -> None:
    batch = parse_request(_request(ref={"name": "refs/heads/main"}, extra="x" * 100))
    assert batch == BATCH
    assert json.loads(upstream_request(batch)) == {
        "operation": "download",
        "transfers": ["basic"],
        "objects": [{"oid": OID, "size": 3}],
        "hash_algo": "sha256",
    }


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{", 400),
        (b"[]", 400),
        (b"[" * 100_000, 400),  # nesting deep enough to break a recursive parser
        (_request(operation="verify"), 403),
        (_request(hash_algo="sha1"), 400),
        (_request(transfers=["ssh"]), 400),
        (json.dumps({"operation": "download", "objects": []}).encode(), 400),
        (
            json.dumps({"operation": "download", "objects": [{"oid": "../x", "size": 1}]}).encode(),
            400,
        ),
        (
            json.dumps(
                {"operation": "download", "objects": [{"oid": OID.upper(), "size": 1}]}
            ).encode(),
            400,
        ),
        (
            json.dumps({"operation": "download", "objects": [{"oid": OID, "size": -1}]}).encode(),
            400,
        ),
        (
            json.dumps({"operation": "download", "objects": [{"oid": OID, "size": True}]}).encode(),
            400,
        ),
        (
            json.dumps({"operation": "download", "objects": [{"oid": OID, "size": 1.5}]}).encode(),
            400,
        ),
        (
            json.dumps(
                {"operation": "download", "objects": [{"oid": OID, "size": 1}] * (MAX_OBJECTS + 1)}
            ).encode(),
            400,
        ),
        (b" " * (MAX_BATCH + 1), 413),
    ],
)
def test_hostile_requests_are_refused(body: bytes, status: int) -> None:
    with pytest.raises(Refusal) as refused:
        parse_request(body)
    assert refused.value.status == status


def test_the_answer_points_at_the_gate_and_carries_no_upstream_header() -> None:
    rewritten = rewrite_answer("origin", BATCH, _answer(_download()), BASE)
    shown = json.loads(rewritten.body)
    assert (
        SECRET not in rewritten.body.decode() and "lfs.example.test" not in rewritten.body.decode()
    )
    (entry,) = shown["objects"]
    action = entry["actions"]["download"]
    assert set(action) == {"href", "expires_in"}
    ((ticket, kept),) = rewritten.actions.items()
    assert action["href"] == f"{BASE}/{OID}/{ticket}"
    assert kept.href == "https://lfs.example.test/o/1?sig=x"
    assert kept.headers == (("Authorization", SECRET),)  # kept by the gate, for the gate


def test_objects_not_asked_for_are_dropped_and_missing_ones_are_errors() -> None:
    stray = {**_download(), "oid": OTHER}
    shown = json.loads(rewrite_answer("origin", BATCH, _answer(stray), BASE).body)
    assert shown["objects"] == [
        {
            "oid": OID,
            "size": 3,
            "error": {"code": 404, "message": "the upstream did not answer for this object"},
        }
    ]


def test_an_upstream_error_is_passed_on_short_and_printable() -> None:
    error = {"oid": OID, "size": 3, "error": {"code": 404, "message": "gone\x1b[31m" + "x" * 500}}
    (entry,) = json.loads(rewrite_answer("origin", BATCH, _answer(error), BASE).body)["objects"]
    assert entry["error"] == {"code": 404, "message": "the upstream refused this object"}


def test_an_upstream_action_for_another_operation_is_not_passed_on() -> None:
    verify = {"oid": OID, "size": 3, "actions": {"upload": {"href": "https://h.test/u"}}}
    rewritten = rewrite_answer("origin", BATCH, _answer(verify), BASE)
    assert rewritten.actions == {}
    assert "actions" not in json.loads(rewritten.body)["objects"][0]


@pytest.mark.parametrize(
    "href",
    [
        "http://lfs.example.test/o/1",  # not TLS
        "https://127.0.0.1:9/control",  # the gate's own loopback services
        "https://[::1]/x",
        "https://10.0.0.1/x",
        "file:///etc/passwd",
        "https://user:pw@lfs.example.test/o",
        "https://lfs.example.test:99999/o",
        "https://lfs.example.test/o\r\nX-Injected: 1",
        "",
    ],
)
def test_hrefs_pointing_elsewhere_are_refused(href: str) -> None:
    with pytest.raises(Refusal) as refused:
        rewrite_answer("origin", BATCH, _answer(_download(href)), BASE)
    assert refused.value.status == 502


@pytest.mark.parametrize(
    "header",
    [
        {"Authorization": "x\r\nHost: evil.test"},
        {"Bad Name": "x"},
        {"X-Long": "x" * 10_000},
        {f"X-{i}": "x" for i in range(20)},
    ],
)
def test_malformed_action_headers_are_refused(header: dict[str, str]) -> None:
    with pytest.raises(Refusal):
        rewrite_answer("origin", BATCH, _answer(_download(**header)), BASE)


def test_headers_the_gate_sets_itself_are_dropped() -> None:
    rewritten = rewrite_answer(
        "origin", BATCH, _answer(_download(Host="evil.test", Authorization=SECRET)), BASE
    )
    (kept,) = rewritten.actions.values()
    assert kept.headers == (("Authorization", SECRET),)


@pytest.mark.parametrize(
    "answer",
    [
        b"not json",
        b"[]",
        json.dumps({"objects": {}}).encode(),
        _answer(_download(), transfer="ssh"),
        b" " * (MAX_ANSWER + 1),
    ],
)
def test_malformed_answers_are_refused(answer: bytes) -> None:
    with pytest.raises(Refusal) as refused:
        rewrite_answer("origin", BATCH, answer, BASE)
    assert refused.value.status == 502


UPLOAD = BatchRequest("upload", (LfsObject(OID, 3), LfsObject(OTHER, 4)))


def test_an_upload_batch_is_answered_by_the_gate_alone() -> None:
    assert parse_request(_request(operation="upload")).operation == "upload"
    rewritten = upload_answer("origin", UPLOAD, BASE, {})
    shown = json.loads(rewritten.body)["objects"]
    assert [entry["oid"] for entry in shown] == [OID, OTHER]
    tickets = {kept.oid: ticket for ticket, kept in rewritten.actions.items()}
    for entry in shown:
        assert (
            entry["actions"]["upload"]["href"] == f"{BASE}/{entry['oid']}/{tickets[entry['oid']]}"
        )
        assert "verify" not in entry["actions"]
    kept = list(rewritten.actions.values())
    assert {action.operation for action in kept} == {"upload"}
    assert len({action.batch for action in kept}) == 1  # one batch: refused together


def test_an_already_refused_object_gets_its_error_in_the_batch() -> None:
    rewritten = upload_answer("origin", UPLOAD, BASE, {OID: "refused, rule dlp:x"})
    first, second = json.loads(rewritten.body)["objects"]
    assert first == {
        "oid": OID,
        "size": 3,
        "error": {"code": 422, "message": "refused, rule dlp:x"},
    }
    assert "actions" in second
    assert [action.oid for action in rewritten.actions.values()] == [OTHER]


def test_an_object_too_large_to_spool_is_an_error_in_the_batch() -> None:
    big = BatchRequest("upload", (LfsObject(OID, MAX_UPLOAD + 1),))
    rewritten = upload_answer("origin", big, BASE, {})
    assert json.loads(rewritten.body)["objects"][0]["error"]["code"] == 413
    assert rewritten.actions == {}


def test_the_upstreams_upload_and_verify_actions_are_kept_with_their_headers() -> None:
    item = LfsObject(OID, 3)
    given = {
        "oid": OID,
        "size": 3,
        "actions": {
            "upload": {"href": "https://s.test/put", "header": {"Authorization": SECRET}},
            "verify": {"href": "https://git.test/verify"},
            "other": {"href": "http://ignored"},
        },
    }
    steps = upstream_upload("origin", item, _answer(given))
    assert set(steps) == {"upload", "verify"}
    assert steps["upload"].headers == (("Authorization", SECRET),)
    assert steps["verify"].href == "https://git.test/verify"
    assert upstream_upload("origin", item, _answer({"oid": OID, "size": 3})) == {}  # stored


@pytest.mark.parametrize(
    "answer",
    [
        _answer({"oid": OID, "size": 3, "error": {"code": 422, "message": "no"}}),
        _answer({"oid": OTHER, "size": 3}),
        _answer({"oid": OID, "size": 3, "actions": {"upload": {"href": "http://s.test/x"}}}),
        _answer({"oid": OID, "size": 3, "actions": []}),
        b"nope",
    ],
)
def test_a_bad_upstream_upload_answer_is_refused(answer: bytes) -> None:
    with pytest.raises(Refusal) as refused:
        upstream_upload("origin", LfsObject(OID, 3), answer)
    assert refused.value.status == 502
