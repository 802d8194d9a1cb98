"""The egress proxy's admission pipeline, one sans-IO step per stage of a request.

Every request from the bottle passes the same stages in the same order, whichever way
it arrives (absolute-form HTTP, a CONNECT tunnel, a request inside an intercepted one):

1. connect-time: the authority is parsed, its labels are scanned (before any DNS: a
   lookup of an encoded label is itself the leak), and the gate matches the host against
   the allowlist and resolves it to an address it checked (`gate.EgressGate`);
2. request head: a host with rules admits only what they allow (`l7.RuleBook`), injected
   credentials are swapped in for their hosts and refused for any other
   (`injection.Injector`), then the URL and every header are scanned
   (`scanning.DlpInspector`; credentials decoded where HTTP carries them,
   `policy.dlp_http`), the head as the bottle sent it, swapped placeholders masked;
3. body: a `scanning.BodyGuard` releases only bytes it has scanned; a Git LFS API call
   is held until read as a batch download (`git_lfs`: no LFS upload outside the gate);
4. response: only end-to-end headers go back (`connection.forwarded_headers`), and an
   answer to a request that carried an injected credential is scanned for it
   (`injection.ResponseGuard`);
5. audit: one record per decision, built here so each caller records the same fields.

The API gateway runs the same stages with its own policy (`api_policy.GatewayPolicy`:
head admission, `BodyCheck`, `downstream_headers`) and the same `Refusal`.

A stage says no by raising `Refusal`; the connection turns it into the answer. Nothing
here touches a socket: the gate's resolver is injected, and the recorder is a callable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from claude_bottle.bundle.gate import Destination, EgressGate, parse_authority
from claude_bottle.bundle.git_lfs import LfsDownloadOnly, is_lfs_api
from claude_bottle.bundle.git_policy import push_outside_gate
from claude_bottle.bundle.l7 import RuleBook, is_websocket, rule_hint
from claude_bottle.bundle.refusal import Refusal

if TYPE_CHECKING:  # the DLP engine is imported only when enabled
    from claude_bottle.bundle.injection import InjectedHead, Injector
    from claude_bottle.bundle.scanning import DlpInspector

Recorder = Callable[..., Any]
MAX_GRAPHQL_BODY = 1 << 20  # a GraphQL request held for its check; larger ones are refused


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

    def __init__(
        self,
        gate: EgressGate,
        inspector: DlpInspector | None = None,
        rules: RuleBook | None = None,
        injector: Injector | None = None,
    ) -> None:
        self.gate = gate
        self.inspector = inspector
        self.rules = rules if rules is not None else RuleBook()
        self.injector = injector

    def must_intercept(self, host: str) -> bool:
        """A CONNECT to a host with rules, or one that receives a credential, is always
        intercepted: rules and injection apply to the requests inside."""
        return host in self.rules or (self.injector is not None and self.injector.receives(host))

    def opaque_tunnel(self, dest: Destination) -> None:
        """Refuse a tunnel that cannot be intercepted to a host that needs it."""
        if self.must_intercept(dest.host):
            raise Refusal(
                403,
                f"l7:{dest.host}",
                f"{dest.host} has rules or receives a credential, which apply only to "
                "intercepted requests, and TLS interception is off",
                hint="set [egress] intercept = true in your user config",
            )

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
    ) -> InjectedHead | None:
        """Request-head admission: git's push protocol (never outside the git gate), rules,
        credential injection, DLP of the URL and every header. The injected head, when
        credentials went in, replaces the request's."""
        refusal = push_outside_gate(path)
        if refusal is not None:
            raise refusal
        headers = list(headers)
        if self.injector is not None:
            self.injector.check_method(method, dest.host)
        self.rules.check(dest.host, method, path, is_websocket(headers))
        injected = None
        if self.injector is not None:
            injected = self.injector.apply(method, dest.host, path, headers)
        if self.inspector is not None:
            scanned = headers if injected is None else injected.scanned
            self.inspector.check_head(method, dest.host, dest.port, path, scanned)
        return injected

    def body(
        self, method: str, dest: Destination, path: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> BodyStage | None:
        """The guard a request body streams through, or None when bodies are not checked."""
        headers = list(headers)
        scanned = None
        if self.inspector is not None:
            scanned = self.inspector.body(headers, method, dest.host, dest.port, path)
        if is_lfs_api(method, path, headers):  # no LFS upload outside the git gate
            return LfsDownloadOnly(scanned, path)
        if dest.host in self.rules:
            rule = self.rules.check(dest.host, method, path)  # admitted at head already
            if rule is not None and rule.graphql_read_only:
                return ReadOnlyGraphql(scanned, dest.host, path)
        return scanned


class BodyStage(Protocol):
    """What a request body streams through: `feed` returns what may be forwarded so far,
    `finish` the rest; either raises `Refusal`."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def release(self) -> None:
        """Give back what the body held of the bundle's budget, however it ended."""


class ReadOnlyGraphql:
    """Holds a GraphQL request's body (after DLP's scan) until it has been checked to
    hold only queries: a rule that admits GraphQL reads on an API of writes too."""

    def __init__(self, scanned: BodyStage | None, host: str, path: str) -> None:
        self.scanned = scanned
        self.host = host
        self.path = path
        self.held = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        self.held += chunk if self.scanned is None else self.scanned.feed(chunk)
        if len(self.held) > MAX_GRAPHQL_BODY:
            raise Refusal(413, f"l7:{self.host}", "a GraphQL request this large is not checked")
        return b""

    def finish(self) -> bytes:
        if self.scanned is not None:
            self.held += self.scanned.finish()
        from claude_bottle.policy.graphql import NotReadOnly, check_request_body

        try:
            check_request_body(bytes(self.held))
        except NotReadOnly as exc:
            raise Refusal(
                403,
                f"l7:{self.host}",
                f"{exc}; the built-in rules of {self.host} admit only GraphQL queries",
                hint=rule_hint(self.host, "POST", self.path.split("?", 1)[0], False)
                + " (rules of your own replace the built-in read-only ones)",
            ) from exc
        return bytes(self.held)

    def release(self) -> None:
        if self.scanned is not None:
            self.scanned.release()


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
