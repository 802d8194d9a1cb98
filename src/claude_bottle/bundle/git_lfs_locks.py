"""The LFS locks API through the git gate: reads forwarded, writes only under push policy.

git-lfs calls `POST …/info/lfs/locks/verify` before every push of a remote it has not
been told lacks locking, and `git lfs locks` / `lock` / `unlock` call `GET …/locks`,
`POST …/locks` and `POST …/locks/<id>/unlock`. The gate serves them all from the remote's
LFS API (`<url>/info/lfs/locks…`, or the href of an ssh remote's git-lfs-authenticate),
with the gate's own authentication, as it does the batch API:

* `list` and `verify` are reads: forwarded (rebuilt from checked fields);
* `lock` and `unlock` are writes: forwarded only when the lock's `ref.name` is a branch
  the remote's `push` patterns allow, the same rule as a push to that branch; else 403
  naming `[git.remotes.NAME] push`. A forced unlock (breaking someone else's lock) is
  refused whatever the policy: that is for the user, on the host.

Every request is rebuilt from checked fields (never forwarded as the bottle spelled it)
and its body DLP-scanned (a lock's path goes upstream). The upstream's answer, at most
MAX_ANSWER bytes, goes back re-encoded as JSON with the upstream's status for a 2xx or
4xx (a 404 or 501 makes git-lfs print its usual "does not support the Git LFS locking
API" and go on); 401 is the gate's authentication refused and 5xx an upstream fault, both
a 502 naming the remote. Each call is one audit record, `git:lfs-locks`.
"""

from __future__ import annotations

import http
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from claude_bottle.bundle.connection import response
from claude_bottle.bundle.git_lfs_batch import MEDIA_TYPE, json_object
from claude_bottle.bundle.git_policy import GateRemote, branch_matches
from claude_bottle.bundle.git_upstream import upstream_host
from claude_bottle.bundle.refusal import Refusal

if TYPE_CHECKING:
    from claude_bottle.bundle.git_lfs_gate import Exchange, LfsGate, LfsRoute
    from claude_bottle.policy.dlp import Scanner

MAX_REQUEST = 64 * 1024  # bytes of the bottle's lock request
MAX_ANSWER = 4 << 20  # bytes of the upstream's answer
MAX_FIELD = 4096  # characters of a path, ref name, cursor or query value
MAX_LIMIT = 1000
WRITES = ("lock", "unlock")
QUERY_KEYS = ("path", "id", "cursor", "limit", "refspec")
# The upstream's statuses the bottle sees as they are; any other is a 502.
_PASSED = frozenset(
    int(status) for status in http.HTTPStatus if 200 <= status < 300 or 400 <= status < 500
) - {401}
_PRINTABLE = re.compile(r"[\x20-\x7e\u00a0-\U0010ffff]*")


def _bad(why: str) -> Refusal:
    return Refusal(400, "git:lfs-bad-request", f"malformed LFS locks request ({why})")


