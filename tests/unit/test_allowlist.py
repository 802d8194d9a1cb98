"""Host allowlist: normalisation, pattern validation, matching and decisions."""

from __future__ import annotations

import time

import pytest

from claude_bottle.policy.allowlist import (
    Allowlist,
    Decision,
    HostError,
    PatternError,
    normalize_host,
    validate_allow_entry,
    validate_pattern,
)

# --- normalize_host -------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("github.com", "github.com"),
        ("GitHub.COM", "github.com"),
        ("GitHub.COM.", "github.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example.", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("a-b.example", "a-b.example"),
        ("1.example", "1.example"),
        ("example.123abc", "example.123abc"),
        ("[::1]", "::1"),
        ("[2606:4700::1]", "2606:4700::1"),
        ("::FFFF:127.0.0.1", "::ffff:7f00:1"),
        ("0x7f.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1.", "127.0.0.1"),
    ],
)
def test_normalize_host(host: str, expected: str) -> None:
    assert normalize_host(host) == expected


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("", "empty"),
        (".", "no labels"),
        ("github.com..", "empty label"),
        ("a..b", "empty label"),
        (".github.com", "empty label"),
        ("a" * 64 + ".com", "longer than 63"),
        (".".join(["a" * 50] * 5) + ".com", "longer than 253"),
        ("x" * 400, "longer than 253"),
        ("allowed.com@evil.com", "'@'"),
        ("github.com:443", "port"),
        ("evil.com#allowed.com", "'#'"),
        ("evil.com/allowed.com", "'/'"),
        ("evil.com\\allowed.com", "'\\\\'"),
        ("evil.com\x00.allowed.com", "NUL"),
        ("evil.com .allowed.com", "whitespace"),
        ("evil.com\t", "whitespace"),
        ("evil.com\r\nX: y", "whitespace"),
        ("evil%2ecom", "percent"),
        ("git\u200bhub.com", "invisible"),
        ("evil.com\u202e.moc", "invisible"),
        ("[1.2.3.4]", "brackets"),
        ("[github.com]", "brackets"),
        ("git[hub.com", "stray"),
        ("1.2.3.4.5", "ends in a number"),
        ("1.2.3.256", "ends in a number"),
        ("a.4294967296", "ends in a number"),
        ("xn--zz.com", "punycode"),
        ("faß.de", "IDNA"),
        ("a*.com", "'*'"),
    ],
)
def test_normalize_host_rejects(host: str, problem: str) -> None:
    with pytest.raises(HostError) as info:
        normalize_host(host)
    assert problem in str(info.value)
    assert isinstance(info.value, ValueError)


def test_host_error_never_echoes_more_than_253_chars() -> None:
    with pytest.raises(HostError) as info:
        normalize_host("a" * 5000 + "\x00")
    assert "a" * 254 not in str(info.value)
    assert "\x00" not in str(info.value)


# --- validate_pattern ------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("github.com", "github.com"),
        ("GitHub.com.", "github.com"),
        ("*.githubusercontent.com", "*.githubusercontent.com"),
        ("*.GitHubUserContent.COM.", "*.githubusercontent.com"),
        ("*.co.uk", "*.co.uk"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("192.0.2.7", "192.0.2.7"),
        ("0x7f.1", "127.0.0.1"),
        ("::1/128", "::1/128"),
        ("[::1]", "::1"),
        ("2606:4700::/32", "2606:4700::/32"),
    ],
)
def test_validate_pattern(pattern: str, expected: str) -> None:
    assert validate_pattern(pattern) == expected


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty"),
        ("*", "every host"),
        ("*.", "every host"),
        ("*.com", "at least two labels"),
        ("*.io.", "at least two labels"),
        ("*.*.example.com", "whole first label"),
        ("a.*.b", "whole first label"),
        ("*foo.com", "whole first label"),
        ("foo*.com", "whole first label"),
        ("*.1.2.3.4", "IP address"),
        ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "at most 32"),
        ("::/129", "at most 128"),
        ("10.0.0.0/x", "prefix length"),
        ("github.com/8", "not an IP address"),
        ("fe80::1%eth0", "zone id"),
        ("a..b", "empty label"),
        (" github.com", "whitespace"),
        ("user@github.com", "'@'"),
        ("github.com:443", "port"),
    ],
)
def test_validate_pattern_rejects(pattern: str, problem: str) -> None:
    with pytest.raises(PatternError) as info:
        validate_pattern(pattern)
    message = str(info.value)
    assert problem in message
    assert "*.githubusercontent.com" in message  # every error shows a valid example
    assert isinstance(info.value, ValueError)


