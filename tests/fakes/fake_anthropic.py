"""FakeAnthropic: a stand-in for the Anthropic Messages API on 127.0.0.1, for tests.

It is a fake, not a mock of any client: it speaks HTTP/1.1 with keep-alive and answers

- `POST /v1/messages` with a canned assistant reply — a JSON `message`, or, when the body
  says `"stream": true`, the server-sent events the real API sends, in its order and shapes:
  `message_start` (with `usage.input_tokens`), `content_block_start`, `ping`,
  `content_block_delta` × N (`text_delta`), `content_block_stop`, `message_delta`
  (`stop_reason`, cumulative `usage.output_tokens`), `message_stop` — with `event_delay`
  seconds between events, over chunked transfer encoding;
- `POST /v1/messages/count_tokens`, `GET /v1/models`;
- `HEAD /` and `GET /` with 200; anything else with the API's JSON 404.

`reply`, when given, chooses the content of each `/v1/messages` answer from the request
(a list of content blocks, e.g. a `tool_use` block to make Claude Code run a tool; None
for the canned text); a reply with a `tool_use` block stops with `stop_reason: tool_use`.

Every request is recorded (method, path, headers, body) for assertions. If `api_key` or
`oauth_token` is set, calls without exactly that credential get the API's 401, so a test
(or Claude Code end to end) proves the real credential arrived. A client that disconnects
mid-stream is noticed between events (`disconnected`).

Run standalone with `python -m tests.fakes.fake_anthropic [--port N] [--text T]`.
"""

from __future__ import annotations

import argparse
import http.server
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

DEFAULT_TEXT = "Hello from the fake Anthropic API."
DEFAULT_MODEL = "claude-fake-1"
Reply = Callable[[dict[str, Any]], list[dict[str, Any]] | None]


@dataclass
class FakeRequest:
    method: str
    path: str  # as received, query included
    headers: dict[str, str]  # lowercased names; repeated headers joined with ", "
    raw_headers: list[tuple[str, str]]
    body: bytes
    received_at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


