"""Secret scanning of what leaves the bottle: the proxy's DLP layer.

The request head (host labels, target, every header) is scanned before the
bundle opens an upstream connection. Bodies are scanned as they stream: a
plain body is forwarded except for a trailing window as long as the longest
possible match, so no complete secret leaves before it has been scanned; an
encoded body (gzip, deflate, br) is decoded within size and ratio caps,
scanned, and held whole until it is clean. A finding raises `Refusal` (or,
with `block = false`, is only recorded). Findings carry the pattern and the
location, never the matched bytes.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from claude_bottle.bottle_env import host_secrets
from claude_bottle.bundle.body_budget import HeldBytes, Hold
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.paths import cache_root
from claude_bottle.policy.dlp import (
    DecodeError,
    DecompressionBomb,
    Finding,
    Scanner,
    StreamScan,
    decoded_stream,
)
from claude_bottle.policy.dlp_http import CREDENTIAL_HEADERS, credential_views, userinfo_views

MAX_ENCODED_BODY = 32 * 1024 * 1024  # raw bytes held while an encoded body is scanned
DECODE_SLICE = 16 * 1024  # encoded bytes decoded at a time: what they decode to is scanned
# and dropped before the next slice, so decoding holds at most ~100 times this (the ratio cap)
MAX_DECODED_BODY = 64 * 1024 * 1024
_CACHE_KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")

Recorder = Callable[..., Any]
CREDENTIAL_RULE = "dlp:credential-in-auth-header"
WRONG_HOST_RULE = "credential-wrong-host"  # as injection.WRONG_HOST_RULE
# DLP's rule for a placeholder, named `placeholder.<ENV>` by the bundle (service._injector)
PLACEHOLDER_RULE = "secret:placeholder."
MAX_RULES_RECORDED = 16  # distinct rules counted in one audit record; more are only counted
MAX_LOCATIONS_RECORDED = 8


class DlpInspector:
    def __init__(
        self, scanner: Scanner, *, block: bool, record: Recorder, held: HeldBytes | None = None
    ) -> None:
        self.scanner = scanner
        self.block = block
        self.record = record
        self.held = HeldBytes() if held is None else held  # the bundle's, shared by all bodies

    def _hit(
        self,
        findings: list[Finding],
        method: str,
        host: str,
        port: int,
        path: str,
        credentials: list[Finding] | None = None,
        *,
        block: bool | None = None,
        canary: bool = False,
    ) -> bool:
        """Record the findings (one record, however many) and refuse as configured; True
        when something was found. `credentials` are the findings where HTTP carries
        credentials (authorization headers, cookies, URL userinfo): the bundle injected
        none of them, so they are refused even when DLP only logs, and `[dlp] ignore*`
        does not apply to them. With `canary` (what the proxy sends), a placeholder of an
        injected credential is refused likewise: it was left where it is not swapped."""
        ignored = [finding for finding in findings if finding.ignored]
        if ignored:  # [dlp] ignore*: let through, and say so in the audit log (one record)
            tally = Tally()
            tally.add(ignored)
            fingerprints = dict.fromkeys(finding.fingerprint for finding in ignored)
            self._record(
                tally,
                "allow",
                (method, host, port, path),
                ignored=list(fingerprints)[:MAX_RULES_RECORDED],
            )
            findings = [finding for finding in findings if not finding.ignored]
        if credentials:
            findings = credentials + findings
        if not findings:
            return False
        if block is None:
            block = self.block
        tripped = None
        if canary:
            tripped = next((f for f in findings if f.pattern.startswith(PLACEHOLDER_RULE)), None)
        refused = block or bool(credentials) or tripped is not None
        tally = Tally()
        tally.add(findings)
        self._record(tally, "deny" if refused else "log", (method, host, port, path))
        first = findings[0]
        if tripped is not None:
            raise Refusal(
                403,
                WRONG_HOST_RULE,
                f"the placeholder of an injected credential is in the {tripped.location}; "
                "it is swapped only in the request heads of its own hosts, so the request "
                "was not sent",
            )
        if credentials:
            raise Refusal(
                403,
                CREDENTIAL_RULE,
                f"a credential ({first.pattern}) is in the {first.location}; the bundle "
                "sends no credential it did not inject itself, so the request was not sent",
            )
        if block:
            raise Refusal(
                403,
                f"dlp:{first.pattern}",
                f"it looks like a secret ({first.pattern}) is in the {first.location}; "
                "the request was not sent",
            )
        return True

    def _record(
        self, tally: Tally, decision: str, where: tuple[str, str, int, str], **extra: object
    ) -> None:
        method, host, port, path = where
        self.record(
            "dlp",
            decision,
            rule=tally.rule,
            method=method,
            host=host,
            port=port,
            path=path,
            detail={**tally.detail(), **extra},
        )

    def check_host(self, method: str, host: str, port: int) -> None:
        """Scan host name labels; call it before the name is resolved."""
        self._hit(self.scanner.scan_host(host), method, host, port, "")

    def check_head(
        self,
        method: str,
        host: str,
        port: int,
        target: str,
        headers: Iterable[tuple[bytes, bytes]],
    ) -> None:
        raw = target.encode("latin-1", "replace")
        findings = self.scanner.scan(raw, "URL")
        # Query strings carry percent-encoded values (a webhook URL inside a parameter).
        decoded = unquote_to_bytes(raw.replace(b"+", b" "))
        if decoded != raw:
            findings += self.scanner.scan(decoded, "URL (decoded)")
        credentials: list[Finding] = []
        for name, value in headers:
            label = name.decode("latin-1")[:64]
            if name not in CREDENTIAL_HEADERS:
                findings += self.scanner.scan_header(name, value, f"{label} header")
                continue
            credentials += self.scanner.scan(value, f"{label} header")
            for location, view in credential_views(name, value):
                credentials += self.scanner.scan(view, location)
        self._hit(findings, method, host, port, target, credentials, canary=True)

    def check_userinfo(self, method: str, authority: str, port: int) -> None:
        """Scan the user and password of an authority (`user:pass@host`), decoded."""
        host = authority.rpartition("@")[2][:253]
        credentials: list[Finding] = []
        for location, view in userinfo_views(authority):
            credentials += self.scanner.scan(view, location)
        self._hit([], method, host, port, "", credentials)

    def watch(self, method: str, host: str, port: int, path: str, *, block: bool) -> BodyWatch:
        """A stream scan of one body whose findings are recorded, and refused when `block`
        (the API gateway's setting, not the proxy's)."""
        return BodyWatch(self, (method, host, port, path), block)

    def body(
        self, headers: Iterable[tuple[bytes, bytes]], method: str, host: str, port: int, path: str
    ) -> BodyGuard:
        encoding = b", ".join(v for n, v in headers if n == b"content-encoding").decode("latin-1")
        return BodyGuard(self, encoding.strip(), (method, host, port, path))


class Tally:
    """Counts of a request's findings for its one audit record, bounded however many there
    are (a body of thousands of fake keys must not write thousands of records)."""

    def __init__(self) -> None:
        self.count = 0
        self.rules: dict[str, int] = {}
        self.locations: list[str] = []

    @property
    def rule(self) -> str:
        return next(iter(self.rules))

    def add(self, findings: list[Finding]) -> None:
        self.count += len(findings)
        for finding in findings:
            rule = f"dlp:{finding.pattern}"
            if rule in self.rules or len(self.rules) < MAX_RULES_RECORDED:
                self.rules[rule] = self.rules.get(rule, 0) + 1
            known = finding.location in self.locations
            if not known and len(self.locations) < MAX_LOCATIONS_RECORDED:
                self.locations.append(finding.location)

    def detail(self) -> dict[str, object]:
        return {
            "location": self.locations[0],
            "findings": self.count,
            "rules": dict(self.rules),
            "locations": list(self.locations),
        }


class BodyWatch:
    """Scans a body fed chunk by chunk; the caller holds back `overlap` bytes until the
    next feed (or `finish`) has passed, so no complete secret leaves unscanned.

    The first finding is recorded (and refused, when `block`) at once; when findings are
    only logged, those in later chunks are counted and recorded together at the end, so a
    body writes at most two records."""

    def __init__(
        self, inspector: DlpInspector, where: tuple[str, str, int, str], block: bool
    ) -> None:
        self.inspector = inspector
        self.where = where
        self.block = block
        self.scan: StreamScan = inspector.scanner.stream("body")
        self.overlap = inspector.scanner.overlap
        self.reported = False
        self.later: Tally | None = None  # made only when a second chunk has findings
        self.canary = False  # placeholders are refused whatever `block` says (the proxy)

    def _check(self, findings: list[Finding]) -> None:
        if not findings:
            return
        if self.reported:
            if self.later is None:
                self.later = Tally()
            self.later.add(findings)
        else:
            self.reported = self.inspector._hit(
                findings, *self.where, block=self.block, canary=self.canary
            )

    def feed(self, chunk: bytes) -> None:
        self._check(self.scan.feed(chunk))

    def finish(self) -> None:
        self._check(self.scan.finish())
        if self.later is not None:
            self.inspector._record(self.later, "log", self.where)


class BodyGuard:
    """Feeds a request body through the scanner; returns what may be forwarded so far.

    An encoded body is held whole (its own cap, and the bundle's budget for held bytes)
    until it has been decoded and scanned; `release` gives its bytes back however the
    request ends."""

    def __init__(
        self, inspector: DlpInspector, encoding: str, where: tuple[str, str, int, str]
    ) -> None:
        self.watch = BodyWatch(inspector, where, inspector.block)
        self.watch.canary = True
        self.encoded = encoding.lower() not in ("", "identity")
        self.window = inspector.scanner.overlap
        self.held = bytearray()
        self.hold = Hold(
            inspector.held,
            MAX_ENCODED_BODY,
            "dlp:body-too-large",
            "an encoded body this large is not inspected",
        )
        self.decoder = None
        if self.encoded and "," in encoding.strip(", "):
            # Each stage may expand 100:1, so two would let one slice decode to 64 MiB at
            # once; no client stacks codings on a request.
            raise Refusal(
                415,
                "dlp:undecodable-body",
                "a body with more than one content-coding is not inspected",
            )
        if self.encoded:
            try:
                self.decoder = decoded_stream(encoding, MAX_DECODED_BODY)
            except DecodeError as exc:
                raise Refusal(
                    415, "dlp:undecodable-body", f"cannot inspect the body: {exc}"
                ) from exc

    def feed(self, chunk: bytes) -> bytes:
        if self.decoder is not None:
            self.hold.add(len(chunk))
            self.held += chunk
            for start in range(0, len(chunk), DECODE_SLICE):
                piece = chunk[start : start + DECODE_SLICE]
                self.watch.feed(self._decode(piece, final=False))
            return b""
        self.watch.feed(chunk)
        # Forward all but the last `window` bytes seen, copying the chunk once.
        held = len(self.held)
        cut = held + len(chunk) - self.window
        if cut <= held:
            ready = bytes(self.held[: max(0, cut)])
            del self.held[: max(0, cut)]
            self.held += chunk
            return ready
        view = memoryview(chunk)
        ready = b"".join((self.held, view[: cut - held]))
        self.held = bytearray(view[cut - held :])
        return ready

    def finish(self) -> bytes:
        if self.decoder is not None:
            self.watch.feed(self._decode(b"", final=True))
        self.watch.finish()
        ready = bytes(self.held)
        self.release()
        return ready

    def release(self) -> None:
        """Let go of what the body holds (idempotent)."""
        self.held = bytearray()
        self.hold.release()

    def _decode(self, chunk: bytes, *, final: bool) -> bytes:
        assert self.decoder is not None
        try:
            return self.decoder.finish() if final else self.decoder.feed(chunk)
        except DecompressionBomb as exc:
            raise Refusal(413, "dlp:decompression-bomb", f"refused: {exc}") from exc
        except DecodeError as exc:
            raise Refusal(415, "dlp:undecodable-body", f"cannot inspect the body: {exc}") from exc


class DirectoryCache:
    """Compiled DLP databases kept in a private directory, each written atomically.

    Every failure is a cache miss: a read-only or full disk costs a compile, nothing more.
    """

    MAX_BYTES = 64 << 20

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not _CACHE_KEY.fullmatch(key):
            raise ValueError(f"bad cache key {key!r}")
        return self.root / key

    def load(self, key: str) -> bytes | None:
        try:
            with self._path(key).open("rb") as handle:
                blob = handle.read(self.MAX_BYTES + 1)
        except OSError:
            return None
        return blob if len(blob) <= self.MAX_BYTES else None

    def store(self, key: str, blob: bytes) -> None:
        final = self._path(key)
        staging = final.with_name(f".{key}.{os.getpid()}.tmp")
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
            os.replace(staging, final)
        except OSError:
            with contextlib.suppress(OSError):
                staging.unlink()


def default_inspector(
    patterns: Iterable[tuple[str, str]],
    *,
    block: bool,
    record: Recorder,
    ignore: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
    held: HeldBytes | None = None,
    secrets: Mapping[str, str] | None = None,
) -> DlpInspector:
    """`ignore` is ([dlp] ignore, [dlp] ignore_fingerprints); `secrets` are values DLP
    looks for besides the host's own (injected credentials and their placeholders)."""
    cache = DirectoryCache(cache_root() / "dlp")
    rules, fingerprints = ignore
    scanner = Scanner(
        tuple(patterns),
        {**host_secrets(os.environ), **(secrets or {})},
        cache=cache,
        ignore_rules=rules,
        ignore_fingerprints=fingerprints,
    )
    return DlpInspector(scanner, block=block, record=record, held=held)
