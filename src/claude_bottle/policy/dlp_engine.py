"""The multi-pattern engines behind the DLP scanner, and the rules they compile.

A `_Rule` is one pattern (built-in, the operator's, or a fingerprint of a
user secret) with its engine filter: a cheaper regex matching a prefix of
every match (`prefix_filter`). An engine scans the data once for all
filters and says which rule hit near where; `confirm` runs that rule's full
regex only in windows around the hits. Hyperscan is used if importable, else
RE2 (`re2.Set`), else one combined Python `re` alternation.
"""

from __future__ import annotations

import hashlib
import importlib
import platform
import re
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from claude_bottle.policy.dlp_spec import Validator

ENGINES = ("hyperscan", "re2", "re")


class DlpPatternError(ValueError):
    """An extra DLP pattern that cannot be used; the message names it and says why."""


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


def _class_end(regex: bytes, index: int) -> int:
    """Where the character class that opens at `index` (a `[`) ends, just past its `]`."""
    size = len(regex)
    index += 1
    if regex[index : index + 1] == b"^":
        index += 1
    if regex[index : index + 1] == b"]":  # a `]` first is one of the class's characters
        index += 1
    while index < size and regex[index : index + 1] != b"]":
        index += 2 if regex[index : index + 1] == b"\\" else 1
    return index + 1


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
            index = _class_end(regex, index)
        elif char == b"(":
            depth = 0
            while index < size:
                token = regex[index : index + 1]
                if token == b"\\":
                    index += 2
                    continue
                if token == b"[":  # a `(` or `)` in a class is no group's
                    index = _class_end(regex, index)
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
