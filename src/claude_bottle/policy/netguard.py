"""Recognise IP literals in every notation, and refuse non-public destinations.

Two jobs, both pure functions:

* `parse_ip_literal` decides whether a host string is really an IP address.
  Client libraries disagree on what that means: `getaddrinfo` (glibc
  `inet_aton`) takes `0x7f.1`, `0177.0.0.1` and `2130706433`; browsers and
  curl follow the WHATWG URL rules, which also take `0x` as zero and a
  trailing dot. A policy that only knows dotted decimal can be walked
  around, so the parser here accepts the union: anything any of them would
  treat as an address is an address.
* `forbidden_range` names the reason an address is not a public unicast
  destination (loopback, private, metadata, ...), or returns None when it is.
  Addresses that embed an IPv4 address (mapped, compatible, NAT64, 6to4,
  Teredo) are judged by the address they embed.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address

_DEC = frozenset("0123456789")
_OCT = frozenset("01234567")
_HEX = frozenset("0123456789abcdefABCDEF")


def _parse_ipv4_part(part: str) -> int | None:
    """One dot-separated number: decimal, octal (leading 0) or hex (0x); ASCII only."""
    if not part:
        return None
    if part[:2] in ("0x", "0X"):
        digits = part[2:]
        if not digits:
            return 0  # WHATWG: "0x" alone is zero
        return int(digits, 16) if _HEX.issuperset(digits) else None
    if len(part) > 1 and part[0] == "0":
        digits = part[1:]
        return int(digits, 8) if _OCT.issuperset(digits) else None
    if not _DEC.issuperset(part) or len(part) > 12:  # no leading zero here: 12 digits is ample
        return None
    return int(part)


def _parse_ipv4(text: str) -> IPv4Address | None:
    """inet_aton / WHATWG IPv4: 1 to 4 parts, the last one filling the remaining bytes."""
    if text.endswith("."):
        text = text[:-1]
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        number = _parse_ipv4_part(part)
        if number is None:
            return None
        numbers.append(number)
    *head, last = numbers
    if any(n > 0xFF for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(head):
        value |= number << (8 * (3 - index))
    return IPv4Address(value)


def _parse_ipv6(text: str) -> IPv6Address | None:
    """An IPv6 address with an optional zone id; the IPv4 tail may use any IPv4 notation."""
    address, percent, zone = text.partition("%")
    try:
        ip = IPv6Address(address)
    except ValueError:
        head, colon, tail = address.rpartition(":")
        if not colon or "." not in tail:
            return None
        embedded = _parse_ipv4(tail)
        if embedded is None:
            return None
        try:
            ip = IPv6Address(f"{head}:{embedded}")
        except ValueError:
            return None
    if percent and zone:
        try:
            return IPv6Address(f"{ip.compressed}%{zone}")
        except ValueError:
            return ip
    return ip


def parse_ip_literal(host: str) -> IPAddress | None:
    """Return the address `host` denotes if it is an IP literal in any notation, else None.

    Accepts dotted decimal, short forms (`127.1`), octal and hex parts,
    a single 32-bit number, a trailing dot, and IPv6 with or without
    brackets and zone id. Host names (`github.com`, `1.example`) give None.
    """
    if not isinstance(host, str) or not host:
        return None
    text = host
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        return _parse_ipv6(text)
    ip = _parse_ipv4(text)
    if ip is not None:
        return ip
    # Backstop: whatever this platform's inet_aton accepts is an address too
    # (glibc, for one, ignores anything after whitespace).
    try:
        return IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError, UnicodeError):
        return None


def _v4_nets(*specs: tuple[str, str]) -> tuple[tuple[IPv4Network, str], ...]:
    return tuple((IPv4Network(net), name) for net, name in specs)


def _v6_nets(*specs: tuple[str, str]) -> tuple[tuple[IPv6Network, str], ...]:
    return tuple((IPv6Network(net), name) for net, name in specs)


# First match wins, so specific entries come before the ranges that contain them.
_V4_RULES = _v4_nets(
    ("169.254.169.254/32", "metadata"),  # AWS, GCP, Azure, OpenStack, ...
    ("169.254.170.2/32", "metadata"),  # AWS ECS task metadata
    ("100.100.100.200/32", "metadata"),  # Alibaba Cloud
    ("192.0.0.192/32", "metadata"),  # Oracle Cloud
    ("168.63.129.16/32", "metadata"),  # Azure WireServer (a public address)
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("169.254.0.0/16", "link-local"),
    ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("198.18.0.0/15", "benchmark"),
    ("192.88.99.0/24", "reserved"),  # deprecated 6to4 relay anycast
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)

_V6_METADATA = _v6_nets(
    ("fd00:ec2::254/128", "metadata"),  # AWS (IPv6 IMDS)
    ("fd20:ce::254/128", "metadata"),  # GCP (IPv6 metadata server)
)

_V6_RULES = _v6_nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "private"),  # local-use NAT64 prefix
    ("100::/64", "reserved"),  # discard-only
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("2001:2::/48", "benchmark"),
    ("2001:10::/28", "reserved"),  # ORCHID
    ("2001:20::/28", "reserved"),  # ORCHIDv2
    ("fc00::/7", "private"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)

_MAPPED = IPv6Network("::ffff:0:0/96")
_TRANSLATED = IPv6Network("::ffff:0:0:0/96")  # SIIT, RFC 2765
_COMPATIBLE = IPv6Network("::/96")  # deprecated IPv4-compatible
_NAT64 = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")
_TEREDO = IPv6Network("2001::/32")
_GLOBAL_UNICAST = IPv6Network("2000::/3")

RULE_NAMES = frozenset(
    {name for _, name in _V4_RULES}
    | {name for _, name in _V6_METADATA}
    | {name for _, name in _V6_RULES}
)


def _v4_rule(ip: IPv4Address) -> str | None:
    for network, name in _V4_RULES:
        if ip in network:
            return name
    return None


def _low32(ip: IPv6Address) -> IPv4Address:
    return IPv4Address(int(ip) & 0xFFFFFFFF)


def _v6_rule(ip: IPv6Address) -> str | None:
    for network, name in _V6_METADATA:
        if ip in network:
            return name
    for network, name in _V6_RULES[:2]:  # :: and ::1 sit inside the IPv4-compatible range
        if ip in network:
            return name
    if ip in _MAPPED or ip in _TRANSLATED or ip in _NAT64:
        return _v4_rule(_low32(ip))
    if ip in _COMPATIBLE:
        return _v4_rule(_low32(ip)) or "reserved"
    if ip in _SIX_TO_FOUR:
        return _v4_rule(IPv4Address((int(ip) >> 80) & 0xFFFFFFFF))
    if ip in _TEREDO and ip.teredo is not None:
        server, client = ip.teredo
        verdict = _v4_rule(server) or _v4_rule(client)
        if verdict is not None:
            return verdict
    for network, name in _V6_RULES[2:]:
        if ip in network:
            return name
    if ip not in _GLOBAL_UNICAST:
        return "reserved"
    return None


def forbidden_range(ip: IPAddress | str) -> str | None:
    """Name the non-public range `ip` belongs to, or None for a public unicast address.

    Names: metadata, unspecified, loopback, private, cgnat, link-local,
    site-local, multicast, broadcast, reserved, documentation, benchmark.
    A string is parsed with `parse_ip_literal` (ValueError if it is not an address).
    """
    if isinstance(ip, str):
        parsed = parse_ip_literal(ip)
        if parsed is None:
            raise ValueError(f"not an IP address: {ip[:64]!r}")
        ip = parsed
    if isinstance(ip, IPv4Address):
        return _v4_rule(ip)
    return _v6_rule(IPv6Address(int(ip)))  # drop any zone id
