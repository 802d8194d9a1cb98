"""The bounded attacks on a bundle's memory and connections (issue 27 item 2, row 5).

Runs a real bundle process (DLP on, an allowed host pinned to a local server, the API
gateway pointed at the same server) and attacks it the way a bottle could, within the
issue's bounds (at most 60 s, 3,000 connections, 1.5 GiB sent):

- held: connections each send all but the last byte of a 30 MiB gzip body, which the
  bundle must hold whole to scan; before the budget, 40 took it from 36 to 1,393 MiB.
- waiting: 1,024 idle connections fill the proxy's slots, then more connections each
  push as many bytes as the socket takes while they wait for a slot.

After each: the bundle's peak RSS, how the attack was refused, and whether the gateway
(whose slots the proxy's connections cannot take) and the control socket still answer.

    python benchmarks/attack_bundle.py            # the full attacks
    python benchmarks/attack_bundle.py --quick    # the short version the unit tests run
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from claude_bottle.bundle.settings import BundleSettings, Pin

HELD_BODY = 30 * 1024 * 1024
RSS_BOUND_MIB = 256


class _Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        while length > 0:
            length -= len(self.rfile.read(min(length, 1 << 16)))
        body = b'{"data": []}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # the bundle closed a refused request's upstream
            super().handle()


@dataclass
class Bundle:
    process: subprocess.Popen[bytes]
    settings: BundleSettings

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("the bundle has exited")


@contextlib.contextmanager
def running_bundle(directory: Path) -> Iterator[Bundle]:
    """A bundle serving in `directory`, with a local server as allowed.test and the API."""
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = upstream.server_address[1]
    stalled = socket.create_server(("127.0.0.1", 0), backlog=4096)  # accepts, never reads
    accepted: list[socket.socket] = []

    def hold() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(stalled.accept()[0])

    threading.Thread(target=hold, daemon=True).start()
    settings = BundleSettings(
        bottle="attack",
        proxy_socket=str(directory / "proxy.sock"),
        control_socket=str(directory / "control.sock"),
        gateway_socket=str(directory / "gateway.sock"),
        audit_log=str(directory / "audit.jsonl"),
        allow=("allowed.test", "stalled.test"),
        pins=(
            Pin("allowed.test", "127.0.0.1", port),
            Pin("stalled.test", "127.0.0.1", stalled.getsockname()[1]),
        ),
        dlp_enabled=True,
        anthropic_upstream=f"http://127.0.0.1:{port}",
    )
    settings_file = directory / "bundle.json"
    settings.dump(settings_file)
    ready_r, ready_w = os.pipe()
    argv = [sys.executable, "-m", "claude_bottle.bundle.server", str(settings_file)]
    process = subprocess.Popen(
        [*argv, "--ready-fd", str(ready_w)],
        pass_fds=(ready_w,),
        env={**os.environ, "ANTHROPIC_API_KEY": "attack-test-not-a-key"},
        stderr=subprocess.DEVNULL,
    )
    os.close(ready_w)
    try:
        with os.fdopen(ready_r, "rb") as ready:
            if ready.readline() != b"ready\n":
                raise RuntimeError("the bundle did not get ready")
        bundle = Bundle(process, settings)
        # The DLP engine compiles on the first proxy connection: wait for it to serve.
        deadline = time.monotonic() + 60
        while proxy_status(bundle) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield bundle
    finally:
        process.kill()
        process.wait()
        upstream.shutdown()
        stalled.close()
        for sock in accepted:
            sock.close()


def _connect_once(path: str, timeout: float) -> socket.socket:
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(timeout)
    try:
        client.connect(path)
    except OSError:
        client.close()
        raise
    return client


def _connect(path: str, timeout: float) -> socket.socket:
    """A connection to `path`, retried for a second while the listener's backlog is full
    (as a client would): what stays refused is counted as not accepted."""
    for _ in range(49):
        with contextlib.suppress(BlockingIOError):
            return _connect_once(path, timeout)
        time.sleep(0.02)
    return _connect_once(path, timeout)


def _status(client: socket.socket) -> int:
    """The status of the answer on `client`, 0 if none came."""
    try:
        head = client.recv(4096)
    except OSError:
        return 0
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") else 0


def proxy_status(bundle: Bundle) -> int:
    try:
        with _connect(bundle.settings.proxy_socket, 10) as client:
            client.sendall(b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
            return _status(client)
    except OSError:
        return 0


def gateway_status(bundle: Bundle) -> int:
    assert bundle.settings.gateway_socket is not None
    try:
        with _connect(bundle.settings.gateway_socket, 10) as client:
            client.sendall(b"GET /v1/models HTTP/1.1\r\nHost: api\r\n\r\n")
            return _status(client)
    except OSError:
        return 0


def control_answers(bundle: Bundle) -> bool:
    try:
        with _connect(bundle.settings.control_socket, 10) as client:
            client.sendall(b'{"op": "ping"}\n')
            return json.loads(client.recv(4096)).get("ok") is True
    except (OSError, ValueError):
        return False


@dataclass
class Outcome:
    attack: str
    rss_before_mib: float
    rss_peak_mib: float
    refusals: dict[str, int]  # rule (or "none") -> connections
    gateway_status: int
    control_answers: bool

    @property
    def bounded(self) -> bool:
        return self.rss_peak_mib < RSS_BOUND_MIB and self.gateway_status == 200


def _rule(answer: bytes) -> str:
    for line in answer.split(b"\r\n"):
        if line.lower().startswith(b"x-claude-bottle-block:"):
            return line.split(b":", 1)[1].strip().decode()
    return "none"


def held_bodies(bundle: Bundle, connections: int) -> Outcome:
    """Each connection sends all but the last byte of a 30 MiB gzip body and waits."""
    body = gzip.compress(os.urandom(HELD_BODY), compresslevel=1)
    head = (
        b"POST http://allowed.test/upload HTTP/1.1\r\nHost: allowed.test\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    before = peak = bundle.rss_mib()
    open_: list[socket.socket] = []
    refusals: dict[str, int] = {}
    try:
        for _ in range(connections):
            try:
                client = _connect(bundle.settings.proxy_socket, 20)
            except OSError:
                refusals["not-accepted"] = refusals.get("not-accepted", 0) + 1
                continue
            open_.append(client)
            with contextlib.suppress(OSError):  # refused: the bundle stopped reading
                client.sendall(head + body[:-1])
            client.settimeout(0.5)
            try:
                answer = client.recv(4096)
            except TimeoutError:
                answer = b""  # held: no answer yet
            except OSError:
                answer = b"reset"
            if answer:
                rule = _rule(answer)
                refusals[rule] = refusals.get(rule, 0) + 1
            peak = max(peak, bundle.rss_mib())
        return Outcome(
            "held", before, peak, refusals, gateway_status(bundle), control_answers(bundle)
        )
    finally:
        for client in open_:
            client.close()


def waiting_connections(bundle: Bundle, idle: int, pushing: int) -> Outcome:
    """`idle` connections that send nothing (the proxy's slots), then `pushing` more that
    each write what their socket takes while they wait."""
    before = peak = bundle.rss_mib()
    open_: list[socket.socket] = []
    refusals: dict[str, int] = {}
    chunk = b"P" * (64 * 1024)
    try:
        for _ in range(idle):
            with contextlib.suppress(OSError):  # a full backlog: counted with the pushers
                open_.append(_connect(bundle.settings.proxy_socket, 10))
        pushers = []
        for _ in range(pushing):
            try:
                client = _connect(bundle.settings.proxy_socket, 10)
            except OSError:  # the backlog is full: the bundle stopped accepting
                refusals["not-accepted"] = refusals.get("not-accepted", 0) + 1
                continue
            client.setblocking(False)
            for _ in range(16):  # up to 1 MiB, as far as the socket takes it
                try:
                    client.send(chunk)
                except OSError:
                    break
            pushers.append(client)
            open_.append(client)
        time.sleep(2)  # the bundle accepts (and turns away) what its backlog holds
        peak = max(peak, bundle.rss_mib())
        gateway = gateway_status(bundle)
        control = control_answers(bundle)
        peak = max(peak, bundle.rss_mib())
        for client in pushers:
            try:
                answer = client.recv(4096)
            except BlockingIOError:
                answer = b""
            except OSError:
                answer = b"reset"
            rule = _rule(answer) if answer else "waiting"
            refusals[rule] = refusals.get(rule, 0) + 1
        return Outcome("waiting", before, peak, refusals, gateway, control)
    finally:
        for client in open_:
            client.close()


def stalled_upstream(bundle: Bundle, connections: int) -> Outcome:
    """Connections with a slot each upload to a server that never reads: what the bundle
    buffers per connection (its stream and its write buffer), times every slot."""
    before = peak = bundle.rss_mib()
    head = (
        b"POST http://stalled.test/upload HTTP/1.1\r\nHost: stalled.test\r\n"
        b"Content-Length: %d\r\n\r\n" % (64 << 20)
    )
    chunk = b"U" * (64 * 1024)
    open_: list[socket.socket] = []
    try:
        for _ in range(connections):
            try:
                client = _connect(bundle.settings.proxy_socket, 10)
                client.sendall(head)
            except OSError:
                continue
            client.setblocking(False)
            open_.append(client)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # push until nothing more is taken
            moved = 0
            for client in open_:
                with contextlib.suppress(OSError):
                    moved += client.send(chunk)
            peak = max(peak, bundle.rss_mib())
            if not moved:
                break
        time.sleep(1)
        peak = max(peak, bundle.rss_mib())
        return Outcome(
            "stalled-upstream", before, peak, {}, gateway_status(bundle), control_answers(bundle)
        )
    finally:
        for client in open_:
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short version (CI)")
    args = parser.parse_args(argv)
    held, idle, pushing, uploading = (4, 1024, 600, 256) if args.quick else (40, 1024, 1900, 1024)
    bounded = True
    for attack in (
        lambda bundle: held_bodies(bundle, held),
        lambda bundle: waiting_connections(bundle, idle, pushing),
        lambda bundle: stalled_upstream(bundle, uploading),
    ):
        with tempfile.TemporaryDirectory() as directory, running_bundle(Path(directory)) as bundle:
            outcome = attack(bundle)
        print(json.dumps({**outcome.__dict__, "bounded": outcome.bounded}, sort_keys=True))
        bounded = bounded and outcome.bounded
    return 0 if bounded else 1


if __name__ == "__main__":
    sys.exit(main())
