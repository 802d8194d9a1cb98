"""Git LFS through the git gate: a gated remote's LFS objects, with the host-side credential.

git-lfs applies the bottle's `insteadOf` rewrites to its LFS endpoint too, so a gated
remote's LFS calls reach the gate at `/<remote>.git/info/lfs/…`. The gate serves:

* `POST /<remote>.git/info/lfs/objects/batch`: the bottle's request is checked and rebuilt
  (`git_lfs_batch.parse_request`, at most MAX_BATCH bytes). A download is sent to the
  upstream's own batch API (`<url>/info/lfs/objects/batch`) with the host-side credential,
  and its answer rewritten (`git_lfs_batch.rewrite_answer`) so each action points back at
  the gate; an upload is answered by the gate alone (`git_lfs_batch.upload_answer`);
* `GET /<remote>.git/info/lfs/objects/<oid>/<ticket>`: the action the upstream gave for
  that object, followed by the gate with the upstream's headers (its credential among
  them), the object streamed back to the bottle;
* `PUT` of the same: the object spooled to the host's disk, hashed and DLP-scanned with
  the bundle's engine; only a whole, matching, clean object is offered upstream (a
  one-object upload batch, then its upload and verify actions).

So the bottle never sees the upstream's action headers nor the host-side credential, and
object hosts need not be in the egress allowlist: they are the upstream's choice, not the
bottle's. An https remote's LFS API is `<url>/info/lfs`, with the host-side credential;
an ssh remote's is the one its host names when the gate runs `git-lfs-authenticate` over
the remote's ssh (`git_lfs_ssh`), with the header that answer gives. The locks API is
`git_lfs_locks`'s.
LFS uploads precede the git push (git-lfs runs in pre-push): the ref policy still
applies when the refs move, and an uploaded object nothing references is harmless.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import re
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from claude_bottle.bundle import http1
from claude_bottle.bundle.connection import pull, response
from claude_bottle.bundle.git_lfs_batch import (
    ACTION_TTL,
    MAX_ANSWER,
    MAX_BATCH,
    MEDIA_TYPE,
    Action,
    BatchRequest,
    LfsObject,
    parse_request,
    rewrite_answer,
    upload_answer,
    upstream_request,
    upstream_upload,
)
from claude_bottle.bundle.git_lfs_locks import MAX_REQUEST as MAX_LOCKS_REQUEST
from claude_bottle.bundle.git_lfs_locks import serve_locks
from claude_bottle.bundle.git_lfs_ssh import SshAuthCache
from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.git_upstream import (
    Credential,
    GitEnv,
    hardened_env,
    is_ssh,
    resolve_credential,
    upstream_host,
)
from claude_bottle.bundle.refusal import Refusal

if TYPE_CHECKING:
    from claude_bottle.policy.dlp import Finding, Scanner

CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 120.0  # each read from the upstream or an object host
MAX_RESPONSE_HEAD = 64 * 1024
READ_SIZE = 256 * 1024
MAX_ACTIONS = 100_000  # actions the gate keeps for the bottle at once
MAX_REFUSED = 10_000  # refused oids remembered per remote (so git-lfs stops retrying)
_LFS_PATH = re.compile(r"/([A-Za-z0-9][A-Za-z0-9._-]{0,62})\.git/info/lfs(/[^?#]*)")
_OBJECT = re.compile(r"/objects/([0-9a-f]{64})/([A-Za-z0-9_-]{32})")
_LOCK = re.compile(r"/locks/([A-Za-z0-9_-][A-Za-z0-9_.-]{0,127})/unlock")  # no . or ..
_GATE_HOST = re.compile(r"(127\.0\.0\.1|localhost|\[::1\]):[0-9]{1,5}")
NextEvent = Callable[[], Awaitable[http1.Event]]
Send = Callable[[bytes], Awaitable[None]]
Recorder = Callable[..., Any]


class LfsRoute(NamedTuple):
    remote: GateRemote
    batch: bool  # the batch API; else an object by its ticket
    oid: str = ""
    ticket: str = ""
    upload: bool = False  # PUT of an object (else GET)
    locks: str = ""  # a call of the locks API: list, verify, lock or unlock
    lock_id: str = ""  # the lock an unlock names


def is_lfs(target: str) -> bool:
    return "/info/lfs/" in target.split("?", 1)[0]


def lfs_route(remotes: dict[str, GateRemote], method: str, target: str) -> LfsRoute:
    """The remote and LFS call a request asks for; `Refusal` otherwise."""
    found = _LFS_PATH.fullmatch(target.split("?", 1)[0])
    remote = remotes.get(found.group(1)) if found else None
    if found is None or remote is None:
        raise Refusal(404, "git:unknown-remote", "no such remote's LFS on the git gate")
    rest = found.group(2)
    if rest == "/objects/batch" and method == "POST":
        return LfsRoute(remote, True)
    got = _OBJECT.fullmatch(rest)
    if got is not None and method in ("GET", "PUT"):
        return LfsRoute(remote, False, got.group(1), got.group(2), method == "PUT")
    if rest == "/locks" and method in ("GET", "POST"):
        return LfsRoute(remote, False, locks="list" if method == "GET" else "lock")
    if rest == "/locks/verify" and method == "POST":
        return LfsRoute(remote, False, locks="verify")
    unlock = _LOCK.fullmatch(rest)
    if unlock is not None and method == "POST":
        return LfsRoute(remote, False, locks="unlock", lock_id=unlock.group(1))
    raise Refusal(
        404,
        "git:lfs-unsupported",
        "the git gate serves the LFS batch API, its objects and the locks API only",
    )


class Endpoint(NamedTuple):
    """A remote's LFS API for one operation, and what authenticates the gate to it: the
    host-side credential (https remotes) or git-lfs-authenticate's header (ssh)."""

    url: str  # https://host[:port]/path/info/lfs
    auth: tuple[tuple[bytes, bytes], ...]  # never shown, logged or repr'd
    operation: str = ""  # the ssh answer it came from ("": an https remote's)

    def __repr__(self) -> str:
        return f"Endpoint(url={self.url!r}, auth=<hidden>)"

    @property
    def host(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "", parts.port or 443

    def target(self, suffix: str) -> bytes:
        return (urlsplit(self.url).path.rstrip("/") + suffix).encode()


class Exchange(NamedTuple):
    """One bottle request's means: its head, its body, a way to answer, and the gate's
    settings for the upstream (pins, CA)."""

    request: http1.RequestHead
    body_event: NextEvent
    send: Send
    git_env: GitEnv
    scanner: Scanner | None  # the bundle's DLP engine (None: DLP is off)


class LfsGate:
    """The LFS actions the gate keeps for the bottle (by ticket), and how it follows them."""

    def __init__(self, record: Recorder, spool: Path) -> None:
        self.record = record
        self.spool = spool  # where an upload waits for its scan, on the host's disk
        self._actions: dict[str, tuple[float, Action]] = {}
        self._refused_batches: set[str] = set()
        self._refused: dict[str, dict[str, str]] = {}  # remote -> oid -> why (DLP)
        self.ssh_auth = SshAuthCache()  # ssh remotes' git-lfs-authenticate answers

    async def serve(self, exchange: Exchange, where: LfsRoute) -> None:
        if where.locks:
            body = b"" if where.locks == "list" else await read_body(exchange, MAX_LOCKS_REQUEST)
            await serve_locks(self, exchange, where, body)
        elif where.batch:
            await self._batch(exchange, where.remote)
        elif where.upload:
            await self._upload(exchange, where)
        else:
            await self._object(exchange, where)

    async def endpoint(self, exchange: Exchange, remote: GateRemote, operation: str) -> Endpoint:
        """`remote`'s LFS API for `operation` (download or upload), and its authentication."""
        if is_ssh(remote.url):
            env = hardened_env(os.environ, remote, exchange.git_env)
            found = await self.ssh_auth.get(remote, env, operation)
            auth = tuple((name.lower().encode(), value.encode()) for name, value in found.headers)
            return Endpoint(found.href, auth, operation)
        credential = await asyncio.to_thread(resolve_credential, remote, os.environ)
        return Endpoint(api_url(remote.url), tuple(_basic(credential)))

    def refused_auth(self, remote: GateRemote, endpoint: Endpoint, status: int) -> Refusal:
        """The LFS API said no to the gate's authentication (HTTP 401 or 403)."""
        if endpoint.operation:  # git-lfs-authenticate's token: ask ssh anew next time
            self.ssh_auth.forget(remote, endpoint.operation)
            return Refusal(
                502,
                "git:upstream",
                f"remote {remote.name}: the upstream's LFS API refused the header its "
                f"git-lfs-authenticate gave (HTTP {status})",
                "check on the host that the ssh key of [git.remotes."
                f"{remote.name}] may use this repository's LFS",
            )
        return Refusal(
            502,
            "git:upstream",
            f"remote {remote.name}: the upstream's LFS API refused the host-side "
            f"credential (HTTP {status})",
            f"fix [git.remotes.{remote.name}] credential in your user config, or the "
            "credential it names, on the host",
        )

    def _keep(self, actions: dict[str, Action]) -> None:
        now = time.monotonic()
        self._actions = {k: v for k, v in self._actions.items() if v[0] > now}
        if len(self._actions) + len(actions) > MAX_ACTIONS:
            raise Refusal(503, "git:lfs-busy", "too many LFS transfers under way; retry later")
        for ticket, action in actions.items():
            self._actions[ticket] = (now + ACTION_TTL, action)

    async def _batch(self, exchange: Exchange, remote: GateRemote) -> None:
        base = _gate_base(exchange.request, remote)
        body = await read_body(exchange, MAX_BATCH)
        batch = parse_request(body)
        host, port = upstream_host(remote.url)
        if batch.operation == "upload":  # the gate takes the objects; the upstream waits
            refused = self._refused.get(remote.name, {})
            rewritten = upload_answer(remote.name, batch, base, refused)
        else:
            endpoint = await self.endpoint(exchange, remote, "download")
            answer = await self._ask_batch(exchange, remote, endpoint, batch)
            rewritten = rewrite_answer(remote.name, batch, answer, base)
        self._keep(rewritten.actions)
        self.record(
            "git",
            "allow",
            rule="git:lfs-batch",
            method="LFS",
            host=host[:253],
            port=port,
            detail={
                "remote": remote.name,
                "operation": batch.operation,
                "objects": len(batch.objects),
            },
        )
        await exchange.send(
            response(
                200,
                [
                    (b"content-type", MEDIA_TYPE.encode()),
                    (b"content-length", b"%d" % len(rewritten.body)),
                    (b"connection", b"close"),
                ],
                rewritten.body,
            )
        )

    async def _ask_batch(
        self,
        exchange: Exchange,
        remote: GateRemote,
        endpoint: Endpoint,
        batch: BatchRequest,
    ) -> bytes:
        """The upstream's answer to `batch` (rebuilt, with the endpoint's authentication)."""
        host, port = endpoint.host
        sent = upstream_request(batch)
        headers = [
            (b"accept", MEDIA_TYPE.encode()),
            (b"content-type", MEDIA_TYPE.encode()),
            (b"content-length", b"%d" % len(sent)),
            *endpoint.auth,
        ]
        status, answer = await self.call_whole(
            exchange, remote, host, port, b"POST", endpoint.target("/objects/batch"), headers, sent
        )
        if status in (401, 403):
            raise self.refused_auth(remote, endpoint, status)
        if status != 200:
            raise Refusal(
                502,
                "git:lfs-upstream",
                f"remote {remote.name}: the upstream's LFS API answered HTTP {status}",
            )
        return answer

    def _kept(self, where: LfsRoute, operation: str) -> Action:
        kept = self._actions.get(where.ticket)
        action = kept[1] if kept and kept[0] > time.monotonic() else None
        if (
            action is None
            or action.remote != where.remote.name
            or action.oid != where.oid
            or action.operation != operation
        ):
            raise Refusal(404, "git:lfs-unknown-object", "no such LFS action (ask the batch API)")
        return action

    async def _object(self, exchange: Exchange, where: LfsRoute) -> None:
        action = self._kept(where, "download")
        endpoint = await self.endpoint(exchange, where.remote, "download")
        parts = urlsplit(action.href)
        host, port = parts.hostname or "", parts.port or 443
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = _action_headers(action, endpoint)
        reader, writer = await self._open(exchange.git_env, where.remote, host, port)
        try:
            writer.write(
                http1.request_head(b"GET", target.encode(), _with_host(host, port, headers))
            )
            messages = http1.ResponseReader(b"GET", MAX_RESPONSE_HEAD)
            answer = await self._head(where.remote, messages, reader)
            if answer.status != 200:
                raise Refusal(
                    502,
                    "git:lfs-upstream",
                    f"remote {where.remote.name}: the LFS object host answered HTTP "
                    f"{answer.status} for {action.oid}",
                )
            length = [v for n, v in answer.headers if n == b"content-length"]
            head = [(b"content-type", b"application/octet-stream"), (b"connection", b"close")]
            if length and not answer.chunked:
                head.append((b"content-length", length[0]))
            await exchange.send(response(200, head))
            sent = 0
            while True:
                try:
                    event = await pull(messages, reader, READ_TIMEOUT)
                except (OSError, TimeoutError, http1.ProtocolError) as exc:
                    raise ConnectionError(f"the object host broke off ({exc!r:.100})") from None
                if isinstance(event, bytes):
                    sent += len(event)
                    if sent > action.size:
                        raise ConnectionError("the object host sent more than the object")
                    await exchange.send(event)
                elif event is http1.END:
                    break
                else:
                    raise ConnectionError("the object host closed mid-object")
        finally:
            writer.close()
        self.record(
            "git",
            "allow",
            rule="git:lfs-download",
            method="GET",
            host=host[:253],
            port=port,
            detail={"remote": where.remote.name, "oid": action.oid, "size": sent},
        )

    async def _upload(self, exchange: Exchange, where: LfsRoute) -> None:
        """One object from the bottle: spooled to the host's disk while it is hashed and
        scanned; only a whole, matching, clean object is offered to the upstream (its
        batch API, then the upload and verify actions it answers, with its headers)."""
        action = self._kept(where, "upload")
        remote = where.remote
        if action.batch in self._refused_batches:
            raise Refusal(
                403,
                "git:lfs-refused-batch",
                f"LFS object {action.oid}: another object of this upload was refused",
            )
        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.spool) as spooled:
            try:
                await self._receive(exchange, action, spooled)
            except Refusal as refusal:
                if refusal.status == 403:
                    if len(self._refused_batches) >= MAX_REFUSED:
                        self._refused_batches.clear()  # bounded; their oids stay refused
                    self._refused_batches.add(action.batch)
                    refused = self._refused.setdefault(remote.name, {})
                    if len(refused) >= MAX_REFUSED:
                        refused.pop(next(iter(refused)))
                    refused[action.oid] = refusal.message
                raise
            item = LfsObject(action.oid, action.size)
            endpoint = await self.endpoint(exchange, remote, "upload")
            answer = await self._ask_batch(
                exchange, remote, endpoint, BatchRequest("upload", (item,))
            )
            steps = upstream_upload(remote.name, item, answer)
            if "upload" in steps:
                spooled.seek(0)
                await self._send_upstream(exchange, remote, endpoint, steps["upload"], spooled)
            if "verify" in steps:
                verify = json.dumps({"oid": item.oid, "size": item.size}).encode()
                await self._send_upstream(
                    exchange, remote, endpoint, steps["verify"], io.BytesIO(verify)
                )
        host, port = upstream_host(remote.url)
        self.record(
            "git",
            "allow",
            rule="git:lfs-upload",
            method="PUT",
            host=host[:253],
            port=port,
            detail={
                "remote": remote.name,
                "oid": action.oid,
                "size": action.size,
                "stored": "upload" in steps,
            },
        )
        await exchange.send(response(200, [(b"content-length", b"0"), (b"connection", b"close")]))

    async def _receive(self, exchange: Exchange, action: Action, spooled: IO[bytes]) -> None:
        """The bottle's PUT body into `spooled`: exactly the declared size, its sha256 the
        oid, and no DLP finding (a `Refusal` naming the oid and the rule, never the
        secret)."""
        if exchange.request.expects_continue:
            await exchange.send(http1.CONTINUE)
        digest = hashlib.sha256()
        where = f"the LFS object {action.oid}"
        scan = exchange.scanner.stream(where) if exchange.scanner is not None else None
        total = 0
        refused: Refusal | None = None
        while True:
            event = await exchange.body_event()
            if isinstance(event, bytes):
                total += len(event)
                if total > action.size:
                    raise Refusal(
                        400, "git:lfs-size", f"LFS object {action.oid}: larger than declared"
                    )
                if refused is not None:
                    continue  # read to its end, so git-lfs reads the refusal
                digest.update(event)
                spooled.write(event)
                if scan is not None:
                    refused = _refusal(action.oid, scan.feed(event))
            elif event is http1.END:
                break
            else:
                raise ConnectionError("the bottle's git-lfs went away mid-object")
        if refused is not None:
            raise refused
        if scan is not None and (refused := _refusal(action.oid, scan.finish())) is not None:
            raise refused
        if total != action.size or digest.hexdigest() != action.oid:
            raise Refusal(
                400, "git:lfs-oid", f"LFS object {action.oid}: its content does not match its oid"
            )

    async def _send_upstream(
        self,
        exchange: Exchange,
        remote: GateRemote,
        endpoint: Endpoint,
        step: Action,
        body: IO[bytes],
    ) -> None:
        """An upload (PUT, the object) or verify (POST, JSON) action, followed with its
        headers; the upstream's answer must be a 2xx."""
        parts = urlsplit(step.href)
        host, port = parts.hostname or "", parts.port or 443
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        size = body.seek(0, io.SEEK_END)
        body.seek(0)
        verify = step.operation == "verify"
        kind = MEDIA_TYPE if verify else "application/octet-stream"
        headers = [
            *_action_headers(step, endpoint),
            (b"content-type", kind.encode()),
            (b"content-length", b"%d" % size),
        ]
        if verify:
            headers.append((b"accept", MEDIA_TYPE.encode()))
        method = b"POST" if verify else b"PUT"
        reader, writer = await self._open(exchange.git_env, remote, host, port)
        try:
            writer.write(
                http1.request_head(method, target.encode(), _with_host(host, port, headers))
            )
            while chunk := body.read(READ_SIZE):
                writer.write(chunk)
                async with asyncio.timeout(READ_TIMEOUT):
                    await writer.drain()
            messages = http1.ResponseReader(method, MAX_RESPONSE_HEAD)
            answer = await self._head(remote, messages, reader)
        finally:
            writer.close()
        if not 200 <= answer.status < 300:
            raise Refusal(
                502,
                "git:lfs-upstream",
                f"remote {remote.name}: the LFS {step.operation} of {step.oid} was answered "
                f"HTTP {answer.status}",
            )

    async def _open(
        self, git_env: GitEnv, remote: GateRemote, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        address = (host, port)
        for pin in git_env.pins:
            if pin.host == host:
                address = (pin.address, pin.port or port)
        context = ssl.create_default_context()
        if git_env.ca_file:
            context.load_verify_locations(cafile=git_env.ca_file)
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(*address, ssl=context, server_hostname=host, limit=1 << 20),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise Refusal(
                502,
                "git:lfs-upstream",
                f"remote {remote.name}: {host} could not be reached ({type(exc).__name__})",
            ) from None

    async def _head(
        self, remote: GateRemote, messages: http1.ResponseReader, reader: asyncio.StreamReader
    ) -> http1.ResponseHead:
        try:
            answer = await pull(messages, reader, READ_TIMEOUT)
        except (OSError, TimeoutError, http1.ProtocolError) as exc:
            raise Refusal(
                502,
                "git:lfs-upstream",
                f"remote {remote.name}: no answer from the LFS host ({type(exc).__name__})",
            ) from None
        assert isinstance(answer, http1.ResponseHead)
        return answer

    async def call_whole(
        self,
        exchange: Exchange,
        remote: GateRemote,
        host: str,
        port: int,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        limit: int = MAX_ANSWER,
    ) -> tuple[int, bytes]:
        """One request whose answer is read whole (at most `limit` bytes)."""
        reader, writer = await self._open(exchange.git_env, remote, host, port)
        try:
            writer.write(http1.request_head(method, target, _with_host(host, port, headers)))
            writer.write(body)
            messages = http1.ResponseReader(method, MAX_RESPONSE_HEAD)
            answer = await self._head(remote, messages, reader)
            received = bytearray()
            while True:
                try:
                    event = await pull(messages, reader, READ_TIMEOUT)
                except (OSError, TimeoutError, http1.ProtocolError) as exc:
                    raise Refusal(
                        502,
                        "git:lfs-upstream",
                        f"remote {remote.name}: the LFS answer broke off ({type(exc).__name__})",
                    ) from None
                if isinstance(event, bytes):
                    received += event
                    if len(received) > limit:
                        raise Refusal(
                            502, "git:lfs-upstream", f"remote {remote.name}: LFS answer too large"
                        )
                elif event is http1.END:
                    return answer.status, bytes(received)
                else:
                    raise Refusal(
                        502, "git:lfs-upstream", f"remote {remote.name}: the LFS answer broke off"
                    )
        finally:
            writer.close()


def api_url(url: str) -> str:
    """An https remote's LFS API: `<url>/info/lfs`, without the URL's user info."""
    host, port = upstream_host(url)
    name = f"[{host}]" if ":" in host else host  # an IPv6 literal, bracketed again
    spelled = name if port == 443 else f"{name}:{port}"
    return f"https://{spelled}{urlsplit(url).path.rstrip('/')}/info/lfs"


def _refusal(oid: str, findings: list[Finding]) -> Refusal | None:
    """The refusal of an object with a DLP finding: its oid and the rule, never the secret."""
    for finding in findings:
        if not finding.ignored:
            rule = f"dlp:{finding.pattern}"
            return Refusal(
                403,
                rule,
                f"LFS object {oid} refused, rule {rule}: a secret in its content (nothing "
                "of it reached the upstream, and the rest of its upload is refused too)",
                "remove it from the file and commit again; a false positive is silenced "
                "with [dlp] ignore_fingerprints",
            )
    return None


def _action_headers(action: Action, endpoint: Endpoint) -> list[tuple[bytes, bytes]]:
    """An action's own headers; the LFS API's authentication only for the API's own host,
    and only when the action brings no Authorization of its own."""
    headers = [(n.lower().encode(), v.encode()) for n, v in action.headers]
    parts = urlsplit(action.href)
    same_host = (parts.hostname, parts.port or 443) == endpoint.host
    if same_host and not any(name == b"authorization" for name, _ in headers):
        headers.extend(endpoint.auth)
    return headers


def _basic(credential: Credential | None) -> list[tuple[bytes, bytes]]:
    if credential is None:
        return []
    pair = f"{credential.username}:{credential.password}".encode()
    return [(b"authorization", b"Basic " + base64.b64encode(pair))]


def _with_host(
    host: str, port: int, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    spelled = host if port == 443 else f"{host}:{port}"
    return [
        (b"host", spelled.encode("idna")),
        (b"user-agent", b"git-lfs/claude-bottle-gate"),
        *headers,
    ]


def _gate_base(request: http1.RequestHead, remote: GateRemote) -> str:
    """Where the bottle reaches the gate, as its git-lfs spelled it (a loopback address:
    the bottle's end of the relay), for the hrefs of the rewritten answer."""
    hosts = [value.decode("ascii", "replace") for name, value in request.headers if name == b"host"]
    if len(hosts) != 1 or not _GATE_HOST.fullmatch(hosts[0]):
        raise Refusal(400, "git:lfs-bad-request", "an LFS request names the gate by its address")
    return f"http://{hosts[0]}/{remote.name}.git/info/lfs/objects"


async def read_body(exchange: Exchange, limit: int) -> bytes:
    if exchange.request.expects_continue:
        await exchange.send(http1.CONTINUE)
    held = bytearray()
    while True:
        event = await exchange.body_event()
        if isinstance(event, bytes):
            held += event
            if len(held) > limit:
                raise Refusal(
                    413, "git:lfs-too-large", f"an LFS batch request is at most {limit} bytes"
                )
        elif event is http1.END:
            return bytes(held)
        else:
            raise ConnectionError("the bottle's git-lfs went away mid-request")
