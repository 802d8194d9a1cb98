"""The git gate's LFS batch API, without I/O: what the bottle may ask, what it is told.

git-lfs asks `POST <remote>.git/info/lfs/objects/batch` where each object is
(`{"operation": "download", "objects": [{"oid", "size"}]}`), and the answer gives, per
object, an action: an `href` and the `header`s to send with it, often a credential of the
upstream's own (GitHub's `Authorization: RemoteAuth …`). The gate asks the upstream
itself, with the host-side credential, and the bottle gets a rewritten answer: each
action's href is the gate's own (`/<remote>.git/info/lfs/objects/<oid>/<ticket>`) and no
header at all; the gate keeps the upstream's action under the random ticket and follows it
when the bottle's git-lfs comes for the object. Nothing of the upstream's answer but oids,
sizes and short error messages reaches the bottle.

Every byte here is hostile: the bottle's request (it is rebuilt from checked oids and
sizes, never forwarded) and the upstream's answer (bounded, each href https to a named
host, each header a short printable string, oids only those asked for).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from claude_bottle.bundle.refusal import Refusal

MAX_BATCH = 1 << 20  # bytes of the bottle's batch request
MAX_ANSWER = 16 << 20  # bytes of the upstream's batch answer
MAX_OBJECTS = 1000  # objects in one batch (git-lfs sends 100 by default)
MAX_OBJECT_SIZE = 1 << 40
MAX_UPLOAD = 5 << 30  # bytes of one uploaded object (spooled on the host's disk)
MAX_HEADERS = 16
MAX_HEADER_VALUE = 8192
MAX_HREF = 8192
ACTION_TTL = 3600.0  # seconds the gate keeps an action for the bottle to use
MEDIA_TYPE = "application/vnd.git-lfs+json"
OPERATIONS = ("download", "upload")
_OID = re.compile(r"[0-9a-f]{64}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
# Headers the gate sets itself on the way to the object's host, whatever an action says.
_OWN_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te"}
)


class LfsObject(NamedTuple):
    oid: str
    size: int


class BatchRequest(NamedTuple):
    operation: str
    objects: tuple[LfsObject, ...]


class Action(NamedTuple):
    """What the upstream said to do for one object; kept in the gate, never shown. An
    upload's is the gate's own (no href): the object comes to the gate, which asks the
    upstream where to put it only once it has been scanned."""

    remote: str
    operation: str
    oid: str
    size: int
    href: str  # https://host[:port]/path?query; "" for an upload to the gate
    headers: tuple[tuple[str, str], ...]  # the upstream's credential may be among them
    batch: str = ""  # the batch it came from: a refused upload refuses its batch


class Rewritten(NamedTuple):
    body: bytes  # the answer for the bottle
    actions: dict[str, Action]  # ticket -> action, for the gate to keep


def json_object(data: bytes, bad: Callable[[str], Refusal]) -> dict[str, Any]:
    """`data` (bounded by the caller) as a JSON object; `bad("not JSON")` or
    `bad("not an object")` raised otherwise. Every LFS body the gate reads, from the
    bottle or from an upstream, is parsed here."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser
        raise bad("not JSON") from None
    if not isinstance(parsed, dict):
        raise bad("not an object")
    return parsed


def _bad(why: str) -> Refusal:
    return Refusal(400, "git:lfs-bad-request", f"malformed LFS batch request ({why})")


def parse_request(body: bytes) -> BatchRequest:
    """The bottle's batch request, checked; `Refusal` (400, or 403 for an operation the
    gate does not serve) otherwise."""
    if len(body) > MAX_BATCH:
        raise Refusal(
            413, "git:lfs-too-large", f"an LFS batch request is at most {MAX_BATCH} bytes"
        )
    request = json_object(body, _bad)
    operation = request.get("operation")
    if operation not in OPERATIONS:
        raise Refusal(
            403,
            "git:lfs-operation",
            f"the git gate serves LFS operations {', '.join(OPERATIONS)} only",
        )
    if request.get("hash_algo", "sha256") != "sha256":
        raise _bad("hash_algo must be sha256")
    transfers = request.get("transfers", ["basic"])
    if not isinstance(transfers, list) or "basic" not in transfers:
        raise _bad("only the basic transfer is served")
    objects = request.get("objects")
    if not isinstance(objects, list) or not 0 < len(objects) <= MAX_OBJECTS:
        raise _bad(f"objects must be a list of 1 to {MAX_OBJECTS}")
    checked: dict[str, LfsObject] = {}
    for item in objects:
        oid = item.get("oid") if isinstance(item, dict) else None
        size = item.get("size") if isinstance(item, dict) else None
        if not isinstance(oid, str) or not _OID.fullmatch(oid):
            raise _bad("an oid is not a sha256 in hex")
        if type(size) is not int or not 0 <= size <= MAX_OBJECT_SIZE:
            raise _bad(f"object {oid}: size out of range")
        checked[oid] = LfsObject(oid, size)
    return BatchRequest(operation, tuple(checked.values()))


