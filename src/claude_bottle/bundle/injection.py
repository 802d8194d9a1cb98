"""Credentials injected at the edge (`[[credentials.inject]]`): the request-head stage.

The bottle holds a per-bottle placeholder in place of each secret. On a request to one of
the injection's hosts, the placeholder is swapped for the real secret wherever it appears
in the request head: raw in any header value, and inside `Authorization: Basic`
credentials (decoded, swapped as user or password, re-encoded), as git and npm send them.
Never in the body or the URL, and never for another host: a placeholder on its way to any
other host is a canary for exfiltration, refused (`403`, rule `credential-wrong-host`).

DLP then scans the head as the bottle sent it with each swapped placeholder masked (it is
exempt for its own hosts, and recorded in the request's audit record instead); the real
secret is in DLP's set of secrets in all its encodings, so it leaves no other way. A host
that receives an injected credential refuses `TRACE` (which echoes the head back), gets
no `Accept-Encoding` (so its answer can be scanned), and its responses are scanned for the
real secret (`ResponseGuard`): a reflecting endpoint must not hand it to the bottle.

Sans-IO: bytes in, bytes out, `Refusal` for a no.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from claude_bottle.bundle.refusal import Refusal
from claude_bottle.policy.dlp import secret_forms
from claude_bottle.policy.dlp_http import AUTHORIZATION_HEADERS, lenient_base64

WRONG_HOST_RULE = "credential-wrong-host"  # scanning.py says it too (for bodies)
TRACE_RULE = "credential-trace"
RESPONSE_RULE = "credential-in-response"
# DLP sees this where a placeholder was swapped: no pattern matches it.
MASK = b"claude-bottle-injected-credential"
_BLANKS = re.compile(rb"[ \t]+")

Headers = list[tuple[bytes, bytes]]


class Injection(NamedTuple):
    """One live injection: its placeholder and secret as bytes, the hosts it goes to."""

    env: str
    hosts: frozenset[str]
    placeholder: bytes
    secret: bytes


class InjectedHead(NamedTuple):
    """What the head stage decided for one request to a host that receives credentials."""

    forward: Headers  # the head to send upstream, secrets swapped in
    scanned: Headers  # the head DLP scans: as sent, each swapped placeholder masked
    injected: tuple[str, ...]  # env names of the credentials swapped in (for the audit)
    secrets: tuple[bytes, ...]  # what the response must not carry back


def _swap(value: bytes, placeholder: bytes, replacement: bytes, *, authorization: bool) -> bytes:
    """`value` with `placeholder` replaced, raw and inside Basic credentials."""
    value = value.replace(placeholder, replacement)
    if not authorization:
        return value
    words = _BLANKS.split(value.strip(), maxsplit=1)
    if len(words) != 2 or words[0].lower() != b"basic":
        return value
    decoded = lenient_base64(words[1])
    if decoded is None or placeholder not in decoded:
        return value
    swapped = decoded.replace(placeholder, replacement)
    return b"Basic " + base64.b64encode(swapped)


def _carries(value: bytes, placeholder: bytes, *, authorization: bool) -> bool:
    return _swap(value, placeholder, MASK, authorization=authorization) != value


class Injector:
    """The injections of one bottle, and the head stage that applies them."""

    def __init__(self, injections: Sequence[Injection]) -> None:
        self.injections = tuple(injections)
        self.hosts = frozenset(host for i in self.injections for host in i.hosts)

    def receives(self, host: str) -> bool:
        """Whether `host` is listed for an injection (it refuses TRACE, its answers are
        scanned when a credential went in)."""
        return host in self.hosts

    def _foreign(self, host: str) -> list[Injection]:
        return [i for i in self.injections if host not in i.hosts]

    def check_method(self, method: str, host: str) -> None:
        """TRACE echoes the request head back: never to a host that receives a secret,
        whatever the rules say."""
        if method.upper() == "TRACE" and host in self.hosts:
            raise Refusal(
                403,
                TRACE_RULE,
                f"{host} receives an injected credential; TRACE would echo it back",
            )

    def check_target(self, host: str, target: str) -> None:
        """A placeholder in the URL is never swapped, and goes to no other host."""
        raw = target.encode("latin-1", "replace")
        decoded = unquote_to_bytes(raw)
        for injection in self._foreign(host):
            if injection.placeholder in raw or injection.placeholder in decoded:
                raise _wrong_host(injection, host, "URL")

    def apply(self, method: str, host: str, target: str, headers: Headers) -> InjectedHead | None:
        """Swap placeholders for `host`, refuse them for any other; None when the head
        carries none and `host` receives none (the request is left as it is)."""
        self.check_method(method, host)
        self.check_target(host, target)
        for injection in self._foreign(host):
            for name, value in headers:
                authorization = name in AUTHORIZATION_HEADERS
                if _carries(value, injection.placeholder, authorization=authorization):
                    raise _wrong_host(injection, host, f"{name.decode('latin-1')[:64]} header")
        own = [i for i in self.injections if host in i.hosts]
        if not own:
            return None
        forward: Headers = []
        scanned: Headers = []
        used: dict[str, bytes] = {}
        for name, value in headers:
            authorization = name in AUTHORIZATION_HEADERS
            out, masked = value, value
            for injection in own:
                swapped = _swap(
                    out, injection.placeholder, injection.secret, authorization=authorization
                )
                if swapped != out:
                    used[injection.env] = injection.secret
                    out = swapped
                    masked = _swap(masked, injection.placeholder, MASK, authorization=authorization)
            forward.append((name, out))
            scanned.append((name, masked))
        if not used:
            return None
        forward = [(name, value) for name, value in forward if name != b"accept-encoding"]
        return InjectedHead(forward, scanned, tuple(used), tuple(used.values()))


def _wrong_host(injection: Injection, host: str, where: str) -> Refusal:
    return Refusal(
        403,
        WRONG_HOST_RULE,
        f"the placeholder for {injection.env} is in the {where} of a request to {host}, "
        f"which does not receive that credential",
        hint=f"add {host} to the hosts of its [[credentials.inject]] in your user config",
    )


@functools.lru_cache(maxsize=64)
def _reflection_pattern(secrets: tuple[bytes, ...]) -> tuple[re.Pattern[bytes], int]:
    """Every encoding of `secrets` DLP knows, as one regex, and the longest one's length
    less one (made once per set of secrets: a bottle has a handful)."""
    literals = sorted({form for secret in secrets for _, form, _ in secret_forms(secret)})
    pattern = re.compile(b"|".join(re.escape(literal) for literal in literals))
    return pattern, max((len(literal) for literal in literals), default=1) - 1


class ResponseGuard:
    """Scans a response from a host a credential went to for that credential, in every
    encoding DLP knows; holds back a window so no complete match passes unscanned."""

    def __init__(self, secrets: Iterable[bytes]) -> None:
        self.pattern, self.window = _reflection_pattern(tuple(secrets))
        self.held = b""

    def _refuse(self, where: str) -> Refusal:
        return Refusal(
            502,
            RESPONSE_RULE,
            f"the response carries the injected credential back ({where}); not relayed",
        )

    def check_head(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if self.pattern.search(value) or self.pattern.search(name):
                raise self._refuse("in a header")
            if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                raise Refusal(
                    502,
                    RESPONSE_RULE,
                    "an encoded response to a request with an injected credential cannot be "
                    "scanned; not relayed",
                )

    def feed(self, chunk: bytes) -> bytes:
        """What of the body may go to the client so far."""
        data = self.held + chunk
        if self.pattern.search(data):
            raise self._refuse("in the body")
        cut = max(0, len(data) - self.window)
        ready, self.held = data[:cut], data[cut:]
        return ready

    def finish(self) -> bytes:
        ready, self.held = self.held, b""
        return ready
