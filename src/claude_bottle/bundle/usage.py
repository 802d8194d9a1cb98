"""Reading what an API call cost out of the bytes that pass the gateway.

`model_of` finds a request's top-level "model" in its first bytes; `UsageMeter` reads
token counts out of a response as it streams (JSON `usage`, or the SSE `message_start` /
`message_delta` events), in bounded memory. Neither keeps prompt text or the key.
"""

from __future__ import annotations

import json
import re

MODEL_SCAN_BYTES = 64 * 1024  # how much of a request body is looked at for "model"
MAX_JSON_ACCOUNTING = 4 * 1024 * 1024  # JSON responses larger than this are not parsed
MAX_SSE_EVENT = 1024 * 1024  # an SSE event larger than this is skipped, not buffered

_MODEL_NAME = re.compile(r"[A-Za-z0-9._:@/\[\]\-]{1,128}")
_MODEL_FALLBACK = re.compile(rb'(?<!\\)"model"\s*:\s*"([A-Za-z0-9._:@/\[\]\-]{1,128})"')


def _clean_model(value: object) -> str | None:
    if isinstance(value, str) and _MODEL_NAME.fullmatch(value):
        return value
    return None


def model_of(prefix: bytes, complete: bool) -> str | None:
    """The top-level "model" of a JSON request body from its first bytes, or None.

    `complete` says `prefix` is the whole body. Otherwise the top-level keys are walked in
    order until a value runs past the prefix, then a conservative pattern is tried.
    Only model-name characters are accepted, so no prompt text can come back from here.
    """
    if complete:
        try:
            data = json.loads(prefix)
        except (ValueError, UnicodeDecodeError):
            return None
        return _clean_model(data.get("model")) if isinstance(data, dict) else None
    text = prefix.decode("utf-8", "ignore")
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")

    def skip(i: int) -> int:
        match = ws.match(text, i)
        return match.end() if match else i

    i = skip(0)
    if text[i : i + 1] == "{":
        i += 1
        try:
            while True:
                i = skip(i)
                key, i = decoder.raw_decode(text, i)
                i = skip(i)
                if text[i : i + 1] != ":":
                    break
                value, i = decoder.raw_decode(text, skip(i + 1))
                if key == "model":
                    return _clean_model(value)
                i = skip(i)
                if text[i : i + 1] != ",":
                    break
                i += 1
        except (ValueError, IndexError):
            pass
    match = _MODEL_FALLBACK.search(prefix)
    return match.group(1).decode("ascii") if match else None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


class UsageMeter:
    """Reads token usage out of a response body as it streams by, in bounded memory."""

    def __init__(self, content_type: bytes, content_encoding: bytes) -> None:
        mime = content_type.split(b";")[0].strip().lower()
        encoded = content_encoding.strip().lower() not in (b"", b"identity")
        self.mode = (
            "none"
            if encoded
            else "sse"
            if mime == b"text/event-stream"
            else "json"
            if mime == b"application/json"
            else "none"
        )
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cache_read: int | None = None
        self.cache_creation: int | None = None
        self._buf = bytearray()
        self._skipping = False  # inside an oversized SSE event
        self._overflow = False  # JSON body too large

    def feed(self, data: bytes) -> None:
        if self.mode == "json":
            if not self._overflow:
                self._buf += data
                if len(self._buf) > MAX_JSON_ACCOUNTING:
                    self._overflow = True
                    self._buf.clear()
        elif self.mode == "sse":
            self._feed_sse(data)

    def finish(self) -> None:
        if self.mode == "json" and not self._overflow and self._buf:
            try:
                data = json.loads(bytes(self._buf))
            except (ValueError, UnicodeDecodeError):
                data = None
            if isinstance(data, dict):
                self._usage(data.get("usage"))
        elif self.mode == "sse" and self._buf and not self._skipping:
            self._event(bytes(self._buf))
        self._buf.clear()

    def _feed_sse(self, data: bytes) -> None:
        self._buf += data
        if b"\r" in self._buf:
            # normalise CRLF; a lone trailing CR waits for its LF
            tail = self._buf.endswith(b"\r")
            body = bytes(self._buf[:-1] if tail else self._buf).replace(b"\r\n", b"\n")
            self._buf = bytearray(body + (b"\r" if tail else b""))
        while True:
            cut = self._buf.find(b"\n\n")
            if cut < 0:
                break
            block = bytes(self._buf[:cut])
            del self._buf[: cut + 2]
            if self._skipping:
                self._skipping = False
            else:
                self._event(block)
        if len(self._buf) > MAX_SSE_EVENT:
            self._skipping = True
            self._buf.clear()

    def _event(self, block: bytes) -> None:
        name = b""
        data_lines: list[bytes] = []
        for line in block.split(b"\n"):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"event":
                name = value.strip()
            elif field == b"data":
                data_lines.append(value)
        data = b"\n".join(data_lines)
        wanted = name in (b"message_start", b"message_delta") or (not name and b'"message_' in data)
        if not wanted or not data:
            return
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._usage(message.get("usage"))
        elif event.get("type") == "message_delta":
            self._usage(event.get("usage"))

    def _usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        for key, attr in (
            ("input_tokens", "input_tokens"),
            ("output_tokens", "output_tokens"),
            ("cache_read_input_tokens", "cache_read"),
            ("cache_creation_input_tokens", "cache_creation"),
        ):
            value = _int_or_none(usage.get(key))
            if value is not None:
                setattr(self, attr, value)  # later events carry cumulative totals