def upload_answer(
    remote: str, batch: BatchRequest, gate_base: str, refused: Mapping[str, str]
) -> Rewritten:
    """The gate's own answer to an upload batch, without asking the upstream: every object
    is to be PUT to the gate (which scans it before anything of it goes upstream), but one
    already refused (oid -> why), which gets its error: git-lfs retries a failed PUT
    with a new batch, and gives up on an object the batch answers with an error."""
    batch_id = secrets.token_hex(8)
    shown: list[dict[str, Any]] = []
    actions: dict[str, Action] = {}
    for item in batch.objects:
        if item.oid in refused or item.size > MAX_UPLOAD:
            why = refused.get(
                item.oid, f"the git gate takes LFS objects of {MAX_UPLOAD} bytes at most"
            )
            error = {"code": 422 if item.oid in refused else 413, "message": why}
            shown.append({"oid": item.oid, "size": item.size, "error": error})
            continue
        ticket = secrets.token_urlsafe(24)
        actions[ticket] = Action(remote, "upload", item.oid, item.size, "", (), batch_id)
        href = {"href": f"{gate_base}/{item.oid}/{ticket}", "expires_in": int(ACTION_TTL)}
        shown.append(
            {"oid": item.oid, "size": item.size, "authenticated": True, "actions": {"upload": href}}
        )
    body = json.dumps({"transfer": "basic", "objects": shown, "hash_algo": "sha256"})
    return Rewritten(body.encode(), actions)


def upstream_upload(remote: str, item: LfsObject, answer: bytes) -> dict[str, Action]:
    """The upstream's answer to a one-object upload batch: its `upload` and `verify`
    actions (none: it has the object already); `Refusal` (502) for an error or a
    malformed answer."""
    if len(answer) > MAX_ANSWER:
        raise _upstream_bad(remote, "too large")
    parsed = json_object(answer, lambda why: _upstream_bad(remote, why))
    listed = parsed.get("objects")
    if not isinstance(listed, list):
        raise _upstream_bad(remote, "no objects")
    for given in listed:
        if not isinstance(given, dict) or given.get("oid") != item.oid:
            continue
        if given.get("error") is not None:
            raise _upstream_bad(remote, f"the upstream refused object {item.oid}")
        given_actions = given.get("actions", {})
        if not isinstance(given_actions, dict):
            raise _upstream_bad(remote, "actions is not an object")
        return {
            name: _action(remote, name, item, given_actions[name])
            for name in ("upload", "verify")
            if name in given_actions
        }
    raise _upstream_bad(remote, f"no answer for object {item.oid}")


def upstream_request(batch: BatchRequest) -> bytes:
    """The request the gate sends upstream: rebuilt from the checked fields only."""
    return json.dumps(
        {
            "operation": batch.operation,
            "transfers": ["basic"],
            "objects": [{"oid": o.oid, "size": o.size} for o in batch.objects],
            "hash_algo": "sha256",
        }
    ).encode()


def _upstream_bad(remote: str, why: str) -> Refusal:
    return Refusal(
        502, "git:lfs-upstream", f"remote {remote}: the upstream's LFS answer is unusable ({why})"
    )