def test_allowlist_names_the_bad_pattern() -> None:
    with pytest.raises(ValueError, match=r"'\*\.com'"):
        Allowlist(["github.com", "*.com"])
    with pytest.raises(ValueError, match=r"'a\.\*\.b'"):
        Allowlist(["github.com"], deny=["a.*.b"])


# --- matching --------------------------------------------------------------------


@pytest.fixture
def allowlist() -> Allowlist:
    return Allowlist(
        allow=["github.com", "*.githubusercontent.com", "*.github.com", "allowed.com"],
        deny=["evil.github.com", "*.blocked.githubusercontent.com"],
    )


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("github.com", "allow:github.com"),
        ("GitHub.COM.", "allow:github.com"),
        ("api.github.com", "allow:*.github.com"),
        ("a.b.github.com", "allow:*.github.com"),
        ("raw.githubusercontent.com", "allow:*.githubusercontent.com"),
        ("x.y.z.githubusercontent.com", "allow:*.githubusercontent.com"),
        ("allowed.com", "allow:allowed.com"),
        ("ALLOWED.COM.", "allow:allowed.com"),
    ],
)
def test_allowed(allowlist: Allowlist, host: str, rule: str) -> None:
    decision = allowlist.check(host)
    assert decision == Decision(True, rule, decision.reason)
    assert decision.allowed
    assert rule.removeprefix("allow:") in decision.reason


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("githubusercontent.com", "deny:not-allowlisted"),  # bare suffix is not matched
        ("evilgithub.com", "deny:not-allowlisted"),
        ("github.com.evil.com", "deny:not-allowlisted"),
        ("allowed.com.evil.com", "deny:not-allowlisted"),
        ("sub.allowed.com", "deny:not-allowlisted"),  # exact means exact
        ("notallowed.com", "deny:not-allowlisted"),
        ("com", "deny:not-allowlisted"),
        ("evil.github.com", "deny:denylist:evil.github.com"),
        ("EVIL.GitHub.com.", "deny:denylist:evil.github.com"),
        ("x.blocked.githubusercontent.com", "deny:denylist:*.blocked.githubusercontent.com"),
        ("allowed.com@evil.com", "deny:bad-host"),
        ("evil.com#allowed.com", "deny:bad-host"),
        ("evil.com\x00.allowed.com", "deny:bad-host"),
        ("evil.com/.allowed.com", "deny:bad-host"),
        ("evil.com\\.allowed.com", "deny:bad-host"),
        ("evil.com:443", "deny:bad-host"),
        ("github.com..", "deny:bad-host"),
        ("", "deny:bad-host"),
        ("127.0.0.1", "deny:ip-literal"),
    ],
)
def test_denied(allowlist: Allowlist, host: str, rule: str) -> None:
    decision = allowlist.check(host)
    assert not decision.allowed
    assert decision.rule == rule
    assert decision.reason


def test_deny_wins_over_allow() -> None:
    both = Allowlist(allow=["*.example.com", "x.example.com"], deny=["x.example.com"])
    assert both.check("x.example.com").rule == "deny:denylist:x.example.com"
    assert both.check("y.example.com").allowed
    wild = Allowlist(allow=["a.b.example.com"], deny=["*.example.com"])
    assert wild.check("a.b.example.com").rule == "deny:denylist:*.example.com"


