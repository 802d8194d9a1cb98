"""Data-loss prevention: find credentials and the user's own secrets in outgoing bytes.

Pure logic, no I/O. The proxy builds one `Scanner` per bottle and asks it
about every URL, header, body chunk and host name leaving the bottle.

* All patterns (the credential table in `dlp_patterns`, the operator's
  extra patterns and the fingerprints of the user's secret values) are
  compiled into ONE multi-pattern engine and the data is scanned in one
  pass: Hyperscan if importable, else RE2 (`re2.Set`), else one combined
  Python `re` alternation. `Scanner.engine` says which. The engine looks
  for each pattern's filter (its distinctive prefix, cheap to compile) and
  only says which pattern hit where; that one pattern's full regex then
  runs on a small window around the hit for exact bounds, and its
  validator (Luhn, mod-97, JWT header, not-a-placeholder) decides.
* A `Finding` names the pattern, the location the caller gave and the
  offsets; it never carries the matched text.
* `Scanner.stream` scans a body chunk by chunk, keeping an overlap window
  longer than any match, so a secret split across reads is found exactly
  once.
* `decoded_stream` undoes Content-Encoding (gzip, deflate, br) with an
  output cap and a ratio cap: a decompression bomb raises
  `DecompressionBomb` instead of being inflated.
* `scan_host_labels` flags host names whose labels carry encoded data
  (DNS exfiltration through an allowed wildcard).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import importlib
import json
import platform
import re
import threading
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

from claude_bottle.policy.dlp_keywords import GENERIC_RULES
from claude_bottle.policy.dlp_patterns import MAX_PATTERN_WIDTH, PATTERNS, Validator
from claude_bottle.policy.validators import shannon_entropy

ENGINES = ("hyperscan", "re2", "re")
MIN_SECRET_LENGTH = 8  # shorter values would match ordinary text far too often
MIN_SECRET_DISTINCT = 5  # "aaaaaaaa" or "12121212" is not a secret worth matching
SECRET_PREFIX_BYTES = 256  # longer values are fingerprinted by their first 256 bytes
MIN_EXTRA_WIDTH = 4
LOOKAHEAD = 16  # bytes that must follow a match before a stream reports it
GUARD = 64  # context kept before the first byte a stream may report from
STREAM_WINDOW = 4096  # upper bound of the overlap kept between stream chunks
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class DlpPatternError(ValueError):
    """An extra DLP pattern that cannot be used; the message names it and says why."""


class DecodeError(ValueError):
    """A body that cannot be decoded for scanning (and so must not be forwarded)."""


class UnsupportedEncoding(DecodeError):
    """A Content-Encoding the scanner cannot undo."""


class DecompressionBomb(DecodeError):
    """Decoded output past the size cap, or expanding faster than the ratio cap."""


class CorruptBody(DecodeError):
    """Compressed data that is malformed or truncated."""


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


class _Rule:
    """One compiled-in pattern. Secret fingerprints live here; repr never shows the regex."""

    __slots__ = (
        "_compiled",
        "caseless",
        "filter",
        "filter_width",
        "name",
        "regex",
        "validator",
        "width",
    )

    def __init__(
        self,
        name: str,
        regex: bytes,
        *,
        caseless: bool = False,
        validator: Validator | None = None,
        width: int,
        prefilter: bytes | None = None,
    ) -> None:
        self.name = name
        self.regex = regex
        self.caseless = caseless
        self.validator = validator
        self.width = width
        # What the engine looks for: a cheaper regex whose hits lie at most
        # `filter_width` bytes after the start of a real match.
        self.filter = prefix_filter(regex) if prefilter is None else prefilter
        self.filter_width = width if self.filter == regex else _regex_width(self.filter)[1]
        self._compiled: re.Pattern[bytes] | None = None

    def __repr__(self) -> str:
        return f"<dlp rule {self.name}>"

    def compiled(self) -> re.Pattern[bytes]:
        if self._compiled is None:
            self._compiled = re.compile(self.regex, re.IGNORECASE if self.caseless else 0)
        return self._compiled

    def wrapped(self, regex: bytes) -> bytes:
        """`regex` with this rule's case-insensitivity written inline (for combined engines)."""
        return b"(?i:" + regex + b")" if self.caseless else regex


def _regex_width(regex: bytes) -> tuple[int, int]:
    parser: Any = importlib.import_module("re._parser")
    low, high = parser.parse(regex).getwidth()
    return int(low), int(high)


