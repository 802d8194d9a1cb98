"""Data-loss prevention: find credentials and the user's own secrets in outgoing bytes.

Pure logic, no I/O. The proxy builds one `Scanner` per bottle and asks it
about every URL, header, body chunk and host name leaving the bottle.

* All patterns (the credential table in `dlp_patterns`, the operator's
  extra patterns and the fingerprints of the user's secret values) are
  compiled into ONE multi-pattern engine and the data is scanned in one
  pass: Hyperscan if importable, else RE2 (`re2.Set`), else one combined
  Python `re` alternation (`dlp_engine`). `Scanner.engine` says which. The
  engine looks for each pattern's filter (its distinctive prefix, cheap to
  compile) and only says which pattern hit where; that one pattern's full
  regex then runs on a small window around the hit for exact bounds, and
  its validator (Luhn, mod-97, JWT header, not-a-placeholder, the entropy of
  a value next to its keyword) decides.
* A `Finding` names the pattern, the location the caller gave, the offsets
  and a fingerprint (a hash, for `[dlp] ignore_fingerprints`); it never
  carries the matched text. Findings silenced by `[dlp] ignore*` are
  flagged `ignored` for the caller to let through and audit.
* `Scanner.stream` scans a body chunk by chunk, keeping an overlap window
  longer than any match, so a secret split across reads is found exactly
  once.
* `decoded_stream` (`dlp_decode`) undoes Content-Encoding (gzip, deflate,
  br) with an output cap and a ratio cap: a decompression bomb raises
  `DecompressionBomb` instead of being inflated.
* `scan_host_labels` flags host names whose labels carry encoded data
  (DNS exfiltration through an allowed wildcard).
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, quote_plus

from claude_bottle.policy.dlp_decode import (
    SUPPORTED_ENCODINGS,
    CorruptBody,
    DecodeError,
    Decoder,
    DecompressionBomb,
    UnsupportedEncoding,
    decoded_stream,
)
from claude_bottle.policy.dlp_engine import (
    ENGINES,
    CompiledCache,
    DlpPatternError,
    _build_engine,
    _escape_literal,
    _regex_width,
    _Rule,
    available_engines,
    prefix_filter,
)
from claude_bottle.policy.dlp_keywords import GENERIC_RULES
from claude_bottle.policy.dlp_patterns import MAX_PATTERN_WIDTH, PATTERNS
from claude_bottle.policy.validators import shannon_entropy

# Defined in the submodules, part of this module's interface (bundle.scanning and tests).
__all__ = [
    "ENGINES",
    "SUPPORTED_ENCODINGS",
    "CompiledCache",
    "CorruptBody",
    "DecodeError",
    "Decoder",
    "DecompressionBomb",
    "DlpPatternError",
    "Finding",
    "Scanner",
    "StreamScan",
    "UnsupportedEncoding",
    "available_engines",
    "decoded_stream",
    "default_scanner",
    "finding_fingerprint",
    "host_label_findings",
    "prefix_filter",
    "scan_host_labels",
    "secret_forms",
]

MIN_SECRET_LENGTH = 8  # shorter values would match ordinary text far too often
MIN_SECRET_DISTINCT = 5  # "aaaaaaaa" or "12121212" is not a secret worth matching
SECRET_PREFIX_BYTES = 256  # longer values are fingerprinted by their first 256 bytes
MIN_EXTRA_WIDTH = 4
LOOKAHEAD = 16  # bytes that must follow a match before a stream reports it
GUARD = 64  # context kept before the first byte a stream may report from
STREAM_WINDOW = 4096  # upper bound of the overlap kept between stream chunks
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One hit: which pattern, where (as the caller named it), and the byte offsets.

    The matched bytes are deliberately not kept: a Finding may be logged.
    """

    pattern: str
    location: str
    start: int
    end: int
    # A hash of the rule and the matched bytes, for `[dlp] ignore_fingerprints`: it names
    # one false positive without storing it. Empty for the user's own secrets.
    fingerprint: str = dataclasses.field(default="", compare=False)
    # Silenced by `[dlp] ignore` or `ignore_fingerprints`: let through, but audited.
    ignored: bool = False