def test_most_specific_wildcard_is_reported() -> None:
    rules = Allowlist(allow=["*.example.com", "*.b.example.com"])
    assert rules.check("a.b.example.com").rule == "allow:*.b.example.com"
    assert rules.check("a.c.example.com").rule == "allow:*.example.com"


def test_idna_host_matches_punycode_rule() -> None:
    rules = Allowlist(allow=["bücher.example"])
    assert rules.patterns == ("xn--bcher-kva.example",)
    assert rules.check("BÜCHER.example.").rule == "allow:xn--bcher-kva.example"
    assert rules.check("xn--bcher-kva.example").allowed
    assert not rules.check("bucher.example").allowed


# --- IP literals -----------------------------------------------------------------

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "0x7f.1",
    "127.0.0.1.",
    "[::ffff:127.0.0.1]",
    "::ffff:7f00:1",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_ip_literals_denied_by_default(host: str) -> None:
    rules = Allowlist(allow=["github.com", "*.example.com", "127.0.0.2"])
    decision = rules.check(host)
    assert decision.rule == "deny:ip-literal"
    assert not decision.allowed
    assert "127.0.0.1" in decision.reason or "7f00:1" in decision.reason


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_ip_literals_allowed_by_cidr_rule(host: str) -> None:
    rules = Allowlist(allow=["127.0.0.0/8"])
    decision = rules.check(host)
    assert decision.allowed
    assert decision.rule == "allow:127.0.0.0/8"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("::1", True),
        ("[::1]", True),
        ("0:0::1", True),
        ("::2", False),
        ("2606:4700::1", True),
        ("[2606:4700:ffff::1]", True),
        ("2606:4701::1", False),
        ("10.1.2.3", True),
        ("0xa.0x1.0x2.0x3", True),
        ("167837955", True),
        ("11.0.0.1", False),
        ("192.0.2.7", True),
        ("192.0.2.8", False),
    ],
)
def test_ip_rules(host: str, allowed: bool) -> None:
    rules = Allowlist(allow=["::1/128", "2606:4700::/32", "10.0.0.0/8", "192.0.2.7"])
    decision = rules.check(host)
    assert decision.allowed is allowed
    assert decision.rule.startswith("allow:") if allowed else decision.rule == "deny:ip-literal"


def test_ip_deny_rule_beats_allow_and_covers_mapped_forms() -> None:
    rules = Allowlist(allow=["10.0.0.0/8"], deny=["10.9.0.0/16"])
    assert rules.check("10.1.0.1").allowed
    assert rules.check("10.9.0.1").rule == "deny:denylist:10.9.0.0/16"
    assert rules.check("0xa.0x9.0.1").rule == "deny:denylist:10.9.0.0/16"
    assert rules.check("::ffff:10.9.0.1").rule == "deny:denylist:10.9.0.0/16"
    assert rules.check("64:ff9b::10.9.0.1").rule == "deny:denylist:10.9.0.0/16"


def test_ip_pattern_does_not_match_names() -> None:
    rules = Allowlist(allow=["10.0.0.0/8"])
    assert rules.check("10.example").rule == "deny:not-allowlisted"


# --- Allowlist API ---------------------------------------------------------------


def test_add_returns_normalised_pattern_and_dedupes() -> None:
    rules = Allowlist()
    assert rules.check("api.example.org").rule == "deny:not-allowlisted"
    assert rules.add("*.Example.ORG.") == "*.example.org"
    assert rules.add("*.example.org") == "*.example.org"
    assert rules.add("10.0.0.0/8") == "10.0.0.0/8"
    assert rules.patterns == ("*.example.org", "10.0.0.0/8")
    assert rules.check("api.example.org").allowed
    with pytest.raises(ValueError, match="at least two labels"):
        rules.add("*.org")
    assert rules.patterns == ("*.example.org", "10.0.0.0/8")


