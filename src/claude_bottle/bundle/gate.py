"""Egress policy as the proxy applies it: may this request leave, and to which address?

Two checks, in order. The host name is matched against the allowlist
(before any DNS, so a denied name is never even resolved). Then the name is
resolved by the bundle, never by the bottle, and every address it resolves
to must be a public unicast address; the connection goes to exactly the
address that was checked, so a DNS answer that changes between check and
connect (rebinding) cannot redirect it. A checked answer is reused for
RESOLVED_TTL seconds. `[egress.resolve]` pins skip DNS and the range check:
that is how tests build a fake internet on loopback.

Before both, SSH ports: git over ssh through a tunnel would carry a push past the git
gate, so port 22 of any host, and the ssh port of each configured git remote, is refused
(`git-ssh-outside-gate`, in every mode) unless an allow entry `HOST:PORT` grants exactly
that host and port. Other ports of an allowed host are allowed, as its 443 is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.settings import Pin
from claude_bottle.policy.allowlist import (
    Allowlist,
    Decision,
    HostError,
    normalize_host,
    port_entry,
)
from claude_bottle.policy.netguard import forbidden_range

if TYPE_CHECKING:
    from claude_bottle.bundle.held import HeldRequests

Resolver = Callable[[str, int], Awaitable[list[str]]]

RESOLVED_TTL = 30.0
"""Seconds a checked DNS answer is reused. glibc caches nothing, so without this every
request through the proxy would wait for the resolver again."""

RESOLVED_MAX = 512  # names kept; the oldest answer goes first
SSH_PORT = 22


@dataclasses.dataclass(frozen=True)
class Destination:
    host: str  # normalised name as checked
    port: int  # as requested (what the Host header says)
    address: str  # the address the connection must go to
    connect_port: int  # the port it must go to (differs only when pinned)
    rule: str  # the allow rule that let it through
    audited_only: bool  # True when mode=audit let a denied host through
    tls: bool = False  # the bundle speaks TLS to the upstream (intercepted CONNECT)


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class EgressGate:
    def __init__(
        self,
        allow: Iterable[str],
        deny: Iterable[str] = (),
        *,
        mode: str = "enforce",
        pins: Iterable[Pin] = (),
        resolver: Resolver = system_resolver,
        resolved_ttl: float = RESOLVED_TTL,
        ssh_remotes: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.allowlist = Allowlist(allow, deny)
        # (host, port) of each [git.remotes] ssh URL: guarded like port 22 of any host
        self.ssh_remotes = frozenset(_normalised_endpoints(ssh_remotes))
        self.mode = mode
        self.pins = {normalize_host(p.host): p for p in pins}
        self._resolver = resolver
        self._resolved_ttl = resolved_ttl
        # (name, port) -> (when it expires, the address checked). Only answers that passed
        # the range check are kept, and a connection still goes to the address checked.
        self._resolved: dict[tuple[str, int], tuple[float, str]] = {}
        self.held: HeldRequests | None = None  # where `ask` mode holds requests

    def allow(self, pattern: str, by: str) -> str:
        """Add a pattern at run time (`claude-bottle allow`); lets held requests through."""
        normalised = self.allowlist.add(pattern)
        if self.held is not None:
            self.held.release(lambda host: self.allowlist.check(host).allowed, by)
        return normalised

    async def check(self, host: str, port: int) -> Destination:
        if not 0 < port < 65536:
            raise Refusal(400, "deny:bad-port", f"port {port} is not a valid TCP port")
        decision = self.allowlist.check(host, port)
        if not decision.port_grant and decision.rule != "deny:bad-host":
            self._refuse_ssh(normalize_host(host), port, decision)
        audited_only = False
        if not decision.allowed:
            decision, audited_only = await self._on_denied(host, port, decision)
        name = normalize_host(host)
        address = await self._resolve(name, port)
        pin = self.pins.get(name)
        connect_port = pin.port if pin is not None and pin.port is not None else port
        return Destination(name, port, address, connect_port, decision.rule, audited_only)

    def _refuse_ssh(self, name: str, port: int, decision: Decision) -> None:
        """Refuse an SSH port no HOST:PORT entry grants (whatever the mode: audit and ask
        never let git over ssh past the gate)."""
        if port != SSH_PORT and (name, port) not in self.ssh_remotes:
            return
        if decision.rule.startswith("deny:denylist:"):
            raise Refusal(403, decision.rule, decision.reason)
        entry = port_entry(name, port)
        raise Refusal(
            403,
            "git-ssh-outside-gate",
            f"{entry} is an SSH port; git over ssh goes only through the bottle's git gate",
            "configure the repository under [git.remotes.NAME] in your user config (or, for "
            f'ssh that is not git, allow exactly this endpoint: [egress] allow = ["{entry}"])',
        )

    async def _on_denied(self, host: str, port: int, decision: Decision) -> tuple[Decision, bool]:
        not_listed = decision.rule == "deny:not-allowlisted"
        if self.mode == "audit" and not_listed:
            return decision, True
        if self.mode == "ask" and not_listed and self.held is not None:
            await self.held.hold(host, port)  # raises Refusal unless someone allows it
            decision = self.allowlist.check(host)
            if decision.allowed:
                return decision, False
        raise Refusal(403, decision.rule, decision.reason)

    async def _resolve(self, name: str, port: int) -> str:
        pin = self.pins.get(name)
        if pin is not None:
            return pin.address
        now = asyncio.get_running_loop().time()
        cached = self._resolved.get((name, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        address = await self._resolve_and_check(name, port)
        self._resolved.pop((name, port), None)  # re-inserted last: the newest
        while len(self._resolved) >= RESOLVED_MAX:
            del self._resolved[next(iter(self._resolved))]
        self._resolved[(name, port)] = (now + self._resolved_ttl, address)
        return address

    async def _resolve_and_check(self, name: str, port: int) -> str:
        try:
            addresses = await asyncio.wait_for(self._resolver(name, port), 10)
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise Refusal(502, "error:dns", f"could not resolve {name}: {exc}") from exc
        if not addresses:
            raise Refusal(502, "error:dns", f"{name} has no addresses")
        for address in addresses:
            scope = forbidden_range(ipaddress.ip_address(address.split("%")[0]))
            if scope is not None:
                raise Refusal(
                    403,
                    f"deny:ssrf-{scope}",
                    f"{name} resolves to a {scope} address; internal networks are never reachable",
                )
        return addresses[0]


def _normalised_endpoints(endpoints: Iterable[tuple[str, int]]) -> Iterable[tuple[str, int]]:
    for host, port in endpoints:
        try:
            yield normalize_host(host), port
        except HostError:
            continue  # no request's host normalises to a name that does not normalise


def parse_authority(authority: str, default_port: int) -> tuple[str, int]:
    """Split host[:port] (IPv6 in brackets); raise Refusal on anything odd."""
    if "@" in authority:
        raise Refusal(400, "deny:userinfo", "credentials in the URL authority are not allowed")
    host, port = authority, default_port
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise Refusal(400, "deny:bad-host", "unterminated IPv6 literal")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise Refusal(400, "deny:bad-host", "junk after IPv6 literal")
            port = _port(rest[1:])
    elif authority.count(":") == 1:
        host, _, port_text = authority.partition(":")
        port = _port(port_text)
    elif authority.count(":") > 1:
        # A bare IPv6 literal; the allowlist refuses IP literals anyway.
        host = authority
    if not host:
        raise Refusal(400, "deny:bad-host", "empty host name")
    return host, port


def _port(text: str) -> int:
    # isdigit alone passes "²" and "١٢", which int() then refuses (or reads) unasked
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise Refusal(400, "deny:bad-port", "port must be a number from 1 to 65535")
    return int(text)
