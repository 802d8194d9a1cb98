"""Test upstreams on loopback: the "internet" a bottle reaches through its bundle.

`RecordingHTTPServer` answers every request with 200 and remembers what it
received (method, path, headers, body) so tests can prove what did and did
not get through. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.server
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingHTTPServer:
    host: str = "127.0.0.1"
    requests: list[Received] = field(default_factory=list)
    # Close a kept-alive connection when its second request arrives, unanswered: what a
    # server whose keep-alive timeout has just expired does.
    drop_second_request: bool = False
    connections: int = 0

    def __post_init__(self) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            served = 0

            def setup(self) -> None:
                super().setup()
                outer.connections += 1

            def _handle(self) -> None:
                self.served += 1
                if outer.drop_second_request and self.served == 2:
                    self.close_connection = True
                    return
                if "chunked" in self.headers.get("transfer-encoding", "").lower():
                    body = self._read_chunked()
                else:
                    length = int(self.headers.get("content-length") or 0)
                    body = self.rfile.read(length) if length else b""
                outer.requests.append(
                    Received(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                payload = b"hello from upstream " + self.path.encode() + b"\n"
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _read_chunked(self) -> bytes:
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return body
                    body += self.rfile.read(size)
                    self.rfile.readline()

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class Server(http.server.ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.server = Server((self.host, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class UDPSink:
    """Counts datagrams arriving on a loopback port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
        )
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]

    def received(self) -> int:
        count = 0
        while True:
            try:
                self.sock.recv(65536)
                count += 1
            except (TimeoutError, BlockingIOError):
                return count

    def close(self) -> None:
        self.sock.close()