def _text(value: Any, what: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if (
        not isinstance(value, str)
        or (required and not value)
        or len(value) > MAX_FIELD
        or not _PRINTABLE.fullmatch(value)
    ):
        raise _bad(f"{what} must be a short printable string")
    return value


def _ref(request: dict[str, Any], required: bool) -> str:
    ref = request.get("ref")
    if ref is None and not required:
        return ""
    if not isinstance(ref, dict):
        raise _bad("ref must be an object with a name")
    return _text(ref.get("name"), "ref.name")


def _json(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_REQUEST:
        raise Refusal(
            413, "git:lfs-too-large", f"an LFS locks request is at most {MAX_REQUEST} bytes"
        )
    return json_object(body, _bad) if body.strip() else {}


def check_write(remote: GateRemote, call: str, ref: str) -> None:
    """A lock or unlock on `ref` is the bottle's only if it may push that branch."""
    key = f"[git.remotes.{remote.name}] push"
    if not ref.startswith("refs/heads/"):
        raise Refusal(
            403,
            "git:lfs-lock",
            f"remote {remote.name}: an LFS {call} must name the branch it is for "
            f"(ref {ref or 'missing'}); the gate allows it on branches the bottle may push",
            f"{key} lists the branches",
        )
    branch = ref[len("refs/heads/") :]
    if not any(branch_matches(pattern, branch) for pattern in remote.push):
        allowed = ", ".join(remote.push) or "(none)"
        raise Refusal(
            403,
            "git:lfs-lock",
            f"remote {remote.name}: an LFS {call} on branch {branch!r}, which matches none "
            f"of the push patterns ({allowed})",
            f'{key} = [..., "{branch}"]',
        )


def rebuild(
    remote: GateRemote, call: str, body: bytes, query: str
) -> tuple[bytes, str, dict[str, Any]]:
    """The request the gate sends upstream for the bottle's `call`: (body, query string,
    what the audit record says of it); `Refusal` for a malformed one or a write the
    policy does not allow."""
    if call == "list":
        try:
            pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=len(QUERY_KEYS) * 2)
        except ValueError:
            raise _bad("too many query fields") from None
        kept = {}
        for key, value in pairs:
            if key in QUERY_KEYS:
                kept[key] = _text(value, f"query {key}", required=False)
        if "limit" in kept and not (
            kept["limit"].isdigit() and 0 < int(kept["limit"]) <= MAX_LIMIT
        ):
            raise _bad(f"limit must be 1 to {MAX_LIMIT}")
        return b"", urlencode(kept), {"path": kept.get("path", "")[:200]}
    request = _json(body)
    if call == "verify":
        rebuilt: dict[str, Any] = {}
        ref = _ref(request, required=False)
        if ref:
            rebuilt["ref"] = {"name": ref}
        cursor = _text(request.get("cursor"), "cursor", required=False)
        if cursor:
            rebuilt["cursor"] = cursor
        limit = request.get("limit")
        if limit is not None:
            if type(limit) is not int or not 0 < limit <= MAX_LIMIT:
                raise _bad(f"limit must be 1 to {MAX_LIMIT}")
            rebuilt["limit"] = limit
        return json.dumps(rebuilt).encode(), "", {"ref": ref}
    ref = _ref(request, required=False)
    check_write(remote, call, ref)
    if call == "lock":
        path = _text(request.get("path"), "path")
        rebuilt = {"path": path, "ref": {"name": ref}}
        return json.dumps(rebuilt).encode(), "", {"ref": ref, "path": path[:200]}
    if request.get("force", False) is not False:
        raise Refusal(
            403,
            "git:lfs-unlock-force",
            f"remote {remote.name}: a forced unlock (of another's lock) is not made from "
            "the bottle",
            "run `git lfs unlock --force` on the host if the lock must go",
        )
    return json.dumps({"ref": {"name": ref}}).encode(), "", {"ref": ref}


def _scan(scanner: Scanner | None, call: str, body: bytes, query: str, lock_id: str) -> None:
    """DLP of what goes upstream from the bottle (a lock's path, a cursor, the query, the
    id an unlock names in its URL)."""
    if scanner is None:
        return
    scan = scanner.stream(f"the LFS {call} request")
    sent = b"\n".join((body, query.encode(), lock_id.encode()))
    for finding in [*scan.feed(sent), *scan.finish()]:
        if not finding.ignored:
            rule = f"dlp:{finding.pattern}"
            raise Refusal(
                403,
                rule,
                f"LFS {call} refused, rule {rule}: a secret in the request",
                "a false positive is silenced with [dlp] ignore_fingerprints",
            )


def _answer_body(status: int, answer: bytes) -> bytes:
    """The upstream's answer for the bottle: its JSON object re-encoded (so nothing but
    JSON passes), or a short message of the gate's when it is not one."""
    try:
        parsed = json.loads(answer)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {"message": f"the upstream's LFS locks API answered HTTP {status}"}
    return json.dumps(parsed).encode()


async def serve_locks(gate: LfsGate, exchange: Exchange, where: LfsRoute, body: bytes) -> None:
    """One call of the locks API (`body`: the bottle's, at most MAX_REQUEST bytes),
    forwarded or refused as the module says."""
    remote, call = where.remote, where.locks
    target = exchange.request.target.decode("ascii", "replace")
    method = b"GET" if call == "list" else b"POST"
    sent, query, detail = rebuild(remote, call, body, urlsplit(target).query)
    _scan(exchange.scanner, call, sent, query, where.lock_id)
    # git-lfs asks the upload endpoint for all but the listing (its own choice, and what
    # an ssh host's git-lfs-authenticate expects).
    endpoint = await gate.endpoint(exchange, remote, "download" if call == "list" else "upload")
    suffix = "/locks" + (
        "/verify" if call == "verify" else f"/{where.lock_id}/unlock" if call == "unlock" else ""
    )
    path = endpoint.target(suffix) + (b"?" + query.encode() if query else b"")
    headers = [(b"accept", MEDIA_TYPE.encode()), *endpoint.auth]
    if method == b"POST":
        headers += [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", b"%d" % len(sent))]
    host, port = endpoint.host
    status, answer = await gate.call_whole(
        exchange, remote, host, port, method, path, headers, sent, MAX_ANSWER
    )
    if status == 401:
        raise gate.refused_auth(remote, endpoint, status)
    if status == 204:
        status = 200  # an answer with a body, for git-lfs's JSON decoding
    if status not in _PASSED:
        raise Refusal(
            502,
            "git:lfs-upstream",
            f"remote {remote.name}: the upstream's LFS locks API answered HTTP {status}",
        )
    shown = _answer_body(status, answer)
    remote_host, remote_port = upstream_host(remote.url)
    gate.record(
        "git",
        "allow" if status < 300 else "error",
        rule="git:lfs-locks",
        method=method.decode(),
        host=remote_host[:253],
        port=remote_port,
        detail={"remote": remote.name, "call": call, "status": status, **detail},
    )
    await exchange.send(
        response(
            status,
            [
                (b"content-type", MEDIA_TYPE.encode()),
                (b"content-length", b"%d" % len(shown)),
                (b"connection", b"close"),
            ],
            shown,
        )
    )