def checked_href(remote: str, href: Any) -> str:
    """An href the upstream gave (an action's, or git-lfs-authenticate's LFS API), checked;
    `Refusal` (502) otherwise."""
    if not isinstance(href, str) or len(href) > MAX_HREF or not _PRINTABLE.fullmatch(href):
        raise _upstream_bad(remote, "an action has no usable href")
    parts = urlsplit(href)
    try:
        _ = parts.port  # raises for a port that is not a number in range
    except ValueError:
        raise _upstream_bad(remote, "an href has a bad port") from None
    # https to a named host only: the gate must not be pointed at plain http, at an
    # address literal (its own loopback services) or at anything but a host name.
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise _upstream_bad(remote, "an href is not https://host/…")
    if re.fullmatch(r"[0-9.]+|.*:.*", parts.hostname):
        raise _upstream_bad(remote, "an href names an address, not a host")
    return href


def checked_headers(remote: str, header: Any) -> tuple[tuple[str, str], ...]:
    """The `header` object the upstream gave, checked and without the headers the gate
    sets itself; `Refusal` (502) otherwise."""
    if not isinstance(header, dict) or len(header) > MAX_HEADERS:
        raise _upstream_bad(remote, "an action's header is not a small object")
    headers = []
    for name, value in header.items():
        if (
            not _HEADER_NAME.fullmatch(name)
            or not isinstance(value, str)
            or len(value) > MAX_HEADER_VALUE
            or not _PRINTABLE.fullmatch(value)
        ):
            raise _upstream_bad(remote, "an action's header is malformed")
        if name.lower() not in _OWN_HEADERS:
            headers.append((name, value))
    return tuple(headers)


def _action(remote: str, operation: str, item: LfsObject, given: Any) -> Action:
    if not isinstance(given, dict):
        raise _upstream_bad(remote, "an action is not an object")
    href = checked_href(remote, given.get("href"))
    headers = checked_headers(remote, given.get("header", {}))
    return Action(remote, operation, item.oid, item.size, href, headers)


def rewrite_answer(remote: str, batch: BatchRequest, answer: bytes, gate_base: str) -> Rewritten:
    """The upstream's batch answer as the bottle sees it: per object asked for, either an
    action at `gate_base/<oid>/<ticket>` without headers, or the upstream's error (code and
    a short message). Objects not asked for are dropped; a malformed answer is a
    `Refusal` (502)."""
    if len(answer) > MAX_ANSWER:
        raise _upstream_bad(remote, "too large")
    parsed = json_object(answer, lambda why: _upstream_bad(remote, why))
    listed = parsed.get("objects")
    if not isinstance(listed, list):
        raise _upstream_bad(remote, "no objects")
    if parsed.get("transfer", "basic") != "basic":
        raise _upstream_bad(remote, "not the basic transfer")
    asked = {item.oid: item for item in batch.objects}
    shown: list[dict[str, Any]] = []
    actions: dict[str, Action] = {}
    for given in listed:
        oid = given.get("oid") if isinstance(given, dict) else None
        if not isinstance(oid, str) or oid not in asked:
            continue  # not asked for: the bottle has no use for it
        item = asked.pop(oid)
        entry: dict[str, Any] = {"oid": item.oid, "size": item.size}
        error = given.get("error")
        given_actions = given.get("actions")
        if isinstance(error, dict):
            code = error.get("code")
            message = error.get("message")
            entry["error"] = {
                "code": code if type(code) is int and 100 <= code <= 599 else 500,
                "message": message[:200]
                if isinstance(message, str) and _PRINTABLE.fullmatch(message[:200])
                else "the upstream refused this object",
            }
        elif isinstance(given_actions, dict):
            kept: dict[str, Any] = {}
            for name, action in given_actions.items():
                if name != batch.operation:
                    continue  # only the action of the operation asked for
                ticket = secrets.token_urlsafe(24)
                actions[ticket] = _action(remote, batch.operation, item, action)
                kept[name] = {
                    "href": f"{gate_base}/{item.oid}/{ticket}",
                    "expires_in": int(ACTION_TTL),
                }
            if kept:
                entry["actions"] = kept
                entry["authenticated"] = True
        shown.append(entry)
    for item in asked.values():  # the upstream said nothing of it: an error for git-lfs
        shown.append(
            {
                "oid": item.oid,
                "size": item.size,
                "error": {"code": 404, "message": "the upstream did not answer for this object"},
            }
        )
    body = json.dumps({"transfer": "basic", "objects": shown, "hash_algo": "sha256"})
    return Rewritten(body.encode(), actions)
