"""Host allowlist: normalise a host name and decide whether the proxy may contact it.

Patterns (validated by `validate_pattern`):

* `github.com` matches exactly that name;
* `*.githubusercontent.com` matches one or more labels in front of the
  suffix, never the bare suffix (a suffix needs at least two labels);
* `10.0.0.0/8`, `192.0.2.7`, `::1/128` are IP rules. IP literals in any
  notation are refused unless an IP rule contains the address.

An allow entry may also be `HOST:PORT` (`git.example.com:22`, `[::1]:2222`;
`validate_allow_entry`): it grants that one host, written exactly (no wildcard, no
network), on that one port, and nothing else of the host. The egress gate refuses
SSH ports (22, and a configured git remote's ssh port) unless such an entry grants them.

Deny patterns win over allow patterns. Lookups cost one set probe per label
of the host, however long the lists are.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import NamedTuple

from claude_bottle.policy.netguard import IPAddress, parse_ip_literal

MAX_NAME = 253
MAX_LABEL = 63
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX = frozenset("0123456789abcdef")
# Letters that IDNA 2003 (stdlib) and IDNA 2008 (browsers) map to different names.
_IDNA_DEVIATIONS = frozenset("ßς")
PATTERN_EXAMPLE = "github.com, *.githubusercontent.com or 10.0.0.0/8"
ENTRY_EXAMPLE = f"{PATTERN_EXAMPLE}, or HOST:PORT such as git.example.com:22"


class HostError(ValueError):
    """A host name that cannot be checked; the message says why (`problem` without the host)."""

    def __init__(self, host: str, problem: str) -> None:
        super().__init__(f"invalid host name '{shown(host)}': {problem}")
        self.problem = problem


class PatternError(ValueError):
    """An allowlist pattern that is not valid; the message names it and shows a valid one."""


def shown(text: str, limit: int = MAX_NAME) -> str:
    """Attacker-supplied text made safe to print: escaped control characters, bounded length."""
    out: list[str] = []
    size = 0
    for char in text:
        if char.isprintable() and char != "\\":
            piece = char
        elif char == "\\":
            piece = "\\\\"
        elif ord(char) < 0x100:
            piece = f"\\x{ord(char):02x}"
        else:
            piece = f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}"
        if size + len(piece) > limit:
            out.append("…")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _host_error(host: str, problem: str) -> HostError:
    return HostError(host, problem)


def _ends_in_number(label: str) -> bool:
    """WHATWG: a last label that is a number makes the host an (attempted) IPv4 address."""
    if label.isascii() and label.isdigit():
        return True
    return label.startswith("0x") and _HEX.issuperset(label[2:])


def _idna(host: str, name: str) -> str:
    if _IDNA_DEVIATIONS.intersection(name):
        raise _host_error(host, "'ß' and 'ς' are encoded differently by IDNA 2003 and 2008")
    try:
        encoded = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        detail = shown(str(exc), 80)
        raise _host_error(host, f"not a valid internationalised name ({detail})") from None
    return encoded.lower()


def _check_punycode(host: str, label: str) -> None:
    if not label.startswith("xn--"):
        return
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        decoded = ""
    if not decoded:
        raise _host_error(host, f"label '{label}' is not valid punycode")


def _canonical_ip(ip: IPAddress) -> str:
    return str(ip)


@functools.lru_cache(maxsize=4096)  # every request names its host; most name the same few
def normalize_host(host: str) -> str:
    """The canonical form of a host name, or HostError saying why there is none.

    Lowercases, strips one trailing dot and IPv6 brackets, encodes
    international names as punycode, and writes IP literals of any notation
    in their standard form (`0x7f.1` becomes `127.0.0.1`).
    """
    if not isinstance(host, str) or not host:
        raise HostError("", "it is empty")
    if len(host) > MAX_NAME + 64:
        raise _host_error(host, f"longer than {MAX_NAME} characters")
    if "\x00" in host:
        raise _host_error(host, "contains a NUL byte")
    for char in host:
        if char.isspace():
            raise _host_error(host, "contains whitespace")
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise _host_error(host, "contains a control or invisible character")
    if "@" in host:
        raise _host_error(host, "contains '@' (user information is not part of a host name)")
    text = host
    if text.startswith("[") and text.endswith("]"):
        ip6 = parse_ip_literal(text)
        if not isinstance(ip6, IPv6Address):
            raise _host_error(host, "brackets are only for IPv6 addresses, e.g. [2001:db8::1]")
        return _canonical_ip(ip6)
    if "[" in text or "]" in text:
        raise _host_error(host, "stray '[' or ']'")
    if ":" in text:
        ip6 = parse_ip_literal(text)
        if isinstance(ip6, IPv6Address):
            return _canonical_ip(ip6)
        raise _host_error(host, "contains ':' (a port is not part of a host name)")
    if "%" in text:
        raise _host_error(host, "contains '%' (percent-escapes are not allowed)")
    text = text.lower()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise _host_error(host, "it has no labels")
    if text.startswith(".") or text.endswith(".") or ".." in text:
        raise _host_error(host, "empty label (two dots in a row or a leading dot)")
    ip4 = parse_ip_literal(text)
    if ip4 is not None:
        return _canonical_ip(ip4)
    if not text.isascii():
        text = _idna(host, text)
    if len(text) > MAX_NAME:
        raise _host_error(host, f"longer than {MAX_NAME} characters")
    labels = text.split(".")
    for label in labels:
        if not label:
            raise _host_error(host, "empty label (two dots in a row or a leading dot)")
        if len(label) > MAX_LABEL:
            raise _host_error(host, f"a label is longer than {MAX_LABEL} characters")
        bad = set(label) - _LABEL_CHARS
        if bad:
            char = min(bad)
            raise _host_error(host, f"character '{shown(char)}' is not allowed in a host name")
        _check_punycode(host, label)
    if _ends_in_number(labels[-1]):
        raise _host_error(host, "ends in a number but is not a valid IP address")
    return text


def _pattern_error(pattern: str, problem: str) -> PatternError:
    return PatternError(
        f"invalid host pattern '{shown(pattern)}': {problem}; valid patterns look like "
        f"{PATTERN_EXAMPLE}"
    )


def _validate_ip_rule(pattern: str) -> str:
    address, slash, prefix = pattern.partition("/")
    try:
        address = normalize_host(address)
    except HostError as exc:
        raise _pattern_error(pattern, exc.problem) from None
    if "%" in address:
        raise _pattern_error(pattern, "IP rules cannot carry a zone id")
    ip = parse_ip_literal(address)
    if ip is None:
        raise _pattern_error(pattern, f"'{shown(address)}' is not an IP address")
    if not slash:
        return str(ip)
    if not prefix.isascii() or not prefix.isdigit() or len(prefix) > 3:
        raise _pattern_error(pattern, f"'{shown(prefix)}' is not a prefix length")
    if int(prefix) > ip.max_prefixlen:
        raise _pattern_error(pattern, f"prefix length is at most {ip.max_prefixlen}")
    try:
        network = ip_network(f"{ip}/{int(prefix)}")
    except ValueError:
        loose = ip_network(f"{ip}/{int(prefix)}", strict=False)
        raise _pattern_error(pattern, f"host bits are set (did you mean {loose}?)") from None
    return str(network)


def validate_pattern(pattern: str) -> str:
    """Check an allowlist pattern and return its normalised form (PatternError if invalid)."""
    if not isinstance(pattern, str) or not pattern:
        raise _pattern_error("", "it is empty")
    if "/" in pattern or parse_ip_literal(pattern) is not None:
        return _validate_ip_rule(pattern)
    if pattern == "*" or pattern == "*.":
        raise _pattern_error(pattern, "'*' alone would allow every host")
    if pattern.startswith("*."):
        suffix = pattern[2:]
        if "*" in suffix:
            raise _pattern_error(pattern, "'*' may only be the whole first label")
        try:
            normalised = normalize_host(suffix)
        except HostError as exc:
            raise _pattern_error(pattern, exc.problem) from None
        if parse_ip_literal(normalised) is not None:
            raise _pattern_error(pattern, "a wildcard cannot be combined with an IP address")
        if "." not in normalised:
            raise _pattern_error(
                pattern, "the suffix after '*.' needs at least two labels, like *.example.com"
            )
        return f"*.{normalised}"
    if "*" in pattern:
        raise _pattern_error(pattern, "'*' may only be the whole first label, as in *.example.com")
    try:
        return normalize_host(pattern)
    except HostError as exc:
        raise _pattern_error(pattern, exc.problem) from None


def _split_port_entry(entry: str) -> tuple[str, str] | None:
    """(host, port text) of an entry written HOST:PORT or [IPv6]:PORT; None for a pattern."""
    if entry.startswith("["):
        host, bracket, port = entry.partition("]:")
        return (host + "]", port) if bracket else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return None  # no colon, or a bare IPv6 address (an IP rule)


def is_port_entry(entry: str) -> bool:
    """Whether a normalised allow entry is HOST:PORT (not a host pattern)."""
    return _split_port_entry(entry) is not None


def port_entry(host: str, port: int) -> str:
    """How a HOST:PORT entry is written, IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def validate_allow_entry(entry: str) -> str:
    """Check an allow entry (a pattern, or HOST:PORT) and return its normalised form
    (PatternError if invalid)."""
    split = _split_port_entry(entry) if isinstance(entry, str) else None
    if split is None:
        return validate_pattern(entry)
    host, port_text = split
    if host.startswith("*") or "/" in host:
        raise PatternError(
            f"invalid allow entry '{shown(entry)}': a HOST:PORT entry names one host exactly "
            "(no wildcard, no network)"
        )
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise PatternError(
            f"invalid allow entry '{shown(entry)}': the port must be a number from 1 to 65535"
        )
    try:
        name = normalize_host(host)
    except HostError as exc:
        raise _pattern_error(entry, exc.problem) from None
    return port_entry(name, int(port_text))