class FakeAnthropic:
    """The fake API server; use as a context manager. `url` is its base URL."""

    def __init__(
        self,
        text: str = DEFAULT_TEXT,
        *,
        event_delay: float = 0.0,
        deltas: int = 3,
        input_tokens: int = 12,
        output_tokens: int | None = None,
        api_key: str | None = None,
        oauth_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        reply: Reply | None = None,
    ) -> None:
        self.text = text
        self.reply = reply
        self.event_delay = event_delay
        self.deltas = max(1, deltas)
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens if output_tokens is not None else len(text.split())
        self.api_key = api_key
        self.oauth_token = oauth_token
        self.requests: list[FakeRequest] = []
        self.incomplete = 0  # requests whose body was cut short (never acted on)
        self.connections = 0
        self.disconnects = 0
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        self._message_seq = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                if self.connection.family in (socket.AF_INET, socket.AF_INET6):
                    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with fake._lock:
                    fake.connections += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_HEAD = do_DELETE = do_PUT = do_PATCH = _handle

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((host, port), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.host = host
        self.port: int = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    # --- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- request handling --------------------------------------------------------------

    def _serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        if body is None:  # cut short: like the real API, act on nothing, answer nothing
            with self._lock:
                self.incomplete += 1
            h.close_connection = True
            return
        raw = [(k.lower(), v) for k, v in h.headers.items()]
        headers: dict[str, str] = {}
        for name, value in raw:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        request = FakeRequest(h.command, h.path, headers, raw, body)
        with self._lock:
            self.requests.append(request)
        path = h.path.split("?", 1)[0]
        if path == "/" and h.command in ("HEAD", "GET"):
            _send_json(h, 200, {"ok": True})
            return
        if not path.startswith("/v1/"):
            _send_error(h, 404, "not_found_error", "Not found")
            return
        problem = self._auth_problem(headers)
        if problem:
            _send_error(h, 401, "authentication_error", problem)
            return
        if path == "/v1/messages" and h.command == "POST":
            self._messages(h, request)
        elif path == "/v1/messages/count_tokens" and h.command == "POST":
            _send_json(h, 200, {"input_tokens": self.input_tokens})
        elif path == "/v1/models" and h.command == "GET":
            model = {
                "type": "model",
                "id": DEFAULT_MODEL,
                "display_name": "Claude Fake",
                "created_at": "2025-01-01T00:00:00Z",
            }
            _send_json(
                h,
                200,
                {
                    "data": [model],
                    "has_more": False,
                    "first_id": model["id"],
                    "last_id": model["id"],
                },
            )
        else:
            _send_error(h, 404, "not_found_error", f"Not found: {h.command} {path}")

    def _auth_problem(self, headers: dict[str, str]) -> str | None:
        if self.api_key is not None and headers.get("x-api-key") != self.api_key:
            return "invalid x-api-key"
        if self.oauth_token is not None:
            if headers.get("authorization") != f"Bearer {self.oauth_token}":
                return "invalid bearer token"
            betas = [b.strip() for b in headers.get("anthropic-beta", "").split(",")]
            if "oauth-2025-04-20" not in betas:
                return "OAuth authentication is currently not supported."
        return None

    def _messages(self, h: http.server.BaseHTTPRequestHandler, request: FakeRequest) -> None:
        try:
            params = request.json()
        except ValueError:
            _send_error(h, 400, "invalid_request_error", "body is not JSON")
            return
        if not isinstance(params, dict):
            _send_error(h, 400, "invalid_request_error", "body must be an object")
            return
        requested = params.get("model")
        model = requested if isinstance(requested, str) else DEFAULT_MODEL
        with self._lock:
            self._message_seq += 1
            message_id = f"msg_fake{self._message_seq:020d}"
        blocks = self.reply(params) if self.reply is not None else None
        if blocks is None:
            blocks = [{"type": "text", "text": self.text}]
        if params.get("stream") is True:
            self._stream(h, message_id, model, blocks)
            return
        _send_json(
            h,
            200,
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": _stop_reason(blocks),
                "stop_sequence": None,
                "usage": self._usage(self.output_tokens),
            },
        )

    def _usage(self, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        }

    def events(
        self, message_id: str, model: str, blocks: list[dict[str, Any]] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """The SSE events of one streamed reply, in the real API's order and shapes."""
        blocks = blocks if blocks is not None else [{"type": "text", "text": self.text}]
        start: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(1),
        }
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start}),
        ]
        for index, block in enumerate(blocks):
            if block["type"] == "tool_use":
                opened = {**block, "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block["input"])}]
            else:
                opened = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in self._pieces(block["text"])]
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": opened},
                )
            )
            if index == 0:
                events.append(("ping", {"type": "ping"}))
            for delta in deltas:
                events.append(
                    (
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events += [
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(blocks), "stop_sequence": None},
                    "usage": {"output_tokens": self.output_tokens},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        return events

    def _pieces(self, text: str) -> list[str]:
        """`text` in `deltas` pieces, split at spaces."""
        words = text.split(" ")
        per = max(1, -(-len(words) // self.deltas))
        pieces = [" ".join(words[i : i + per]) for i in range(0, len(words), per)]
        return [p if i == 0 else " " + p for i, p in enumerate(pieces)]

    def _stream(
        self,
        h: http.server.BaseHTTPRequestHandler,
        message_id: str,
        model: str,
        blocks: list[dict[str, Any]],
    ) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream; charset=utf-8")
        h.send_header("cache-control", "no-cache")
        h.send_header("request-id", "req_fake_" + message_id[-12:])
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        try:
            h.wfile.flush()
            for index, (name, data) in enumerate(self.events(message_id, model, blocks)):
                if index and self._peer_closed(h.connection, self.event_delay):
                    raise ConnectionResetError("peer closed")
                frame = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                h.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                h.wfile.flush()
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except (ConnectionError, BrokenPipeError, OSError):
            with self._lock:
                self.disconnects += 1
            self.disconnected.set()
            h.close_connection = True

    @staticmethod
    def _peer_closed(sock: socket.socket, wait: float) -> bool:
        """Sleep up to `wait` seconds; True as soon as the client has closed its side."""
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([sock], [], [], max(0.0, remaining))
            if readable:
                try:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except ValueError:
                    pass  # TLS sockets cannot peek: a write will notice instead
                except (ConnectionError, OSError):
                    return True
                time.sleep(min(0.01, max(0.0, remaining)))  # pipelined data: keep waiting
            if remaining <= 0:
                return False


def _stop_reason(blocks: list[dict[str, Any]]) -> str:
    return "tool_use" if any(block["type"] == "tool_use" for block in blocks) else "end_turn"


def _read_body(h: http.server.BaseHTTPRequestHandler) -> bytes | None:
    """The request body, or None when the client closed before it ended."""
    if "chunked" in h.headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            line = h.rfile.readline()
            if not line:
                return None
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(body)
            chunk = h.rfile.read(size)
            if len(chunk) < size:
                return None
            body += chunk
            h.rfile.readline()
    length = int(h.headers.get("content-length") or 0)
    body = h.rfile.read(length) if length else b""
    return body if len(body) == length else None


def _send_json(h: http.server.BaseHTTPRequestHandler, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    h.send_response(status)
    h.send_header("content-type", "application/json")
    h.send_header("content-length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def _send_error(h: http.server.BaseHTTPRequestHandler, status: int, kind: str, msg: str) -> None:
    _send_json(h, status, {"type": "error", "error": {"type": kind, "message": msg}})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fake_anthropic", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--event-delay", type=float, default=0.0)
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)
    fake = FakeAnthropic(
        args.text, event_delay=args.event_delay, api_key=args.api_key, port=args.port
    )
    print(fake.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.close()


if __name__ == "__main__":
    main()
