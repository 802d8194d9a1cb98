"""What `claude-bottle dlp scan` prints: each finding without the secret in it.

A line names the rule (`dlp:<id>`, as a refused request's 403 does), the
byte offset, a redacted form of the match and the finding's fingerprint
(for `[dlp] ignore_fingerprints`). The redacted form keeps at most the first
four bytes of a match of 16 or more (a provider prefix such as `ghp_` or
the start of a keyword), never any byte of the user's own secret values,
and replaces the rest by its length.
"""

from __future__ import annotations

from typing import NamedTuple

from claude_bottle.policy.dlp import Finding, Scanner

SHOWN_PREFIX = 4
MIN_LENGTH_FOR_PREFIX = 16


class ReportLine(NamedTuple):
    rule: str
    offset: int
    redacted: str
    fingerprint: str
    ignored: bool

    def render(self) -> str:
        state = " (ignored by [dlp] config)" if self.ignored else ""
        fingerprint = f"  fingerprint {self.fingerprint}" if self.fingerprint else ""
        return f"{self.offset:>10}  dlp:{self.rule}  {self.redacted}{fingerprint}{state}"


def redact(finding: Finding, data: bytes) -> str:
    """The match as it may be shown: a short printable prefix, then only its length."""
    matched = data[finding.start : finding.end]
    shown = b""
    if not finding.pattern.startswith("secret:") and len(matched) >= MIN_LENGTH_FOR_PREFIX:
        shown = matched[:SHOWN_PREFIX]
    text = "".join(chr(byte) if 33 <= byte < 127 else "?" for byte in shown)
    return f"{text}…[{len(matched) - len(shown)} more bytes]"


def report(scanner: Scanner, data: bytes) -> list[ReportLine]:
    """Every finding in `data`, in order, ready to print."""
    return [
        ReportLine(f.pattern, f.start, redact(f, data), f.fingerprint, f.ignored)
        for f in scanner.scan(data, "input")
    ]