class Decision(NamedTuple):  # not a dataclass: see bundle/settings.py
    allowed: bool
    rule: str  # machine tag: allow:<pattern>, deny:not-allowlisted, deny:ip-literal, ...
    reason: str  # one human sentence
    port_grant: bool = False  # allowed by a HOST:PORT entry for exactly that host and port


class _Rules:
    """One side (allow or deny) of the allowlist, indexed for O(labels) lookups."""

    def __init__(self) -> None:
        self.patterns: dict[str, None] = {}  # insertion-ordered set
        self.exact: set[str] = set()
        self.suffixes: set[str] = set()
        # IP rules by (version, prefix length) -> network number -> pattern.
        self.networks: dict[tuple[int, int], dict[int, str]] = {}
        self.ports: set[tuple[str, int]] = set()  # HOST:PORT entries (allow side only)

    def add(self, pattern: str) -> None:
        """Add an already-validated pattern or HOST:PORT entry."""
        if pattern in self.patterns:
            return
        self.patterns[pattern] = None
        split = _split_port_entry(pattern)
        if split is not None:
            self.ports.add((split[0].strip("[]"), int(split[1])))
            return
        if pattern.startswith("*."):
            self.suffixes.add(pattern[2:])
            return
        ip = parse_ip_literal(pattern)
        if ip is None and "/" not in pattern:
            self.exact.add(pattern)
            return
        network = ip_network(pattern)
        table = self.networks.setdefault((network.version, network.prefixlen), {})
        table[int(network.network_address)] = pattern

    def match_name(self, name: str) -> str | None:
        if name in self.exact:
            return name
        dot = name.find(".")
        while dot >= 0:  # longest suffix first, so the most specific rule is reported
            suffix = name[dot + 1 :]
            if suffix in self.suffixes:
                return f"*.{suffix}"
            dot = name.find(".", dot + 1)
        return None

    def match_ip(self, forms: Iterable[IPAddress]) -> str | None:
        if not self.networks:
            return None
        for ip in forms:
            value = int(ip)
            for (version, prefixlen), table in self.networks.items():
                if version != ip.version:
                    continue
                shift = ip.max_prefixlen - prefixlen
                hit = table.get((value >> shift) << shift)
                if hit is not None:
                    return hit
        return None


