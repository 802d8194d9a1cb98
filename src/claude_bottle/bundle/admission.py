"""The egress proxy's admission pipeline, one sans-IO step per stage of a request.

Every request from the bottle passes the same stages in the same order, whichever way
it arrives (absolute-form HTTP, a CONNECT tunnel, a request inside an intercepted one):

1. connect-time: the authority is parsed, its labels are scanned (before any DNS: a
   lookup of an encoded label is itself the leak), and the gate matches the host against
   the allowlist and resolves it to an address it checked (`gate.EgressGate`);
2. request head: the URL and every header are scanned (`scanning.DlpInspector`), and
   credentials are decoded where HTTP carries them (`policy.dlp_http`);
3. body: a `scanning.BodyGuard` releases only bytes it has scanned;
4. response: only end-to-end headers go back (`connection.forwarded_headers`);
5. audit: one record per decision, built here so each caller records the same fields.

The API gateway runs the same stages with its own policy (`api_policy.GatewayPolicy`:
head admission, `BodyCheck`, `downstream_headers`) and the same `Refusal`.

A stage says no by raising `Refusal`; the connection turns it into the answer. Nothing
here touches a socket: the gate's resolver is injected, and the recorder is a callable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from claude_bottle.bundle.gate import Destination, EgressGate, parse_authority
from claude_bottle.bundle.git_policy import push_outside_gate
from claude_bottle.bundle.refusal import Refusal

if TYPE_CHECKING:  # the DLP engine is imported only when enabled
    from claude_bottle.bundle.scanning import BodyGuard, DlpInspector

Recorder = Callable[..., Any]


def absolute_target(target: str) -> tuple[str, str]:
    """Split an absolute-form `http://` target into (authority, origin-form path)."""
    if not target.startswith("http://"):
        if target.startswith("https://"):
            raise Refusal(400, "error:https-absolute", "use CONNECT for https:// URLs")
        raise Refusal(
            400,
            "error:not-a-proxy-request",
            "requests must use an absolute http:// URL (this is a forward proxy)",
        )
    rest = target[len("http://") :]
    cut = min(
        (i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
        default=len(rest),
    )
    authority, path = rest[:cut], rest[cut:]
    path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    return authority, path


def refused_where(target: str, default_port: int) -> tuple[str, int, str]:
    """Host, port and path to record for a request refused before it had a destination:
    what the client asked for, as far as it parses, and never its userinfo (a credential).
    `target` is a CONNECT authority (`default_port` 443) or a request line's target."""
    path = ""
    authority = target
    if default_port != 443:
        if "://" not in target:
            return "-", 0, target
        authority, path = absolute_target("http://" + target.split("://", 1)[1])
    authority = authority.rpartition("@")[2]
    try:
        host, port = parse_authority(authority, default_port)
    except Refusal:
        return authority[:253], 0, path
    return host[:253], port, path


class EgressAdmission:
    """Decides, stage by stage, whether a request from the bottle may leave, and where to."""

    def __init__(self, gate: EgressGate, inspector: DlpInspector | None = None) -> None:
        self.gate = gate
        self.inspector = inspector

    async def destination(self, method: str, authority: str, default_port: int) -> Destination:
        """Connect-time admission: where a CONNECT or an absolute-form request goes."""
        if self.inspector is not None and "@" in authority:
            # parse_authority refuses userinfo anyway; a credential in it is DLP's to report
            self.inspector.check_userinfo(method, authority, default_port)
        host, port = parse_authority(authority, default_port)
        if self.inspector is not None:
            self.inspector.check_host(method, host[:253], port)
        return await self.gate.check(host, port)

    async def route(self, target: str, tunnel: Destination | None) -> tuple[Destination, str]:
        """The destination and origin-form path of a request line's target.

        Inside an intercepted tunnel the destination was checked at CONNECT time and
        cannot change: only origin-form targets are accepted.
        """
        if tunnel is not None:
            if not target.startswith("/"):
                raise Refusal(400, "error:not-origin-form", "send origin-form requests in a tunnel")
            return tunnel, target
        authority, path = absolute_target(target)
        return await self.destination("HTTP", authority, 80), path

    def head(
        self,
        method: str,
        dest: Destination,
        path: str,
        headers: Iterable[tuple[bytes, bytes]],
    ) -> None:
        """Request-head admission: git's push protocol (never outside the git gate), then
        DLP of the URL and every header."""
        refusal = push_outside_gate(path)
        if refusal is not None:
            raise refusal
        if self.inspector is not None:
            self.inspector.check_head(method, dest.host, dest.port, path, headers)

    def body(
        self, method: str, dest: Destination, path: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> BodyGuard | None:
        """The guard a request body streams through, or None when bodies are not scanned."""
        if self.inspector is None:
            return None
        return self.inspector.body(headers, method, dest.host, dest.port, path)


def allow_decision(dest: Destination) -> str:
    return "audit-allow" if dest.audited_only else "allow"


def record_refusal(
    record: Recorder,
    kind: str,
    refusal: Refusal,
    *,
    decision: str,
    method: str,
    host: str,
    port: int,
    path: str,
) -> None:
    """The audit record of a request the bundle answered itself."""
    record(
        kind,
        decision,
        rule=refusal.rule,
        method=method,
        host=host,
        port=port,
        path=path,
        detail={"status": refusal.status, "reason": refusal.message},
    )