def _escape_literal(value: bytes) -> bytes:
    """A regex matching exactly `value` in all three engines (bytes as \\xNN escapes)."""
    return b"".join(
        bytes([byte])
        if (48 <= byte <= 57 or 65 <= byte <= 90 or 97 <= byte <= 122)
        else b"\\x%02x" % byte
        for byte in value
    )


_QUANTIFIER = re.compile(rb"(?:\{(\d+)(?:,(\d*))?\}|[?*+])\??")


def _atoms(regex: bytes) -> list[tuple[bytes, bytes]]:
    """Split a regex into (atom, quantifier) pairs at its top level."""
    atoms: list[tuple[bytes, bytes]] = []
    index, size = 0, len(regex)
    while index < size:
        start = index
        char = regex[index : index + 1]
        if char == b"\\":
            index += 4 if regex[index + 1 : index + 2] == b"x" else 2
        elif char == b"[":
            index += 1
            if regex[index : index + 1] == b"^":
                index += 1
            if regex[index : index + 1] == b"]":
                index += 1
            while index < size and regex[index : index + 1] != b"]":
                index += 2 if regex[index : index + 1] == b"\\" else 1
            index += 1
        elif char == b"(":
            depth = 0
            while index < size:
                token = regex[index : index + 1]
                if token == b"\\":
                    index += 2
                    continue
                if token == b"[":
                    inner = _atoms(regex[index:])[0][0]
                    index += len(inner)
                    continue
                depth += {b"(": 1, b")": -1}.get(token, 0)
                index += 1
                if depth == 0:
                    break
        else:
            index += 1
        atom = regex[start:index]
        quantifier = _QUANTIFIER.match(regex, index)
        suffix = quantifier.group() if quantifier and atom != b"|" else b""
        index += len(suffix)
        atoms.append((atom, suffix))
    return atoms


FILTER_REPEAT = 16  # longest repetition kept in an engine filter


def _upper_bound(quantifier: bytes) -> tuple[int, int]:
    """(min, max) repetitions of a quantifier; max is large for +, * and {m,}."""
    if not quantifier:
        return 1, 1
    head = quantifier[:1]
    if head in (b"+", b"*"):
        return (1 if head == b"+" else 0), 1 << 30
    if head == b"?":
        return 0, 1
    bounds = _QUANTIFIER.fullmatch(quantifier)
    assert bounds is not None and bounds.group(1) is not None
    low = int(bounds.group(1))
    if bounds.group(2) is None:
        return low, (low if b"," not in quantifier else 1 << 30)
    return low, int(bounds.group(2) or 1 << 30)


def prefix_filter(regex: bytes, repeat: int = FILTER_REPEAT) -> bytes:
    """A cheaper regex matching a prefix of every match of `regex`, at the same start.

    At the end of each top-level alternative, word boundaries and optional
    parts are dropped and a final repetition of more than `repeat` becomes
    `{min(m, repeat)}`. Long repetitions are what make Hyperscan and RE2
    slow to compile, and most sit at the end of a token after a distinctive
    prefix; the engine finds these prefixes and the full regex then runs
    only on the window around each hit.
    """
    branches: list[list[tuple[bytes, bytes]]] = [[]]
    for atom, quantifier in _atoms(regex):
        if atom == b"|":
            branches.append([])
        else:
            branches[-1].append((atom, quantifier))
    out: list[bytes] = []
    for branch in branches:
        kept = list(branch)
        while len(kept) > 1:
            atom, quantifier = kept[-1]
            low, high = _upper_bound(quantifier)
            if atom == b"\\b" or low == 0:
                kept.pop()
                continue
            if high > repeat:
                kept[-1] = (atom, b"{%d}" % min(low, repeat))
            break
        if kept == branch[: len(kept)] and all(atom == b"\\b" for atom, _ in branch[len(kept) :]):
            kept = branch  # only a final \b would go: nothing to gain, keep it
        out.append(b"".join(atom + quantifier for atom, quantifier in kept))
    return b"|".join(out)


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
# Engines: one pass over the data, reporting which rule hit near where


class _Engine(Protocol):
    name: str

    def hits(self, data: bytes) -> dict[int, list[int] | None]:
        """Rule index -> hint offsets (end offsets, start offsets, or None: anywhere)."""
        ...

    def confirm(
        self, rule: _Rule, index: int, data: bytes, hints: list[int] | None
    ) -> list[tuple[int, int]]:
        """Exact (start, end) of that rule's matches near the hints."""
        ...