def _ip_forms(ip: IPAddress, *, embedded: bool) -> list[IPAddress]:
    """The address plus the IPv4 address it stands for when mapped (and, if asked, embedded)."""
    forms: list[IPAddress] = [ip]
    if isinstance(ip, IPv6Address):
        plain = IPv6Address(int(ip))
        forms[0] = plain
        if plain.ipv4_mapped is not None:
            forms.append(plain.ipv4_mapped)
        elif embedded:
            value = int(plain)
            if value >> 32 in (0, 0xFFFF0000, 0x64FF9B << 64) and value > 1:
                forms.append(IPv4Address(value & 0xFFFFFFFF))
            if plain.sixtofour is not None:
                forms.append(plain.sixtofour)
            if plain.teredo is not None:
                forms.extend(plain.teredo)
    return forms


class Allowlist:
    """Allow and deny host patterns; `check` decides for one host."""

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self._allow = _Rules()
        self._deny = _Rules()
        for pattern in allow:
            self._allow.add(validate_allow_entry(pattern))
        for pattern in deny:
            self._deny.add(validate_pattern(pattern))

    def add(self, pattern: str) -> str:
        """Add an allow entry; returns its normalised form (PatternError if invalid)."""
        normalised = validate_allow_entry(pattern)
        self._allow.add(normalised)
        return normalised

    @property
    def patterns(self) -> tuple[str, ...]:
        """The allow patterns, normalised, in the order they were added."""
        return tuple(self._allow.patterns)

    @property
    def deny_patterns(self) -> tuple[str, ...]:
        return tuple(self._deny.patterns)

    def check(self, host: str, port: int | None = None) -> Decision:
        """Decide for `host`; with `port`, a HOST:PORT entry for exactly it allows it too
        (and says so in `port_grant`)."""
        try:
            name = normalize_host(host)
        except HostError as exc:
            return Decision(False, "deny:bad-host", f"{exc}.")
        ip = parse_ip_literal(name)
        if ip is not None:
            return self._check_ip(host, name, ip, port)
        hit = self._deny.match_name(name)
        if hit is not None:
            return Decision(False, f"deny:denylist:{hit}", f"{name} matches deny rule {hit}.")
        granted = self._port_grant(name, port)
        if granted is not None:
            return granted
        hit = self._allow.match_name(name)
        if hit is not None:
            return Decision(True, f"allow:{hit}", f"{name} matches allow rule {hit}.")
        return Decision(False, "deny:not-allowlisted", f"{name} is not on the allowlist.")

    def _port_grant(self, name: str, port: int | None) -> Decision | None:
        if port is None or (name, port) not in self._allow.ports:
            return None
        entry = port_entry(name, port)
        return Decision(True, f"allow:{entry}", f"{entry} matches allow entry {entry}.", True)

    def _check_ip(self, host: str, name: str, ip: IPAddress, port: int | None) -> Decision:
        label = shown(name)
        hit = self._deny.match_ip(_ip_forms(ip, embedded=True))
        if hit is not None:
            return Decision(False, f"deny:denylist:{hit}", f"{label} matches deny rule {hit}.")
        granted = self._port_grant(name, port)
        if granted is not None:
            return granted
        hit = self._allow.match_ip(_ip_forms(ip, embedded=False))
        if hit is not None:
            return Decision(True, f"allow:{hit}", f"{label} matches allow rule {hit}.")
        written = "" if host == name else f" (written '{shown(host, 64)}')"
        return Decision(
            False,
            "deny:ip-literal",
            f"IP address {label}{written} is not covered by an IP allow rule; "
            "connect by host name instead.",
        )
