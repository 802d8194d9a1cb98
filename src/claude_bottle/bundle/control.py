"""The control socket: how the host-side CLI talks to a running bundle.

One JSON object per line each way. It lives in the bottle's runtime dir but
is never mounted into the bottle, so only the host user reaches it.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from claude_bottle.errors import BottleError

MAX_LINE = 64 * 1024


class Stats:  # not a dataclass: see bundle/settings.py
    """The proxy's counters, as the `stats` request reports them (its `__dict__`)."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.tunnels = 0
        self.blocked = 0
        self.upstreams_reused = 0  # requests that took a parked upstream connection
        self.bytes_up = 0  # request bytes sent on to upstreams, as the audit records count


def call(control_socket: Path, op: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
    """Send one request to a bundle and return its answer; raise BottleError if unreachable."""
    request = json.dumps({"op": op, **args}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(control_socket))
            sock.sendall(request)
            buffer = b""
            while not buffer.endswith(b"\n") and len(buffer) < MAX_LINE:
                chunk = sock.recv(MAX_LINE)
                if not chunk:
                    break
                buffer += chunk
    except OSError as exc:
        raise BottleError(
            f"the bottle's bundle is not answering on {control_socket}: {exc.strerror or exc}",
            "check `claude-bottle ls`; a bottle whose bundle died has stopped",
        ) from exc
    try:
        answer = json.loads(buffer)
    except ValueError as exc:
        raise BottleError(f"the bundle sent a malformed answer on {control_socket}") from exc
    if not isinstance(answer, dict):
        raise BottleError(f"the bundle sent a malformed answer on {control_socket}")
    return answer
