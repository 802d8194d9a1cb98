"""Text from a bottle made fit for a terminal: everything shown by `supervise` and
`pending` comes from the bottle, so it is hostile.

Control, separator and bidi characters are escaped (`printable`); rich/textual markup is
never interpreted (callers build `Text` objects, never markup strings, and `plain` here
also strips what would look like markup to a careless caller); long host names are cut
from the left so the registrable domain, the part that says whose server it is, stays
visible.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from claude_bottle.bundle.audit_text import printable

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

ELLIPSIS = "…"


@functools.cache
def _suffixes() -> PublicSuffixList:
    from publicsuffixlist import PublicSuffixList  # ~100 ms: only when a view needs it

    return PublicSuffixList()


def registrable_domain(host: str) -> str:
    """`files.pythonhosted.org` -> `pythonhosted.org`; the host itself when it has none
    (an IP address, a bare suffix)."""
    try:
        found = _suffixes().privatesuffix(host.lower().rstrip("."))
    except (ValueError, UnicodeError):
        found = None
    return found or host


def plain(text: object, limit: int = 500) -> str:
    """One line of `text`, control characters escaped, at most `limit` characters."""
    shown = printable(str(text).replace("\n", " ").replace("\r", " "))
    return shown if len(shown) <= limit else shown[: limit - 1] + ELLIPSIS


def cut_host(host: str, width: int) -> str:
    """`host` in at most `width` characters, cut from the left: `…a.b.example.com`. When
    even the registrable domain does not fit, it is what is shown, cut from the left."""
    shown = plain(host, 2048)
    if len(shown) <= width:
        return shown
    domain = plain(registrable_domain(host), 2048)
    if len(domain) + 1 > width:
        return ELLIPSIS + domain[-(width - 1) :] if width > 1 else ELLIPSIS
    return ELLIPSIS + shown[-(width - 1) :]
