"""Undo a request body's Content-Encoding for scanning, within output and ratio caps.

`decoded_stream` returns a `Decoder` fed chunk by chunk; gzip (any number of
members), deflate (zlib-wrapped or raw) and br (with the `brotli` package,
1.2 or later) are undone; anything else raises `UnsupportedEncoding`. A
decompression bomb raises `DecompressionBomb` instead of being inflated;
every error is a `DecodeError`, and the body must then be refused.
"""

from __future__ import annotations

import importlib
import zlib
from typing import Any, Protocol


class DecodeError(ValueError):
    """A body that cannot be decoded for scanning (and so must not be forwarded)."""


class UnsupportedEncoding(DecodeError):
    """A Content-Encoding the scanner cannot undo."""


class DecompressionBomb(DecodeError):
    """Decoded output past the size cap, or expanding faster than the ratio cap."""


class CorruptBody(DecodeError):
    """Compressed data that is malformed or truncated."""


PIECE = 64 * 1024  # largest output produced per decompressor call
RATIO_GRACE = 1 << 20  # output allowed before the ratio cap applies
MAX_RATIO = 100


class _Stage(Protocol):
    def feed(self, data: bytes) -> list[bytes]: ...

    def finish(self) -> list[bytes]: ...


class _Limits:
    def __init__(self, coding: str, max_output: int, max_ratio: int) -> None:
        self.coding = coding
        self.max_output = max_output
        self.max_ratio = max_ratio
        self.consumed = 0
        self.produced = 0

    def account(self, produced: int) -> None:
        self.produced += produced
        if self.produced > self.max_output:
            raise DecompressionBomb(
                f"{self.coding} body decodes to more than {self.max_output} bytes"
            )
        if self.produced > RATIO_GRACE and self.produced > self.max_ratio * max(self.consumed, 1):
            raise DecompressionBomb(
                f"{self.coding} body expands more than {self.max_ratio}:1 "
                f"({self.consumed} bytes gave {self.produced})"
            )


class _ZlibStage:
    """gzip (any number of members) or deflate (zlib-wrapped or raw, as sent in the wild)."""

    def __init__(self, coding: str, limits: _Limits) -> None:
        self._coding = coding
        self._limits = limits
        self._pending = b""  # deflate: bytes held until the wrapper is known
        self._inflater: Any = None
        self._member_bytes = 0  # compressed bytes consumed by the current gzip member
        self._ended = False
        if coding == "gzip":
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def _start_deflate(self) -> None:
        head = self._pending
        wrapped = len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        self._inflater = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> list[bytes]:
        if self._inflater is None:
            self._pending += data
            if len(self._pending) < 2:
                return []
            self._start_deflate()
            data, self._pending = self._pending, b""
        out: list[bytes] = []
        self._run(data, out)
        return out

    def _run(self, data: bytes, out: list[bytes]) -> None:
        try:
            self._inflate(data, out)
        except zlib.error as exc:
            raise CorruptBody(f"{self._coding} body is corrupt ({exc})") from None

    def _after_end(self, rest: bytes) -> bytes:
        """Bytes after the end of a stream: another gzip member, zero padding, or an error."""
        if not rest.strip(b"\0"):
            self._ended = True
            return b""
        if self._coding != "gzip":
            raise CorruptBody(f"{self._coding} body has data after its end")
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._member_bytes = 0
        self._ended = False
        return rest

    def _inflate(self, data: bytes, out: list[bytes]) -> None:
        if self._ended:
            data = self._after_end(data)
        while data or not self._ended:
            inflater = self._inflater
            before = len(data)
            piece = inflater.decompress(data, PIECE)
            data = inflater.unconsumed_tail
            self._limits.consumed += before - len(data)
            self._member_bytes += before - len(data)
            if piece:
                self._limits.account(len(piece))
                out.append(piece)
            if inflater.eof:
                data = self._after_end(inflater.unused_data)
                continue
            if not data and len(piece) < PIECE:
                return

    def finish(self) -> list[bytes]:
        out: list[bytes] = []
        if self._inflater is None:
            if not self._pending:
                return out
            self._start_deflate()
            data, self._pending = self._pending, b""
            self._run(data, out)
        self._run(b"", out)
        if not self._ended and (self._member_bytes or self._coding != "gzip"):
            raise CorruptBody(f"{self._coding} body is truncated")
        return out


