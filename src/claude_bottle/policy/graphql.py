"""Is a GraphQL request read-only? For the built-in read-only rules of GraphQL APIs.

GitHub and GitLab serve reads and writes from one `POST /graphql`; a method/path rule
cannot tell them apart, the document can. A request is read-only when its body is JSON
(one request object, or a batch of them) whose every `query` is a string holding no
`mutation` or `subscription` operation. The document is tokenised as GraphQL's lexer
does (comments, strings and block strings skipped, names as names), and an operation's
type is the first name of a definition at nesting depth 0, so no spelling hides one; a
body we cannot read that way (not JSON, a persisted-query hash instead of a document) is
not read-only. Pure functions, bounded by the caller's body cap.
"""

from __future__ import annotations

import json
import re

MAX_DOCUMENT = 1 << 20
_TOKEN = re.compile(
    r"(?P<skip>[\s,\ufeff]+|#[^\n\r]*)"
    r'|(?P<block>"""(?:\\"""|(?!""").)*""")'
    r'|(?P<string>"(?:\\.|[^"\\\n\r])*")'
    r"|(?P<name>[_A-Za-z][_0-9A-Za-z]*)"
    r"|(?P<open>[{(\[])|(?P<close>[})\]])"
    r"|(?P<other>.)",
    re.DOTALL,
)
WRITES = frozenset({"mutation", "subscription"})


class NotReadOnly(ValueError):
    """The body is not a read-only GraphQL request (the reason says why)."""


def check_document(document: str) -> None:
    """Raise NotReadOnly when `document` has a mutation or subscription operation."""
    if len(document) > MAX_DOCUMENT:
        raise NotReadOnly("the GraphQL document is too large to check")
    depth = 0
    for match in _TOKEN.finditer(document):
        kind = match.lastgroup
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
            if depth < 0:
                raise NotReadOnly("the GraphQL document is not balanced")
        elif kind == "name" and depth == 0 and match.group() in WRITES:
            raise NotReadOnly(f"the GraphQL document has a {match.group()} operation")
    if depth != 0:
        raise NotReadOnly("the GraphQL document is not balanced")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """Servers differ on which of two equal keys wins: a body that has them is refused."""
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice")
    return dict(pairs)


def check_request_body(body: bytes) -> None:
    """Raise NotReadOnly unless `body` is GraphQL over HTTP (JSON) with read-only
    documents only."""
    try:
        parsed = json.loads(body, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotReadOnly("the body is not a JSON GraphQL request") from exc
    requests = parsed if isinstance(parsed, list) else [parsed]
    if not requests:
        raise NotReadOnly("an empty batch")
    for request in requests:
        query = request.get("query") if isinstance(request, dict) else None
        if not isinstance(query, str):
            raise NotReadOnly("a GraphQL request without a query document")
        check_document(query)