def _windows(ends: list[int], width: int) -> list[tuple[int, int]]:
    """Merge [end - width, end] for each end offset into disjoint windows."""
    merged: list[tuple[int, int]] = []
    for end in ends:
        begin = max(0, end - width)
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def _confirm_windows(rule: _Rule, data: bytes, ends: list[int]) -> list[tuple[int, int]]:
    pattern = rule.compiled()
    size = len(data)
    spans: list[tuple[int, int]] = []
    # A filter hit ending at `end` starts a full match in [end - filter_width, end],
    # and that match ends at most `width` bytes after its start.
    for begin, end in _windows(ends, rule.filter_width):
        stop = min(size, end + rule.width + 1)
        for match in pattern.finditer(data, begin, stop):
            start, finish = match.span()
            if finish >= stop - 1 and stop < size:  # may be cut short by the window: redo
                full = pattern.match(data, start)
                if full is None:
                    continue
                finish = full.end()
            spans.append((start, finish))
    return spans


class CompiledCache(Protocol):
    """Where an engine may keep compiled pattern databases between bottles (the caller's I/O).

    Only the built-in and operator patterns are ever stored: the user's secret
    fingerprints are compiled fresh, never written anywhere.
    """

    def load(self, key: str) -> bytes | None: ...

    def store(self, key: str, blob: bytes) -> None: ...


class _HyperscanEngine:
    """Two databases: the patterns (the first `shared` rules, cacheable) and the secrets.

    Compiling the ~90 patterns takes a fifth of a second and holds the GIL; loading a
    cached database takes microseconds. The secrets are literals and compile in
    milliseconds. Rule ids are indices into `rules` across both databases.
    """

    name = "hyperscan"

    def __init__(
        self, rules: Sequence[_Rule], shared: int = 0, cache: CompiledCache | None = None
    ) -> None:
        hs: Any = importlib.import_module("hyperscan")
        self._hs = hs
        self._dbs: list[tuple[Any, int]] = []  # (database, id of its first rule)
        patterns, secrets = rules[:shared], rules[shared:]
        if patterns:
            self._dbs.append((self._patterns_db(patterns, cache), 0))
        if secrets:
            self._dbs.append((self._compile(secrets), shared))
        self._local = threading.local()

    def _compile(self, rules: Sequence[_Rule]) -> Any:
        hs = self._hs
        db = hs.Database(mode=hs.HS_MODE_BLOCK)
        try:
            db.compile(
                expressions=[rule.filter for rule in rules],
                ids=list(range(len(rules))),
                elements=len(rules),
                flags=[hs.HS_FLAG_CASELESS if rule.caseless else 0 for rule in rules],
            )
        except hs.error as exc:
            raise _culprit(rules, self._check_one, str(exc)) from None
        return db

    def _patterns_db(self, rules: Sequence[_Rule], cache: CompiledCache | None) -> Any:
        if cache is None:
            return self._compile(rules)
        hs = self._hs
        digest = hashlib.sha256(f"{hs.__version__}|{platform.machine()}|block".encode())
        for rule in rules:
            digest.update(b"\0%d\0" % rule.caseless + rule.filter)
        key = f"hyperscan-{digest.hexdigest()}"
        blob = cache.load(key)
        if blob is not None:
            try:
                return hs.loadb(blob, hs.HS_MODE_BLOCK)
            except hs.error:
                pass  # written by another Hyperscan build or damaged: compile afresh
        db = self._compile(rules)
        cache.store(key, hs.dumpb(db))
        return db

    def _check_one(self, rule: _Rule) -> None:
        db = self._hs.Database(mode=self._hs.HS_MODE_BLOCK)
        flag = self._hs.HS_FLAG_CASELESS if rule.caseless else 0
        db.compile(expressions=[rule.filter], ids=[0], elements=1, flags=[flag])

    def hits(self, data: bytes) -> dict[int, list[int] | None]:
        scratches = getattr(self._local, "scratches", None)
        if scratches is None:  # a scratch space may only be used by one thread at a time
            scratches = self._local.scratches = [self._hs.Scratch(db) for db, _ in self._dbs]
        found: dict[int, list[int] | None] = {}
        ends: dict[int, list[int]] = {}

        def on_match(ident: int, _start: int, end: int, _flags: int, first: int) -> None:
            ident += first
            bucket = ends.get(ident)
            if bucket is None:
                bucket = ends[ident] = []
                found[ident] = bucket
            bucket.append(end)

        for (db, first), scratch in zip(self._dbs, scratches, strict=True):
            db.scan(data, match_event_handler=on_match, context=first, scratch=scratch)
        return found

    def confirm(
        self, rule: _Rule, index: int, data: bytes, hints: list[int] | None
    ) -> list[tuple[int, int]]:
        return _confirm_windows(rule, data, hints or [])


