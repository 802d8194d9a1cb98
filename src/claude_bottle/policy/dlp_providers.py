"""Prefix-token providers and structured secrets beyond the core table.

Each regex is written from the provider's documented token format. Where a
shape alone is too common (a run of `A`s opens base64 of zero bytes, `-u`
is a flag of many commands, `kind: Secret` is also an empty template), the
validator looks at the bytes around the candidate: the context is examined
only where the engine already found the anchor, never over the whole body.
"""

from __future__ import annotations

import base64
import binascii
import re

from claude_bottle.policy.dlp_spec import QUOTE, PatternSpec, all_of, random_token
from claude_bottle.policy.validators import jwt_ok, looks_random

_BASE64_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=%")


def _standalone(data: bytes, start: int, end: int) -> bool:
    """Not a slice of a longer base64 run: nothing base64-like on either side."""
    before = data[start - 1] if start else None
    after = data[end] if end < len(data) else None
    return before not in _BASE64_BYTES and after not in _BASE64_BYTES


def _b64decode(token: bytes) -> bytes | None:
    try:
        return base64.b64decode(token + b"=" * (-len(token) % 4), validate=False)
    except (binascii.Error, ValueError):
        return None


def _base64_jwt(data: bytes, start: int, end: int) -> bool:
    """The base64 of a JWT: `ZXlK` is base64("eyJ"), the opening of every JWT header."""
    token = data[start:end].rstrip(b"=")
    decoded = _b64decode(token[: len(token) - len(token) % 4])
    if decoded is None:
        return False
    jwt = re.match(rb"[A-Za-z0-9_.-]+", decoded)
    return jwt is not None and jwt_ok(jwt.group())


def _artifactory_reference(data: bytes, start: int, end: int) -> bool:
    decoded = _b64decode(data[start : start + 8])
    return (
        decoded is not None and decoded.startswith(b"reftkn") and looks_random(data[start:end], 14)
    )


_CURL_BEFORE = 600  # bytes before `-u` searched for the curl command (continued lines too)
_CURL = re.compile(rb"\bcurl\b")
_CRED = re.compile(rb"(?:-u|--user)(?:=|[ \t]{1,5})(\S{1,200})")
_PLACEHOLDER_PASSWORD = re.compile(
    rb"(?i)^(?:change(?:it|me)|pass(?:word)?|passwd|pwd|secret|test|token|x+|\*+|\.+)$"
    rb"|^[$<\[{%]|^\\?[\"']?[$<\[{]"
)


def _curl_credentials(data: bytes, start: int, end: int) -> bool:
    """`curl -u user:password`: a curl command before it and a real password in it."""
    if _CURL.search(data, max(0, start - _CURL_BEFORE), start) is None:
        return False
    found = _CRED.match(data, start, min(len(data), end + 100))
    if found is None:
        return False
    cred = found.group(1).replace(b'\\"', b'"')
    for junk in (b'"', b"'", b"\\n", b"\\"):
        cred = cred.replace(junk, b"")
    cred = cred.rstrip(b",;)}")
    user, colon, password = cred.partition(b":")
    if not colon:
        return False
    secret = password or user
    if len(secret) < 3 or _PLACEHOLDER_PASSWORD.search(secret) or secret.startswith(b"{{"):
        return False
    return not (user.startswith((b"$", b"<", b"{{")) and password.startswith((b"$", b"<", b"{{")))


_AUTH_HEADER = re.compile(
    rb"(?:-H|--header)(?:=|[ \t]{1,5})\\{0,3}[\"']?[A-Za-z-]{1,40}[ \t]{0,5}:[ \t]{0,5}"
    rb"(?:(?i:bearer|basic|token|api-token)[ \t]{1,5})?(?P<cred>[A-Za-z0-9._~+/=@-]{8,500})"
)


def _curl_auth_header(data: bytes, start: int, end: int) -> bool:
    """`curl -H "Authorization: ..."`: a curl command before it and a credential, not a $VAR."""
    if _CURL.search(data, max(0, start - _CURL_BEFORE), start) is None:
        return False
    found = _AUTH_HEADER.match(data, start, end)
    if found is None:
        return False
    cred = found.group("cred")
    if b"asic" in found.group()[: found.start("cred") - start]:  # Basic: base64 of user:pass
        decoded = _b64decode(cred.rstrip(b"="))
        return decoded is not None and b":" in decoded
    return looks_random(cred, 6) and not _PLACEHOLDER_PASSWORD.search(cred)


_K8S_CONTEXT = 700  # bytes around `kind: Secret` searched for its data block
_K8S_DATA = re.compile(
    # After a newline, also an escaped one (\n in JSON, where \b finds no boundary);
    # not the end of `metadata`.
    rb"(?:^|[^A-Za-z]|\\n)(?:string)?[Dd]ata" + QUOTE.encode() + rb"?[ \t]{0,5}:[ \t]{0,5}"
    rb"(?:\{|\r?\n|\\n|\\r\\n)"
    # Blanks, newlines and comment lines, each consumed one way only (no backtracking blow-up).
    rb"(?:[ \t{]|\r?\n|\\[nrt]|#(?:[^\r\n\\]|\\[^n]){0,200}(?:\\n|\r?\n)){0,40}"
    rb"[\w.\\\"'-]{1,120}[ \t]{0,5}:[ \t]{0,5}(?:[|>][-+]?(?:\s|\\n)+)?"
    + QUOTE.encode()
    + rb"?(?!\{\{)(?P<value>[A-Za-z0-9+/_.-]{8,}={0,3})"
)


