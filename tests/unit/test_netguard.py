"""IP literal recognition in every notation, and the non-public range guard.

Addresses here are data only; nothing is ever contacted.
"""

from __future__ import annotations

import ipaddress

import pytest

from claude_bottle.policy.netguard import RULE_NAMES, forbidden_range, parse_ip_literal

# (as written, the address it denotes, the forbidden range or None when public)
TABLE: list[tuple[str, str, str | None]] = [
    # IPv4, dotted decimal
    ("8.8.8.8", "8.8.8.8", None),
    ("1.1.1.1", "1.1.1.1", None),
    ("127.0.0.1", "127.0.0.1", "loopback"),
    ("127.255.255.254", "127.255.255.254", "loopback"),
    ("10.1.2.3", "10.1.2.3", "private"),
    ("172.16.0.1", "172.16.0.1", "private"),
    ("172.31.255.255", "172.31.255.255", "private"),
    ("172.32.0.1", "172.32.0.1", None),
    ("192.168.1.1", "192.168.1.1", "private"),
    ("100.64.0.1", "100.64.0.1", "cgnat"),
    ("100.127.255.255", "100.127.255.255", "cgnat"),
    ("100.128.0.1", "100.128.0.1", None),
    ("169.254.1.1", "169.254.1.1", "link-local"),
    ("169.254.169.254", "169.254.169.254", "metadata"),
    ("100.100.100.200", "100.100.100.200", "metadata"),
    ("0.0.0.0", "0.0.0.0", "unspecified"),
    ("0.1.2.3", "0.1.2.3", "unspecified"),
    ("224.0.0.1", "224.0.0.1", "multicast"),
    ("239.255.255.250", "239.255.255.250", "multicast"),
    ("240.0.0.1", "240.0.0.1", "reserved"),
    ("255.255.255.255", "255.255.255.255", "broadcast"),
    ("192.0.2.1", "192.0.2.1", "documentation"),
    ("198.51.100.7", "198.51.100.7", "documentation"),
    ("203.0.113.9", "203.0.113.9", "documentation"),
    ("198.18.0.1", "198.18.0.1", "benchmark"),
    ("192.0.0.8", "192.0.0.8", "reserved"),
    # IPv4, other notations
    ("2130706433", "127.0.0.1", "loopback"),
    ("134744072", "8.8.8.8", None),
    ("4294967295", "255.255.255.255", "broadcast"),
    ("0177.0.0.1", "127.0.0.1", "loopback"),
    ("0177.1", "127.0.0.1", "loopback"),
    ("017700000001", "127.0.0.1", "loopback"),
    ("0x7f.0.0.1", "127.0.0.1", "loopback"),
    ("0X7F.0.0.1", "127.0.0.1", "loopback"),
    ("0x7f000001", "127.0.0.1", "loopback"),
    ("0x7F000001", "127.0.0.1", "loopback"),
    ("127.1", "127.0.0.1", "loopback"),
    ("127.0.1", "127.0.0.1", "loopback"),
    ("0x7f.1", "127.0.0.1", "loopback"),
    ("0xa9.0376.43518", "169.254.169.254", "metadata"),
    ("0xa9fea9fe", "169.254.169.254", "metadata"),
    ("10.0x10.0377.1", "10.16.255.1", "private"),
    ("0", "0.0.0.0", "unspecified"),
    ("0x", "0.0.0.0", "unspecified"),
    ("0x.0x.0x.0x", "0.0.0.0", "unspecified"),
    ("127.0.0.1.", "127.0.0.1", "loopback"),
    ("8.8.8.8.", "8.8.8.8", None),
    ("00000000000000000000000000000000177.1", "127.0.0.1", "loopback"),
    # IPv6
    ("::1", "::1", "loopback"),
    ("[::1]", "::1", "loopback"),
    ("0:0:0:0:0:0:0:1", "::1", "loopback"),
    ("::", "::", "unspecified"),
    ("[::]", "::", "unspecified"),
    ("2606:4700::1", "2606:4700::1", None),
    ("[2606:4700:4700::1111]", "2606:4700:4700::1111", None),
    ("2001:4860:4860::8888", "2001:4860:4860::8888", None),
    ("fc00::1", "fc00::1", "private"),
    ("fd12:3456::1", "fd12:3456::1", "private"),
    ("fe80::1", "fe80::1", "link-local"),
    ("fe80::1%eth0", "fe80::1", "link-local"),
    ("[fe80::1%25eth0]", "fe80::1", "link-local"),
    ("fec0::1", "fec0::1", "site-local"),
    ("ff02::1", "ff02::1", "multicast"),
    ("FF05::2", "ff05::2", "multicast"),
    ("fd00:ec2::254", "fd00:ec2::254", "metadata"),
    ("2001:db8::1", "2001:db8::1", "documentation"),
    ("100::1", "100::1", "reserved"),
    ("4000::1", "4000::1", "reserved"),
    # IPv6 forms embedding IPv4: judged by the embedded address
    ("::ffff:127.0.0.1", "::ffff:7f00:1", "loopback"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1", "loopback"),
    ("::ffff:7f00:1", "::ffff:7f00:1", "loopback"),
    ("::ffff:0x7f.1", "::ffff:7f00:1", "loopback"),
    ("::ffff:169.254.169.254", "::ffff:a9fe:a9fe", "metadata"),
    ("::ffff:10.0.0.1", "::ffff:a00:1", "private"),
    ("::ffff:8.8.8.8", "::ffff:808:808", None),
    ("::ffff:0:127.0.0.1", "::ffff:0:7f00:1", "loopback"),
    ("::127.0.0.1", "::7f00:1", "loopback"),
    ("::8.8.8.8", "::808:808", "reserved"),
    ("64:ff9b::127.0.0.1", "64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe", "metadata"),
    ("64:ff9b::8.8.8.8", "64:ff9b::808:808", None),
    ("64:ff9b:1::1", "64:ff9b:1::1", "private"),
    ("2002:7f00:1::", "2002:7f00:1::", "loopback"),
    ("2002:c0a8:101::1", "2002:c0a8:101::1", "private"),
    ("2002:808:808::1", "2002:808:808::1", None),
    # Teredo: server 65.54.227.120, client 127.0.0.1 (stored inverted)
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
]


def test_table_is_large_and_mixed() -> None:
    assert len(TABLE) >= 40
    assert any(verdict is None for _, _, verdict in TABLE)
    assert sum(verdict is not None for _, _, verdict in TABLE) >= 40


@pytest.mark.parametrize(("written", "address", "verdict"), TABLE, ids=[t[0] for t in TABLE])
def test_parse_and_classify(written: str, address: str, verdict: str | None) -> None:
    ip = parse_ip_literal(written)
    assert ip is not None, f"{written!r} should be recognised as an IP literal"
    assert type(ip)(int(ip)) == ipaddress.ip_address(address)
    assert forbidden_range(ip) == verdict
    assert forbidden_range(written) == verdict
    if verdict is not None:
        assert verdict in RULE_NAMES


@pytest.mark.parametrize(
    "host",
    [
        "github.com",
        "1.example",
        "example.123abc",
        "0x7f.example",
        "127.0.0.1.example.com",
        "localhost",
        "a",
        "",
        "1.2.3.4.5",
        "1.2.3.256",
        "256.1.1.1",
        "1.2.65536",
        "4294967296",
        "0x100000000",
        "08.1",
        "0xg.1",
        "1..2",
        ".1.2.3",
        "127.0.0.1..",
        "+1.2.3.4",
        "-1",
        "1_0.0.0.1",
        "١٢٧.0.0.1",
        "1e3",
        "[github.com]",
        "::ffff:1.2.3.256",
        "fe80::1::2",
        "gggg::1",
        "[::1",
    ],
)
def test_not_ip_literals(host: str) -> None:
    assert parse_ip_literal(host) is None


def test_zone_id_is_kept_on_parse() -> None:
    ip = parse_ip_literal("fe80::1%eth0")
    assert isinstance(ip, ipaddress.IPv6Address)
    assert ip.scope_id == "eth0"


def test_returns_the_right_version() -> None:
    assert isinstance(parse_ip_literal("0x7f.1"), ipaddress.IPv4Address)
    assert isinstance(parse_ip_literal("::ffff:127.0.0.1"), ipaddress.IPv6Address)


def test_forbidden_range_rejects_a_name() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        forbidden_range("github.com")


def test_public_addresses_pass_as_objects() -> None:
    for text in ("8.8.8.8", "9.9.9.9", "2606:4700::1", "2a00:1450:4001::1"):
        assert forbidden_range(ipaddress.ip_address(text)) is None