class _Re2Engine:
    name = "re2"

    def __init__(self, rules: Sequence[_Rule]) -> None:
        re2: Any = importlib.import_module("re2")
        self._re2 = re2
        options = re2.Options()
        options.encoding = re2.Options.Encoding.LATIN1
        options.log_errors = False
        options.max_mem = 256 << 20
        self._options = options
        self._set = re2.Set.SearchSet(options)
        for index, rule in enumerate(rules):
            try:
                added = self._set.Add(rule.wrapped(rule.filter))
            except re2.error as exc:
                raise _pattern_problem(rule, f"RE2 cannot compile it ({exc})") from None
            if added != index:
                raise _pattern_problem(rule, "RE2 cannot compile it")
        try:
            self._set.Compile()
        except re2.error:
            raise DlpPatternError("the DLP patterns are too large for RE2 together") from None
        self._finders: dict[int, Any] = {}

    def hits(self, data: bytes) -> dict[int, list[int] | None]:
        return dict.fromkeys(self._set.Match(data) or ())

    def confirm(
        self, rule: _Rule, index: int, data: bytes, hints: list[int] | None
    ) -> list[tuple[int, int]]:
        # The set says only *that* the filter hit: find where with RE2, then run
        # the full regex around each hit as the other engines do.
        finder = self._finders.get(index)
        if finder is None:
            finder = self._finders[index] = self._re2.compile(
                rule.wrapped(rule.filter), self._options
            )
        return _confirm_windows(rule, data, [match.end() for match in finder.finditer(data)])


class _ReEngine:
    """One Python alternation of every filter; slow (a few MiB/s), the last resort.

    Each alternative ends in an empty capturing group, so `lastindex` names
    the rule without wrapping alternatives in groups (which would defeat
    the first-character check `re` does on each alternative).
    """

    name = "re"

    def __init__(self, rules: Sequence[_Rule]) -> None:
        parts: list[bytes] = []
        self._rule_of_group: dict[int, int] = {}
        groups = 0
        for index, rule in enumerate(rules):
            body = rule.wrapped(rule.filter)
            if not rule.caseless and any(atom == b"|" for atom, _ in _atoms(body)):
                body = b"(?:" + body + b")"
            try:
                groups += re.compile(body).groups + 1
            except re.error as exc:
                raise _pattern_problem(rule, f"Python re cannot compile it ({exc})") from None
            self._rule_of_group[groups] = index
            parts.append(body + b"()")
        self._combined = re.compile(b"|".join(parts))

    def hits(self, data: bytes) -> dict[int, list[int] | None]:
        found: dict[int, list[int] | None] = {}
        search = self._combined.search
        position = 0
        size = len(data)
        while position < size:
            match = search(data, position)
            if match is None:
                break
            bucket = found.setdefault(self._rule_of_group[match.lastindex or 0], [])
            assert bucket is not None
            bucket.append(match.end())
            position = match.start() + 1  # overlapping: a long hit must not hide another
        return found

    def confirm(
        self, rule: _Rule, index: int, data: bytes, hints: list[int] | None
    ) -> list[tuple[int, int]]:
        return _confirm_windows(rule, data, sorted(hints or []))


def _pattern_problem(rule: _Rule, problem: str) -> DlpPatternError:
    if rule.name.startswith("secret:"):
        return DlpPatternError(f"the fingerprint {rule.name} cannot be compiled: {problem}")
    return DlpPatternError(f"DLP pattern '{rule.name}': {problem}")


def _culprit(rules: Sequence[_Rule], check: Any, message: str) -> DlpPatternError:
    for rule in rules:
        try:
            check(rule)
        except Exception as exc:
            return _pattern_problem(rule, f"the engine cannot compile it ({exc})")
    return DlpPatternError(f"the DLP patterns cannot be compiled together: {message}")


_ENGINE_CLASSES: dict[str, Any] = {
    "hyperscan": _HyperscanEngine,
    "re2": _Re2Engine,
    "re": _ReEngine,
}


def available_engines() -> tuple[str, ...]:
    """The engines importable here, best first (`re` always is)."""
    names: list[str] = []
    for name in ENGINES[:-1]:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        names.append(name)
    return (*names, "re")