def _brotli() -> Any:
    try:
        module: Any = importlib.import_module("brotli")
        module.Decompressor().process(b"", output_buffer_limit=1)
    except (ImportError, TypeError, AttributeError):
        return None  # absent, or older than 1.2 (no output limit: bombs cannot be bounded)
    return module


class _BrotliStage:
    def __init__(self, limits: _Limits, module: Any) -> None:
        self._limits = limits
        self._module = module
        self._decompressor = module.Decompressor()

    def _drain(self, data: bytes, out: list[bytes]) -> None:
        decompressor = self._decompressor
        try:
            piece = decompressor.process(data, output_buffer_limit=PIECE)
            self._limits.consumed += len(data)
            while True:
                if piece:
                    self._limits.account(len(piece))
                    out.append(piece)
                if decompressor.can_accept_more_data():
                    return
                piece = decompressor.process(b"", output_buffer_limit=PIECE)
        except self._module.error as exc:
            raise CorruptBody(f"br body is corrupt ({exc})") from None

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if data:
            if self._decompressor.is_finished():
                raise CorruptBody("br body has data after its end")
            self._drain(data, out)
        return out

    def finish(self) -> list[bytes]:
        if not self._decompressor.is_finished():
            raise CorruptBody("br body is truncated")
        return []


SUPPORTED_ENCODINGS = ("gzip", "x-gzip", "deflate", "br", "identity")


class Decoder:
    """Undo a Content-Encoding chunk by chunk, within the output and ratio caps.

    `feed` returns the decoded bytes available so far (possibly empty);
    `finish` returns the rest and raises CorruptBody if the data stopped
    early. Every error is a DecodeError; the body must then be refused.
    """

    def __init__(self, stages: list[_Stage]) -> None:
        self._stages = stages
        self.decoded = 0

    def _run(self, data: bytes, final: bool) -> bytes:
        pieces = [data] if data else []
        for stage in self._stages:
            produced: list[bytes] = []
            for piece in pieces:
                produced.extend(stage.feed(piece))
            if final:
                produced.extend(stage.finish())
            pieces = produced
        result = b"".join(pieces)
        self.decoded += len(result)
        return result

    def feed(self, chunk: bytes) -> bytes:
        return self._run(bytes(chunk), final=False)

    def finish(self) -> bytes:
        return self._run(b"", final=True)


def decoded_stream(content_encoding: str, max_output: int, max_ratio: int = MAX_RATIO) -> Decoder:
    """A Decoder for a body sent with `Content-Encoding: content_encoding`.

    Codings are listed in the order they were applied and undone in reverse;
    "identity" and an empty value mean none (then nothing is capped: the
    output is the input). gzip, x-gzip, deflate and br (when the `brotli`
    package, 1.2 or later, is importable) are supported; anything else
    raises UnsupportedEncoding rather than letting undecodable bytes through.
    Each stage raises DecompressionBomb once its output passes `max_output`
    bytes, or `max_ratio` times its input after the first MiB.
    """
    codings = [part.strip().lower() for part in content_encoding.split(",")]
    codings = [coding for coding in codings if coding and coding != "identity"]
    stages: list[_Stage] = []
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip", "deflate"):
            kind = "deflate" if coding == "deflate" else "gzip"
            stages.append(_ZlibStage(kind, _Limits(kind, max_output, max_ratio)))
        elif coding == "br":
            module = _brotli()
            if module is None:
                raise UnsupportedEncoding(
                    "Content-Encoding br needs the 'brotli' package (1.2 or later), "
                    "which is not installed"
                )
            stages.append(_BrotliStage(_Limits("br", max_output, max_ratio), module))
        else:
            shown = coding.encode("ascii", "backslashreplace").decode("ascii")[:40]
            raise UnsupportedEncoding(
                f"Content-Encoding '{shown}' is not supported for scanning "
                f"(supported: gzip, deflate, br, identity)"
            )
    return Decoder(stages)