FINGERPRINT_HEX = 16
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")


def finding_fingerprint(rule: str, matched: bytes) -> str:
    """The fingerprint of one match: 64 bits of SHA-256 over the rule id and the bytes."""
    digest = hashlib.sha256(b"claude-bottle dlp\0" + rule.encode() + b"\0" + matched)
    return digest.hexdigest()[:FINGERPRINT_HEX]


# ---------------------------------------------------------------------------------------
# Fingerprints of the user's secret values


def _embedded_core(value: bytes, align: int, group: int, bits: int, encode: Any) -> bytes:
    """The part of encode(...P + value + Q...) fixed by `value` when len(P) % group == align.

    A base64 (bits=6, group=3) or base32 (bits=5, group=5) symbol covers
    `bits` bits of the input; only symbols whose bits all come from `value`
    are the same whatever surrounds it, so those are what a long encoded
    blob containing the secret is sure to contain.
    """
    encoded: bytes = encode(b"\0" * align + value + b"\0" * group)
    first = -(-8 * align // bits)
    last = 8 * (align + len(value)) // bits
    return encoded[first:last]


def secret_forms(value: bytes) -> list[tuple[str, bytes, bool]]:
    """(encoding, literal, caseless) for every form of `value` the scanner looks for."""
    forms: list[tuple[str, bytes, bool]] = [("raw", value, False)]
    for align in range(3):
        core = _embedded_core(value, align, 3, 6, base64.b64encode)
        forms.append(("base64", core, False))
        forms.append(("base64url", core.replace(b"+", b"-").replace(b"/", b"_"), False))
    for align in range(5):
        forms.append(("base32", _embedded_core(value, align, 5, 5, base64.b32encode), True))
    forms.append(("hex", value.hex().encode("ascii"), True))
    forms.append(("url", quote(value, safe="").encode("ascii"), False))
    forms.append(("url", quote_plus(value, safe="").encode("ascii"), False))
    forms.append(("url", "".join(f"%{byte:02X}" for byte in value).encode("ascii"), True))
    text = value.decode("utf-8", "surrogateescape")
    escaped = json.dumps(text)[1:-1]
    forms.append(("json", escaped.encode("utf-8", "surrogateescape"), False))
    forms.append(("json", escaped.replace("/", "\\/").encode("utf-8", "surrogateescape"), False))
    unique: list[tuple[str, bytes, bool]] = []
    seen: set[tuple[bytes, bool]] = set()
    for encoding, literal, caseless in forms:
        key = (literal.lower() if caseless else literal, caseless)
        if len(literal) < MIN_SECRET_LENGTH or key in seen:
            continue
        seen.add(key)
        unique.append((encoding, literal, caseless))
    return unique


def _secret_value(value: str) -> bytes | None:
    raw = value.strip().encode("utf-8", "surrogateescape")
    if len(raw) < MIN_SECRET_LENGTH or len(set(raw)) < MIN_SECRET_DISTINCT:
        return None
    return raw[:SECRET_PREFIX_BYTES]


def _secret_label(label: str) -> str:
    return _LABEL_SAFE.sub("_", label)[:64] or "_"


# ---------------------------------------------------------------------------------------
# Scanner


@functools.cache
def builtin_rules() -> tuple[_Rule, ...]:
    """The built-in patterns as rules, made once per process (each regex parsed twice, ~13
    ms): a warm process makes them ahead for every bundle forked from its runs."""
    rules: list[_Rule] = []
    for spec in PATTERNS:
        regex = spec.regex.encode("ascii")
        prefilter = spec.prefilter.encode("ascii") if spec.prefilter else None
        width = _regex_width(regex)[1]
        rules.append(
            _Rule(spec.name, regex, validator=spec.validator, width=width, prefilter=prefilter)
        )
    return tuple(rules)


def _checked_ignores(names: Sequence[str], known: set[str]) -> frozenset[str]:
    """Rule ids to silence: known patterns only, never a fingerprint of the user's secrets."""
    for name in names:
        if name.startswith("secret:"):
            raise DlpPatternError(
                f"'{name[:80]}' cannot be ignored: findings of your own secret values always block"
            )
        if name not in known:
            raise DlpPatternError(
                f"'{name[:80]}' is not a DLP rule id; `claude-bottle dlp scan` shows the ids"
            )
    return frozenset(names)


def _checked_fingerprints(fingerprints: Sequence[str]) -> frozenset[str]:
    for fingerprint in fingerprints:
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise DlpPatternError(
                f"'{fingerprint[:80]}' is not a finding fingerprint "
                f"({FINGERPRINT_HEX} lowercase hex digits, as `claude-bottle dlp scan` prints)"
            )
    return frozenset(fingerprints)


def _extra_rule(name: str, regex: str, taken: set[str]) -> _Rule:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DlpPatternError(
            f"DLP pattern name {name!r} is not valid: use lowercase letters, digits and '-', "
            "like 'acme-api-key'"
        )
    if name in taken:
        raise DlpPatternError(f"DLP pattern name '{name}' is already used")
    raw = regex.encode("utf-8")
    try:
        re.compile(raw)
    except re.error as exc:
        raise DlpPatternError(f"DLP pattern '{name}' is not a valid regex: {exc}") from None
    low, high = _regex_width(raw)
    if high > MAX_PATTERN_WIDTH:
        raise DlpPatternError(
            f"DLP pattern '{name}' can match more than {MAX_PATTERN_WIDTH} bytes; "
            "bound every repetition, e.g. [A-Za-z0-9]{20,64} instead of [A-Za-z0-9]+"
        )
    if low < MIN_EXTRA_WIDTH:
        raise DlpPatternError(
            f"DLP pattern '{name}' can match fewer than {MIN_EXTRA_WIDTH} bytes; "
            "it would flag ordinary text"
        )
    return _Rule(name, raw, width=high)


class Scanner:
    """All DLP patterns plus the user's secret fingerprints, compiled once per bottle.

    `secrets` maps a label (an env var name, a credential name) to the
    secret's value. Each value is matched verbatim and as base64 and
    base64url (at every alignment, so it is found inside a longer encoded
    blob), base32, hex (either case), URL-encoded (`%XX`, `+` for space, and
    every byte escaped) and JSON-escaped. Values are stripped of surrounding
    whitespace; values shorter than 8 characters, or made of fewer than 5
    different characters, are ignored (they would match ordinary text); only
    the first 256 bytes of longer values are fingerprinted. Findings name
    them `secret:<label>:<encoding>`. The values exist only inside the
    compiled engine: no attribute, repr or message shows them.

    `extra_patterns` are (name, regex) pairs from the operator; the regex
    must be bounded (at most MAX_PATTERN_WIDTH bytes) and use only syntax
    common to Hyperscan, RE2 and Python (no look-around or
    back-references), else DlpPatternError. `engine` forces one engine
    ("hyperscan", "re2", "re"); by default the best importable one is used.
    `cache` lets Hyperscan reuse its compiled database of the patterns (never
    of the secrets) across bottles.
    """

    def __init__(
        self,
        extra_patterns: Sequence[tuple[str, str]] = (),
        secrets: Mapping[str, str] | None = None,
        *,
        engine: str | None = None,
        cache: CompiledCache | None = None,
        ignore_rules: Sequence[str] = (),
        ignore_fingerprints: Sequence[str] = (),
    ) -> None:
        rules = list(builtin_rules())
        taken = {rule.name for rule in rules}
        for name, regex in extra_patterns:
            rule = _extra_rule(name, regex, taken)
            taken.add(name)
            rules.append(rule)
        self._pattern_names = tuple(rule.name for rule in rules)
        self._ignored_rules = _checked_ignores(ignore_rules, taken)
        self._ignored_fingerprints = _checked_fingerprints(ignore_fingerprints)
        shared = len(rules)
        labels: list[str] = []
        for label, value in (secrets or {}).items():
            raw = _secret_value(value)
            if raw is None:
                continue
            shown_label = _secret_label(label)
            labels.append(shown_label)
            for encoding, literal, caseless in secret_forms(raw):
                rules.append(
                    _Rule(
                        f"secret:{shown_label}:{encoding}",
                        _escape_literal(literal),
                        caseless=caseless,
                        width=len(literal),
                    )
                )
        self._secret_labels = tuple(labels)
        self._rules = rules
        self._engine = _build_engine(rules, engine, shared, cache)
        self.max_match = max(rule.width for rule in rules)
        # Bytes a stream keeps between chunks: any match that could still be
        # incomplete, plus the context before it that \b and validators look at.
        self.overlap = self.max_match + LOOKAHEAD + GUARD
        assert self.overlap <= STREAM_WINDOW

    def __repr__(self) -> str:
        return (
            f"Scanner(engine={self.engine!r}, patterns={len(self._pattern_names)}, "
            f"secrets={len(self._secret_labels)})"
        )

    @property
    def engine(self) -> str:
        """The multi-pattern engine in use: "hyperscan", "re2" or "re"."""
        return self._engine.name

    @property
    def pattern_names(self) -> tuple[str, ...]:
        """Built-in and extra pattern names (fingerprints are not patterns)."""
        return self._pattern_names

    @property
    def secret_labels(self) -> tuple[str, ...]:
        """Labels of the secrets actually fingerprinted (too-short values are left out)."""
        return self._secret_labels

    def _matches(self, data: bytes) -> list[tuple[int, int, int]]:
        """(rule index, start, end) of every validated match, by start offset."""
        if not data:
            return []
        spans: list[tuple[int, int, int]] = []
        for index, hints in self._engine.hits(data).items():
            rule = self._rules[index]
            last_end = -1
            for start, end in sorted(self._engine.confirm(rule, index, data, hints)):
                if start < last_end:
                    continue  # inside a match of the same pattern already kept
                if rule.validator is not None and not rule.validator(data, start, end):
                    continue
                spans.append((index, start, end))
                last_end = end
        spans.sort(key=lambda span: (span[1], span[2], span[0]))
        if any(self._rules[index].name in GENERIC_RULES for index, _, _ in spans):
            spans = self._without_shadowed_generics(spans)
        return spans

    def _without_shadowed_generics(
        self, spans: list[tuple[int, int, int]]
    ) -> list[tuple[int, int, int]]:
        """Drop generic-rule matches whose bytes a specific rule also matched (one finding).

        `spans` is sorted by start; so are the specific spans, and the running
        maximum of their ends answers "does one that starts before `end` reach past
        `start`" with one bisection (no quadratic cost on a body full of matches).
        """
        starts: list[int] = []
        reach: list[int] = []  # reach[i]: the furthest end among the first i+1 specific spans
        for index, start, end in spans:
            if self._rules[index].name not in GENERIC_RULES:
                starts.append(start)
                reach.append(max(end, reach[-1]) if reach else end)
        kept: list[tuple[int, int, int]] = []
        for index, start, end in spans:
            if self._rules[index].name in GENERIC_RULES:
                before = bisect.bisect_left(starts, end)  # specific spans starting before `end`
                if before and reach[before - 1] > start:
                    continue
            kept.append((index, start, end))
        return kept

    def _finding(
        self, index: int, location: str, data: bytes, start: int, end: int, base: int = 0
    ) -> Finding:
        """A Finding at `start`-`end` of `data`, reported at offset `base` + start."""
        name = self._rules[index].name
        if index >= len(self._pattern_names):  # the user's own secret: never silenced
            return Finding(name, location, base + start, base + end)
        fingerprint = finding_fingerprint(name, data[start:end])
        ignored = name in self._ignored_rules or fingerprint in self._ignored_fingerprints
        return Finding(name, location, base + start, base + end, fingerprint, ignored)

    def scan(self, data: bytes, location: str) -> list[Finding]:
        """Every finding in `data`; `location` (e.g. "url.query") is copied into each.

        Findings silenced by `ignore_rules` or `ignore_fingerprints` are included
        with `ignored` set: the caller lets them through and audits that it did.
        """
        if not isinstance(data, bytes):
            data = bytes(data)
        return [
            self._finding(index, location, data, start, end)
            for index, start, end in self._matches(data)
        ]

    def scan_header(self, name: bytes, value: bytes, location: str) -> list[Finding]:
        """Findings in one header, scanned as `name: value` so keyword rules see the name.

        `X-Datadog-Api-Key: <hex>` is caught by the name next to the value, as in a
        config file. Offsets index into `value` (0 for a match starting in the name).
        """
        skip = len(name) + 2
        return [
            dataclasses.replace(found, start=max(0, found.start - skip), end=found.end - skip)
            for found in self.scan(bytes(name) + b": " + bytes(value), location)
            if found.end > skip
        ]

    def stream(self, location: str) -> StreamScan:
        """A scanner for one body fed chunk by chunk; offsets count from its first byte."""
        return StreamScan(self, location)

    def scan_host(self, host: str) -> list[Finding]:
        """Encoded-data labels (see `host_label_findings`) plus patterns and secrets in `host`.

        Pass the host as the client wrote it (case preserved): base64 and
        most token formats are case-sensitive. Offsets index into `host`.
        """
        findings = host_label_findings(host)
        if host.isascii():
            findings.extend(self.scan(host.encode("ascii"), "host"))
        findings.sort(key=lambda finding: (finding.start, finding.end, finding.pattern))
        return findings


class StreamScan:
    """Incremental scan of one body: `feed` each chunk, then `finish`.

    Keeps the last `Scanner.overlap` bytes (< 4 KiB) between chunks. A match
    is reported once the bytes after it are known (or at `finish`), and only
    once, however the body is split. Offsets are from the start of the body.
    """

    def __init__(self, scanner: Scanner, location: str) -> None:
        self._scanner = scanner
        self._location = location
        self._buffer = b""
        self._base = 0  # stream offset of _buffer[0]
        self._floor = 0  # matches starting before this were settled by an earlier chunk
        self._reported: list[tuple[int, int, int]] = []  # (rule, start, end), stream offsets
        self._finished = False
        self.consumed = 0

    def feed(self, chunk: bytes) -> list[Finding]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not chunk:
            return []
        self.consumed += len(chunk)
        buffer = self._buffer + bytes(chunk)
        found = self._collect(buffer, final=False)
        keep = self._scanner.overlap
        if len(buffer) > keep:
            cut = len(buffer) - keep
            self._base += cut
            self._floor = self._base + GUARD
            buffer = buffer[cut:]
            self._reported = [item for item in self._reported if item[2] > self._floor]
        self._buffer = buffer
        return found

    def finish(self) -> list[Finding]:
        if self._finished:
            return []
        self._finished = True
        found = self._collect(self._buffer, final=True)
        self._buffer = b""
        self._reported = []
        return found

    def _collect(self, buffer: bytes, final: bool) -> list[Finding]:
        limit = len(buffer) if final else len(buffer) - LOOKAHEAD
        found: list[Finding] = []
        for index, start, end in self._scanner._matches(buffer):
            if end > limit:
                continue  # the bytes after it are not known yet
            begin, stop = start + self._base, end + self._base
            if begin < self._floor:
                continue
            if any(
                rule == index and first < stop and begin < last
                for rule, first, last in self._reported
            ):
                continue
            self._reported.append((index, begin, stop))
            found.append(
                self._scanner._finding(index, self._location, buffer, start, end, self._base)
            )
        return found


@functools.cache
def default_scanner() -> Scanner:
    """A Scanner with the built-in patterns only (no secrets), built on first use."""
    return Scanner()


# ---------------------------------------------------------------------------------------
# Host labels: DNS exfiltration through an allowed wildcard

HOST_RUN = 24  # shortest run of encoded-looking characters that is flagged
HEX_ENTROPY = 2.5  # bits/symbol; 24 random hex digits score 2.6-3.9 (1e5 draws)
BASE32_ENTROPY = 3.0  # 15 random bytes in base32 (24 symbols) score 3.1-4.4
LETTERS_ENTROPY = 3.8
MIXED_CASE_RUN = 20
MIXED_CASE_ENTROPY = 4.0
_HOST_RUN = re.compile(r"[A-Za-z0-9]+")
_HEX_CHARS = frozenset("0123456789abcdefABCDEF")
_VOWELS = frozenset("aeiouAEIOU")


def _encoded_kind(run: str) -> str | None:
    """Why a run of letters and digits inside a host label looks like encoded data, or None."""
    size = len(run)
    if size < HOST_RUN:
        return None
    entropy = shannon_entropy(run.lower())
    if _HEX_CHARS.issuperset(run):
        return "hex" if entropy >= HEX_ENTROPY else None
    digits = sum(char.isdigit() for char in run)
    if digits >= 2 and size - digits >= 2:
        return "base32" if entropy >= BASE32_ENTROPY else None
    if digits == 0:
        vowels = sum(char in _VOWELS for char in run)
        if vowels * 4 < size and entropy >= LETTERS_ENTROPY:
            return "base32"
    return None


def _mixed_case_label(label: str) -> bool:
    """A base64url-looking label: long, upper and lower case mixed, high entropy."""
    if len(label) < MIXED_CASE_RUN or label.lower() == label or label.upper() == label:
        return False
    uppers = sum(char.isupper() for char in label)
    lowers = sum(char.islower() for char in label)
    return uppers >= 2 and lowers >= 2 and shannon_entropy(label) >= MIXED_CASE_ENTROPY


def host_label_findings(host: str) -> list[Finding]:
    """Runs of letters and digits in the labels of `host` that look like encoded data.

    Flags (pattern `dns-exfil-<kind>`, location "host", offsets into `host`):
    hex runs of 24+ symbols with entropy >= 2.5 bits (a whole label of 32+
    hex digits, dashes ignored, too: a UUID label carries 16 bytes);
    base32/base36 runs of 24+ mixing letters and digits with entropy >= 3.0;
    24+ letters with few vowels and entropy >= 3.8; labels of 20+ mixing
    upper and lower case with entropy >= 4.0 (base64url). Payloads under
    about 12 bytes per label pass: this catches bulk encoding, not a
    patient attacker spreading data over many short labels. Ordinary
    labels (www, api, cdn-123, us-east-1, a 12-digit git SHA prefix, words
    joined by dashes) pass.
    """
    findings: list[Finding] = []
    offset = 0
    for label in host.split("."):
        flagged = _mixed_case_label(label)
        if flagged:
            findings.append(Finding("dns-exfil-base64", "host", offset, offset + len(label)))
        for match in [] if flagged else _HOST_RUN.finditer(label):
            kind = _encoded_kind(match.group())
            if kind is not None:
                flagged = True
                start = offset + match.start()
                findings.append(
                    Finding(f"dns-exfil-{kind}", "host", start, start + len(match.group()))
                )
        joined = label.replace("-", "").replace("_", "")
        if (
            not flagged
            and len(joined) >= 32
            and _HEX_CHARS.issuperset(joined)
            and shannon_entropy(joined.lower()) >= HEX_ENTROPY
        ):
            findings.append(Finding("dns-exfil-hex", "host", offset, offset + len(label)))
        offset += len(label) + 1
    return findings


def scan_host_labels(host: str) -> list[Finding]:
    """Encoded-looking labels plus built-in credential patterns in `host`.

    A bottle's own Scanner (`Scanner.scan_host`) also checks the user's
    secret fingerprints; this function uses the shared default scanner.
    """
    return default_scanner().scan_host(host)
