"""Secret scanning of what leaves the bottle: the proxy's DLP layer.

The request head (host labels, target, every header) is scanned before the
bundle opens an upstream connection. Bodies are scanned as they stream: a
plain body is forwarded except for a trailing window as long as the longest
possible match, so no complete secret leaves before it has been scanned; an
encoded body (gzip, deflate, br) is decoded within size and ratio caps,
scanned, and held whole until it is clean. A finding raises `Blocked` (or,
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

from claude_bottle.bottle_env import SECRET_NAME
from claude_bottle.bundle.gate import Blocked
from claude_bottle.paths import cache_root
from claude_bottle.policy.dlp import (
    DecodeError,
    DecompressionBomb,
    Finding,
    Scanner,
    StreamScan,
    decoded_stream,
)

MAX_ENCODED_BODY = 32 * 1024 * 1024  # raw bytes held while an encoded body is scanned
MAX_DECODED_BODY = 64 * 1024 * 1024
_CACHE_KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")

Recorder = Callable[..., Any]


def host_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """The user's own secret values: host variables whose names say they are secrets.

    Values that are paths or socket addresses (SSH_AUTH_SOCK, DBUS_SESSION_BUS_ADDRESS)
    are not secrets, and fingerprinting them would block any request mentioning them.
    """
    return {
        name: value
        for name, value in env.items()
        if SECRET_NAME.search(name) and value and not value.startswith(("/", "unix:"))
    }


class DlpInspector:
    def __init__(self, scanner: Scanner, *, block: bool, record: Recorder) -> None:
        self.scanner = scanner
        self.block = block
        self.record = record

    def _hit(self, findings: list[Finding], method: str, host: str, port: int, path: str) -> None:
        for finding in findings:
            if finding.ignored:  # [dlp] ignore*: let through, and say so in the audit log
                self.record(
                    "dlp",
                    "allow",
                    rule=f"dlp:{finding.pattern}",
                    method=method,
                    host=host,
                    port=port,
                    path=path,
                    detail={"location": finding.location, "ignored": finding.fingerprint},
                )
        findings = [finding for finding in findings if not finding.ignored]
        if not findings:
            return
        first = findings[0]
        for finding in findings:
            self.record(
                "dlp",
                "deny" if self.block else "log",
                rule=f"dlp:{finding.pattern}",
                method=method,
                host=host,
                port=port,
                path=path,
                detail={"location": finding.location, "patterns": len(findings)},
            )
        if self.block:
            raise Blocked(
                f"dlp:{first.pattern}",
                f"it looks like a secret ({first.pattern}) is in the {first.location}; "
                "the request was not sent",
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
        for name, value in headers:
            label = name.decode("latin-1")[:64]
            findings += self.scanner.scan_header(name, value, f"{label} header")
        self._hit(findings, method, host, port, target)

    def body(
        self, headers: Iterable[tuple[bytes, bytes]], method: str, host: str, port: int, path: str
    ) -> BodyGuard:
        encoding = b", ".join(v for n, v in headers if n == b"content-encoding").decode("latin-1")
        return BodyGuard(self, encoding.strip(), (method, host, port, path))


class BodyGuard:
    """Feeds a request body through the scanner; returns what may be forwarded so far."""

    def __init__(
        self, inspector: DlpInspector, encoding: str, where: tuple[str, str, int, str]
    ) -> None:
        self.inspector = inspector
        self.where = where
        self.scan: StreamScan = inspector.scanner.stream("body")
        self.encoded = encoding.lower() not in ("", "identity")
        self.window = inspector.scanner.overlap
        self.held = b""
        self.decoder = None
        if self.encoded:
            try:
                self.decoder = decoded_stream(encoding, MAX_DECODED_BODY)
            except DecodeError as exc:
                raise Blocked(
                    "dlp:undecodable-body", f"cannot inspect the body: {exc}", 415
                ) from exc

    def _check(self, findings: list[Finding]) -> None:
        self.inspector._hit(findings, *self.where)

    def feed(self, chunk: bytes) -> bytes:
        self.held += chunk
        if self.decoder is not None:
            if len(self.held) > MAX_ENCODED_BODY:
                raise Blocked(
                    "dlp:body-too-large", "an encoded body this large is not inspected", 413
                )
            self._check(self.scan.feed(self._decode(chunk, final=False)))
            return b""
        self._check(self.scan.feed(chunk))
        cut = max(0, len(self.held) - self.window)
        ready, self.held = self.held[:cut], self.held[cut:]
        return ready

    def finish(self) -> bytes:
        if self.decoder is not None:
            self._check(self.scan.feed(self._decode(b"", final=True)))
        self._check(self.scan.finish())
        ready, self.held = self.held, b""
        return ready

    def _decode(self, chunk: bytes, *, final: bool) -> bytes:
        assert self.decoder is not None
        try:
            return self.decoder.finish() if final else self.decoder.feed(chunk)
        except DecompressionBomb as exc:
            raise Blocked("dlp:decompression-bomb", f"refused: {exc}", 413) from exc
        except DecodeError as exc:
            raise Blocked("dlp:undecodable-body", f"cannot inspect the body: {exc}", 415) from exc


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
) -> DlpInspector:
    """`ignore` is ([dlp] ignore, [dlp] ignore_fingerprints)."""
    cache = DirectoryCache(cache_root() / "dlp")
    rules, fingerprints = ignore
    scanner = Scanner(
        tuple(patterns),
        host_secrets(os.environ),
        cache=cache,
        ignore_rules=rules,
        ignore_fingerprints=fingerprints,
    )
    return DlpInspector(scanner, block=block, record=record)
