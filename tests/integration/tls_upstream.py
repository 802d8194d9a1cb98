"""A TLS upstream on loopback, signed by a throwaway test CA (stands in for an HTTPS site)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.dev_upstreams import _tls
from tests.integration.upstream import RecordingHTTPServer


class TLSUpstream(RecordingHTTPServer):
    """RecordingHTTPServer behind TLS for `hostname`; `ca_file` is what verifies it."""

    def __init__(self, directory: Path, hostname: str) -> None:
        super().__init__()
        context, self.ca_file = _tls(directory, (hostname,))
        self.server.socket = context.wrap_socket(
            self.server.socket, server_side=True, do_handshake_on_connect=False
        )