def test_decision_is_frozen() -> None:
    decision = Allowlist(["github.com"]).check("github.com")
    with pytest.raises(AttributeError):
        decision.allowed = False  # type: ignore[misc]


def test_reason_is_bounded_and_sanitised() -> None:
    rules = Allowlist(["github.com"])
    hostile = "\x1b[31m" + "a" * 10_000 + "\r\n"
    decision = rules.check(hostile)
    assert decision.rule == "deny:bad-host"
    assert "\x1b" not in decision.reason
    assert "\r" not in decision.reason and "\n" not in decision.reason
    assert "a" * 254 not in decision.reason
    assert len(decision.reason) < 400


def test_large_lists_are_fast() -> None:
    allow = [f"host{i}.example{i % 97}.com" for i in range(20_000)]
    allow += [f"*.zone{i}.example.net" for i in range(20_000)]
    rules = Allowlist(allow)
    start = time.perf_counter()
    for i in range(5_000):
        assert rules.check(f"host{i}.example{i % 97}.com").allowed
        assert rules.check(f"a.b.zone{i}.example.net").allowed
        assert not rules.check(f"zone{i}.example.net").allowed
    # A linear scan would take ~10^8 comparisons here; set lookups take milliseconds.
    assert time.perf_counter() - start < 5.0


# -- HOST:PORT entries (issue 21: an SSH port is reachable only when granted exactly) ---


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("Git.Example.COM:22", "git.example.com:22"),
        ("git.example.com:2222", "git.example.com:2222"),
        ("192.0.2.7:22", "192.0.2.7:22"),
        ("[::1]:22", "[::1]:22"),
        ("github.com", "github.com"),
        ("*.example.com", "*.example.com"),
        ("::1", "::1"),
    ],
)
def test_validate_allow_entry(entry: str, expected: str) -> None:
    assert validate_allow_entry(entry) == expected


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("*.example.com:22", "one host exactly"),
        ("10.0.0.0/8:22", "one host exactly"),
        ("git.example.com:0", "port"),
        ("git.example.com:65536", "port"),
        ("git.example.com:", "port"),
        ("git.example.com:２２", "port"),
        ("git.example.com:22:22", "invalid host pattern"),
        ("[::1]22", "invalid host pattern"),
        ("bad host:22", "invalid host pattern"),
    ],
)
def test_validate_allow_entry_rejects(entry: str, problem: str) -> None:
    with pytest.raises(PatternError) as caught:
        validate_allow_entry(entry)
    assert problem in str(caught.value)


def test_a_port_entry_grants_exactly_that_host_and_port() -> None:
    allowlist = Allowlist(["git.example.com:22", "[::1]:2222", "other.test"])
    granted = allowlist.check("GIT.example.com", 22)
    assert granted.allowed and granted.port_grant
    assert granted.rule == "allow:git.example.com:22"
    assert allowlist.check("::1", 2222).port_grant
    # the entry is about one port: the host's other ports, and the name alone, are not allowed
    assert not allowlist.check("git.example.com", 443).allowed
    assert not allowlist.check("git.example.com").allowed
    assert not allowlist.check("sub.git.example.com", 22).allowed
    # a host allowed by name is not granted a port by that
    plain = allowlist.check("other.test", 22)
    assert plain.allowed and not plain.port_grant
    assert "git.example.com:22" in allowlist.patterns


def test_deny_wins_over_a_port_entry() -> None:
    allowlist = Allowlist(["git.example.com:22"], ["*.example.com"])
    decision = allowlist.check("git.example.com", 22)
    assert not decision.allowed and decision.rule == "deny:denylist:*.example.com"


def test_add_takes_a_port_entry() -> None:
    allowlist = Allowlist()
    assert allowlist.add("Git.Example.com:22") == "git.example.com:22"
    assert allowlist.check("git.example.com", 22).port_grant