def _build_engine(
    rules: Sequence[_Rule], engine: str | None, shared: int, cache: CompiledCache | None
) -> _Engine:
    """The named engine (or the best importable); `shared` and `cache` as _HyperscanEngine."""

    def make(name: str) -> _Engine:
        if name == "hyperscan":
            return _HyperscanEngine(rules, shared, cache)
        built: _Engine = _ENGINE_CLASSES[name](rules)
        return built

    if engine is not None:
        if engine not in _ENGINE_CLASSES:
            raise ValueError(f"unknown DLP engine {engine!r}; choose one of {', '.join(ENGINES)}")
        return make(engine)
    for name in available_engines():
        try:
            return make(name)
        except ImportError:
            continue
    raise AssertionError("the re engine is always available")  # pragma: no cover


# ---------------------------------------------------------------------------------------
# Scanner


def _builtin_rules() -> list[_Rule]:
    rules: list[_Rule] = []
    for spec in PATTERNS:
        regex = spec.regex.encode("ascii")
        prefilter = spec.prefilter.encode("ascii") if spec.prefilter else None
        width = _regex_width(regex)[1]
        rules.append(
            _Rule(spec.name, regex, validator=spec.validator, width=width, prefilter=prefilter)
        )
    return rules


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
        rules = _builtin_rules()
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
        """Drop generic-rule matches whose bytes a specific rule also matched (one finding)."""
        specific = [
            (start, end)
            for index, start, end in spans
            if self._rules[index].name not in GENERIC_RULES
        ]
        return [
            (index, start, end)
            for index, start, end in spans
            if self._rules[index].name not in GENERIC_RULES
            or not any(first < end and start < last for first, last in specific)
        ]

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


# ---------------------------------------------------------------------------------------
# Content-Encoding

PIECE = 64 * 1024  # largest output produced per decompressor call
RATIO_GRACE = 1 << 20  # output allowed before the ratio cap applies
MAX_RATIO = 100


class _Stage(Protocol):
    def feed(self, data: bytes) -> list[bytes]: ...

    def finish(self) -> list[bytes]: ...


class _Limits:
    def __init__(self, coding: str, max_output: int, max_ratio: int) -> None:
        self.coding = coding
        self.max_output = max_output
        self.max_ratio = max_ratio
        self.consumed = 0
        self.produced = 0

    def account(self, produced: int) -> None:
        self.produced += produced
        if self.produced > self.max_output:
            raise DecompressionBomb(
                f"{self.coding} body decodes to more than {self.max_output} bytes"
            )
        if self.produced > RATIO_GRACE and self.produced > self.max_ratio * max(self.consumed, 1):
            raise DecompressionBomb(
                f"{self.coding} body expands more than {self.max_ratio}:1 "
                f"({self.consumed} bytes gave {self.produced})"
            )


class _ZlibStage:
    """gzip (any number of members) or deflate (zlib-wrapped or raw, as sent in the wild)."""

    def __init__(self, coding: str, limits: _Limits) -> None:
        self._coding = coding
        self._limits = limits
        self._pending = b""  # deflate: bytes held until the wrapper is known
        self._inflater: Any = None
        self._member_bytes = 0  # compressed bytes consumed by the current gzip member
        self._ended = False
        if coding == "gzip":
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def _start_deflate(self) -> None:
        head = self._pending
        wrapped = len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        self._inflater = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> list[bytes]:
        if self._inflater is None:
            self._pending += data
            if len(self._pending) < 2:
                return []
            self._start_deflate()
            data, self._pending = self._pending, b""
        out: list[bytes] = []
        self._run(data, out)
        return out

    def _run(self, data: bytes, out: list[bytes]) -> None:
        try:
            self._inflate(data, out)
        except zlib.error as exc:
            raise CorruptBody(f"{self._coding} body is corrupt ({exc})") from None

    def _after_end(self, rest: bytes) -> bytes:
        """Bytes after the end of a stream: another gzip member, zero padding, or an error."""
        if not rest.strip(b"\0"):
            self._ended = True
            return b""
        if self._coding != "gzip":
            raise CorruptBody(f"{self._coding} body has data after its end")
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._member_bytes = 0
        self._ended = False
        return rest

    def _inflate(self, data: bytes, out: list[bytes]) -> None:
        if self._ended:
            data = self._after_end(data)
        while data or not self._ended:
            inflater = self._inflater
            before = len(data)
            piece = inflater.decompress(data, PIECE)
            data = inflater.unconsumed_tail
            self._limits.consumed += before - len(data)
            self._member_bytes += before - len(data)
            if piece:
                self._limits.account(len(piece))
                out.append(piece)
            if inflater.eof:
                data = self._after_end(inflater.unused_data)
                continue
            if not data and len(piece) < PIECE:
                return

    def finish(self) -> list[bytes]:
        out: list[bytes] = []
        if self._inflater is None:
            if not self._pending:
                return out
            self._start_deflate()
            data, self._pending = self._pending, b""
            self._run(data, out)
        self._run(b"", out)
        if not self._ended and (self._member_bytes or self._coding != "gzip"):
            raise CorruptBody(f"{self._coding} body is truncated")
        return out