def _kubernetes_secret(data: bytes, start: int, end: int) -> bool:
    """`kind: Secret` with a data (or stringData) entry holding a value, either order."""
    window = data[max(0, start - _K8S_CONTEXT) : end + _K8S_CONTEXT]
    return any(looks_random(found.group("value"), 4) for found in _K8S_DATA.finditer(window))


PROVIDER_PATTERNS: tuple[PatternSpec, ...] = (
    PatternSpec(
        "onepassword-secret-key",
        r"\bA3-[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}"
        r"-[A-Z0-9]{5}\b",
        random_token(12, skip=3),
        "1Password account secret key",
    ),
    PatternSpec(
        "adafruit-io-key",
        r"\baio_[A-Za-z0-9]{28}\b",
        random_token(12, skip=4),
        "Adafruit IO key",
    ),
    PatternSpec(
        "artifactory-api-key",
        r"\bAKCp[A-Za-z0-9]{69}\b",
        random_token(16, skip=4),
        "JFrog Artifactory API key",
    ),
    PatternSpec(
        "artifactory-reference-token",
        r"\bcmVmd[A-Za-z0-9]{59}\b",
        _artifactory_reference,
        "JFrog Artifactory reference token (base64 of reftkn:...)",
    ),
    PatternSpec(
        "aws-bedrock-api-key",
        r"\bABSK[A-Za-z0-9+/]{109,269}={0,2}"
        r"|bedrock-api-key-YmVkcm9jay5hbWF6b25hd3MuY29t[A-Za-z0-9+/=%_-]{0,1000}",
        random_token(16),
        "Amazon Bedrock API key (long-lived ABSK... or short-lived bedrock-api-key-...)",
    ),
    PatternSpec(
        "gitlab-session-cookie",
        r"_gitlab_session=[0-9a-z]{32}",
        random_token(10, skip=16),
        "GitLab session cookie",
    ),
    PatternSpec(
        "mailgun-public-key",
        r"pubkey-[a-f0-9]{32}",
        random_token(8, skip=7),
        "Mailgun public validation key",
    ),
    PatternSpec(
        "new-relic-insert-key",
        r"NRII-[A-Za-z0-9_-]{32}",
        random_token(10, skip=5),
        "New Relic insert (ingest) key",
    ),
    PatternSpec(
        "new-relic-browser-key",
        r"NRJS-[a-f0-9]{19}",
        random_token(8, skip=5),
        "New Relic browser API token",
    ),
    PatternSpec(
        "facebook-access-token",
        r"\bEAA[MC][A-Za-z0-9]{100,300}",
        random_token(16, skip=4),
        "Facebook (Meta) user or page access token",
    ),
    PatternSpec(
        "facebook-app-token",
        r"\b\d{15,16}(?:\||%7[Cc])[A-Za-z0-9_-]{27,40}",
        random_token(12, tail=27),
        "Facebook app access token (app id | app secret)",
    ),
    PatternSpec(
        "twitter-bearer-token",
        r"A{22}[A-Za-z0-9%]{80,100}",
        all_of(_standalone, random_token(16, skip=22)),
        "Twitter (X) app bearer token",
    ),
    PatternSpec(
        "teams-incoming-webhook",
        r"(?:webhook|outlook)\.office(?:365)?\.com/webhook(?:b2)?/[A-Za-z0-9@-]{36,90}"
        r"/IncomingWebhook/[A-Za-z0-9]{32}/[A-Za-z0-9-]{36}",
        random_token(12, tail=32),
        "Microsoft Teams incoming-webhook URL",
    ),
    PatternSpec(
        "kubernetes-secret",
        rf"kind{QUOTE}?[ \t]{{0,5}}:[ \t]{{0,5}}{QUOTE}?Secret\b",
        _kubernetes_secret,
        "Kubernetes Secret manifest with data",
    ),
    PatternSpec(
        "curl-basic-auth",
        r"(?:-u|--user)(?:=|[ \t]{1,5})[^\s:]{0,100}:[^\s]{0,100}",
        _curl_credentials,
        "password on a curl command line (curl -u user:password)",
    ),
    PatternSpec(
        "curl-auth-header",
        r"(?:-H|--header)(?:=|[ \t]{1,5})\\{0,3}[\"']?"
        r"(?i:authorization|api-?key|api-token|token|x-[a-z-]{0,30}(?:key|token))"
        r"[ \t]{0,5}:[ \t]{0,5}(?:(?i:bearer|basic|token|api-token)[ \t]{1,5})?"
        r"[A-Za-z0-9._~+/=@-]{8,500}",
        _curl_auth_header,
        "credential in a curl command's Authorization or API-key header",
    ),
    PatternSpec(
        "harness-token",
        r"\b(?:pat|sat)\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{20}\b",
        random_token(12, tail=20),
        "Harness personal or service-account token",
    ),
    PatternSpec(
        "easypost-api-key",
        r"\bEZ[AT]K(?i:[a-z0-9]{54})\b",
        random_token(14, skip=4),
        "EasyPost production or test API key",
    ),
    PatternSpec(
        "sourcegraph-token",
        r"\bsgp_(?:[a-fA-F0-9]{16}_|local_)?[a-fA-F0-9]{40}\b",
        random_token(8, tail=40),
        "Sourcegraph access token",
    ),
    PatternSpec(
        "jwt-base64",
        r"ZXlK[A-Za-z0-9+/]{40,1500}={0,2}",
        _base64_jwt,
        "JSON Web Token wrapped in base64",
    ),
)
