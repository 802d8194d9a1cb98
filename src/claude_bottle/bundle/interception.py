"""TLS interception of CONNECT tunnels, without `cryptography`: the bottle's CA as an
`Authority`, and how upstream servers are verified.

Split from `tls` so that a bundle whose CA was minted ahead (`ca_pool`) is ready, and
serves every plain request, without loading `cryptography` (~45 ms of CPU and ~7 MiB
per bundle); `tls` loads on the first intercepted connection.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from claude_bottle.policy.allowlist import Allowlist


class Authority(Protocol):
    """What interception asks of the bottle's CA: a server context for a name."""

    def server_context(self, host: str) -> ssl.SSLContext: ...


def upstream_context(extra_ca_file: str | None = None) -> ssl.SSLContext:
    """Verify upstream servers against the host's trust store (plus an optional extra CA)."""
    context = ssl.create_default_context()
    if extra_ca_file:
        context.load_verify_locations(cafile=extra_ca_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


class Interception:
    """TLS interception of CONNECT tunnels: the bottle's CA, and how upstreams are verified.

    Loading the host's trust store takes ~30 ms, so the upstream context is made on
    first use (or ahead of it by `warm`, off the event loop), not before the bundle
    is ready.
    """

    def __init__(
        self,
        authority: Authority,
        make_upstream: Callable[[], ssl.SSLContext],
        exclude: Allowlist,
    ) -> None:
        self.authority = authority
        self.exclude = exclude  # hosts tunnelled as opaque bytes
        self._make_upstream = make_upstream
        self._upstream: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    @property
    def upstream(self) -> ssl.SSLContext:
        with self._lock:
            if self._upstream is None:
                self._upstream = self._make_upstream()
            return self._upstream

    def warm(self) -> None:
        self.upstream  # noqa: B018 - made and kept for the first connection

    def applies_to(self, host: str) -> bool:
        return not self.exclude.check(host).allowed