def _brotli() -> Any:
    try:
        module: Any = importlib.import_module("brotli")
        module.Decompressor().process(b"", output_buffer_limit=1)
    except (ImportError, TypeError, AttributeError):
        return None  # absent, or older than 1.2 (no output limit: bombs cannot be bounded)
    return module


class _BrotliStage:
    def __init__(self, limits: _Limits, module: Any) -> None:
        self._limits = limits
        self._module = module
        self._decompressor = module.Decompressor()

    def _drain(self, data: bytes, out: list[bytes]) -> None:
        decompressor = self._decompressor
        try:
            piece = decompressor.process(data, output_buffer_limit=PIECE)
            self._limits.consumed += len(data)
            while True:
                if piece:
                    self._limits.account(len(piece))
                    out.append(piece)
                if decompressor.can_accept_more_data():
                    return
                piece = decompressor.process(b"", output_buffer_limit=PIECE)
        except self._module.error as exc:
            raise CorruptBody(f"br body is corrupt ({exc})") from None

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if data:
            if self._decompressor.is_finished():
                raise CorruptBody("br body has data after its end")
            self._drain(data, out)
        return out

    def finish(self) -> list[bytes]:
        if not self._decompressor.is_finished():
            raise CorruptBody("br body is truncated")
        return []


SUPPORTED_ENCODINGS = ("gzip", "x-gzip", "deflate", "br", "identity")


class Decoder:
    """Undo a Content-Encoding chunk by chunk, within the output and ratio caps.

    `feed` returns the decoded bytes available so far (possibly empty);
    `finish` returns the rest and raises CorruptBody if the data stopped
    early. Every error is a DecodeError; the body must then be refused.
    """

    def __init__(self, stages: list[_Stage]) -> None:
        self._stages = stages
        self.decoded = 0

    def _run(self, data: bytes, final: bool) -> bytes:
        pieces = [data] if data else []
        for stage in self._stages:
            produced: list[bytes] = []
            for piece in pieces:
                produced.extend(stage.feed(piece))
            if final:
                produced.extend(stage.finish())
            pieces = produced
        result = b"".join(pieces)
        self.decoded += len(result)
        return result

    def feed(self, chunk: bytes) -> bytes:
        return self._run(bytes(chunk), final=False)

    def finish(self) -> bytes:
        return self._run(b"", final=True)


def decoded_stream(content_encoding: str, max_output: int, max_ratio: int = MAX_RATIO) -> Decoder:
    """A Decoder for a body sent with `Content-Encoding: content_encoding`.

    Codings are listed in the order they were applied and undone in reverse;
    "identity" and an empty value mean none (then nothing is capped: the
    output is the input). gzip, x-gzip, deflate and br (when the `brotli`
    package, 1.2 or later, is importable) are supported; anything else
    raises UnsupportedEncoding rather than letting undecodable bytes through.
    Each stage raises DecompressionBomb once its output passes `max_output`
    bytes, or `max_ratio` times its input after the first MiB.
    """
    codings = [part.strip().lower() for part in content_encoding.split(",")]
    codings = [coding for coding in codings if coding and coding != "identity"]
    stages: list[_Stage] = []
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip", "deflate"):
            kind = "deflate" if coding == "deflate" else "gzip"
            stages.append(_ZlibStage(kind, _Limits(kind, max_output, max_ratio)))
        elif coding == "br":
            module = _brotli()
            if module is None:
                raise UnsupportedEncoding(
                    "Content-Encoding br needs the 'brotli' package (1.2 or later), "
                    "which is not installed"
                )
            stages.append(_BrotliStage(_Limits("br", max_output, max_ratio), module))
        else:
            shown = coding.encode("ascii", "backslashreplace").decode("ascii")[:40]
            raise UnsupportedEncoding(
                f"Content-Encoding '{shown}' is not supported for scanning "
                f"(supported: gzip, deflate, br, identity)"
            )
    return Decoder(stages)
