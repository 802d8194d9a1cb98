"""Keyword-near-value rules: a provider's name (or `token`, `secret`, ...) close to a random value.

Config files, env files, YAML, JSON bodies and code carry many credentials
with no distinctive prefix: `DATADOG_API_KEY=...`, `"okta_token": "00..."`,
`password: ...`. Each rule here is anchored on its keyword (a literal the
multi-pattern engine finds cheaply), then an assignment in any of the
shapes these carriers use (`=`, `:`, `:=`, `=>`, `,`, `>`, `%3D`, with raw,
backslash-escaped, `\\u0022`, HTML or URL-encoded quotes, and real or
escaped newlines in between), then the value. Only at those candidates
does the validator run: it isolates the value, checks what follows it
(a value ends at a quote, a blank, `;`, `,`, `&`, `<` or an escape), and
measures its entropy, so ordinary assignments (`token = get_token()`,
`password: ${DB_PASSWORD}`, `secret_key = "changeme"`) pass.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from claude_bottle.policy.dlp_spec import ASSIGN, PatternSpec, Validator
from claude_bottle.policy.validators import looks_random, shannon_entropy

# The rest of the name, then perhaps a type (Go `var apiToken string = ...`).
_NAME_TAIL = r"[A-Za-z0-9_.-]{0,30}(?:[ \t]{1,3}[A-Za-z0-9_\[\]]{1,12})?"
_IDENTIFIER = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_LONG_VALUE = 200  # a value this long is matched by its first 200 bytes
# What may follow a value: a quote, a blank, a separator, an escape (\" or \n in
# JSON), the end of a URL parameter or of an XML element, the end of the data.
_ENDS = frozenset(b"\"'`\t\r\n ;,&<\\)}]|%")
# Names whose values are random by design but not credentials: pagination and
# anti-forgery tokens, nonces, and names of things about a token rather than it.
_NOT_A_CREDENTIAL = re.compile(
    rb"(?i)(?:page|next|prev|continuation|cursor|csrf|xsrf|sync|resume|idempot|nonce"
    rb"|tokeniz|_(?:url|uri|endpoint|path|file|type|name|count|length|len|size|limit"
    rb"|max|min|format|expir\w*|ttl|header|field|param|prefix|hash|algorithm)\b)"
)
_PLACEHOLDER = re.compile(
    rb"(?i)example|sample|dummy|placeholder|changeme|change_me|your|xxxx|redacted|replace"
    rb"|insert|fake|secret|token|password|passwd|\.\.\.|\*\*\*"
)


# Capitalised words of identifiers (`MLKEM768X25519PrivateKey`), which a random
# value contains with a probability well under 0.1%; lowercase ones are kept, as
# real tokens carry them (`xkeysib-`, `sk_test_`, `FLWPUBK_TEST-`).
_CODE_WORDS = re.compile(
    rb"Key|Public|Private|Class|Error|Config|Default|Value|String|Bytes|Object|Module"
    rb"|Type|Name|Path|File|Test|Data|User"
)
_DOTTED_NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_QUOTES = (b'"', b"'", b"`", b"\\u00", b"&quot;", b"&#39;", b"%22", b"%27")


def _unquoted_argument(name: bytes) -> bool:
    """`f(KEY, value)` or `a || b`: only a quoted value after a comma is an assignment.

    Without the quote, a comma is the next item of a list in code
    (`PrivateKey,\n    ed25519.Ed25519PrivateKey`).
    """
    comma = max(name.rfind(b","), name.rfind(b"|"))
    if comma < 0:
        return False
    after = name[comma:]
    return b"=" not in after and b":" not in after and not any(q in after for q in _QUOTES)


def _decodes_to_words(value: bytes) -> bool:
    """Base64 of readable text (`bm90IG15IHJlYWwgcGFzc3dvcmQ=`, "not my real password")."""
    if len(value) % 4 or not value.rstrip(b"=").isalnum():
        return False
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return decoded.isascii() and decoded.count(b" ") >= 2 and decoded.decode().isprintable()


_NOT_ALNUM = re.compile(rb"[^A-Za-z0-9]+")
_CLASS_RUNS = re.compile(rb"[0-9]+|[a-z]+|[A-Z]+")
_DIGIT = re.compile(rb"[0-9]")
_LETTER = re.compile(rb"[A-Za-z]")
_UPPER_PAIR = re.compile(rb"[A-Z]{2}")
_LOWER_WORD = re.compile(rb"[a-z]{8}")


def _class_turns(value: bytes) -> int:
    """How often the value switches between digits, lowercase and uppercase letters."""
    return max(0, len(_CLASS_RUNS.findall(_NOT_ALNUM.sub(b"", value))) - 1)


def _mixes_classes(value: bytes, min_turns: int) -> bool:
    """Digits among letters, switching often: random strings do, names and words do not.

    A mixed-case value without digits counts when capitals come in pairs
    (`jRNwkJTQMlysNBKLcUHI`), which camelCase names (`getAccessTokenFromEnv`) avoid,
    and no run of 8 lowercase letters spells a word (`ASAccountAuthenticationRequest`).
    """
    if _DIGIT.search(value) is None:
        return (
            len(value) >= 20
            and _UPPER_PAIR.search(value) is not None
            and value.upper() != value
            and _LOWER_WORD.search(value) is None
        )
    has_letter = _LETTER.search(value) is not None
    return has_letter and _class_turns(value) >= max(min_turns, len(value) // 8)


def _value_checker(
    regex: str, *, min_length: int, min_entropy: float, min_turns: int, words: bool
) -> Validator:
    """A validator isolating the value (the last group of `regex`) and judging it."""
    compiled = re.compile(regex.encode("ascii"))

    def check(data: bytes, start: int, end: int) -> bool:
        found = compiled.fullmatch(data, start, end)
        if found is None:
            return False
        value = found.group("value")
        begin = start  # the whole identifier: `next_page_token`, not only `token`
        while begin > 0 and begin > start - 40 and data[begin - 1] in _IDENTIFIER:
            begin -= 1
        if end < len(data) and data[end] not in _ENDS and len(value) < _LONG_VALUE:
            return False  # part of a longer word or expression: get_token(), a.b.c
        # Cheapest tests first: a candidate is mostly an ordinary assignment.
        if len(value) < min_length or (min_turns and not _mixes_classes(value, min_turns)):
            return False
        if shannon_entropy(value) < min_entropy or not looks_random(value, 6):
            return False
        if _PLACEHOLDER.search(value) or _decodes_to_words(value):
            return False
        if _DOTTED_NAME.fullmatch(value) or (words and _CODE_WORDS.search(value)):
            return False
        name = data[begin : found.start("value")]
        return not (_NOT_A_CREDENTIAL.search(name) or _unquoted_argument(name))

    return check


def _keyword_rule(
    name: str,
    keywords: str,
    value: str,
    description: str,
    *,
    min_length: int = 16,
    min_entropy: float = 3.0,
    min_turns: int = 0,
    words: bool = False,
) -> PatternSpec:
    head = rf"(?i:{keywords}){_NAME_TAIL}{ASSIGN}"
    # A bare final repetition lets the engine filter stop after its first bytes.
    body = value if "|" not in value else f"(?:{value})"
    return PatternSpec(
        name,
        head + body,
        _value_checker(
            rf"{head}(?P<value>{value})",
            min_length=min_length,
            min_entropy=min_entropy,
            min_turns=min_turns,
            words=words,
        ),
        description,
    )


_ALNUM = "A-Za-z0-9"


def _provider_rules() -> Sequence[PatternSpec]:
    return (
        _keyword_rule(
            "datadog-key",
            r"datadog|dd[_.-]?(?:api|app|client)[_.-]?(?:key|token)",
            rf"[{_ALNUM}]{{32,40}}",
            "Datadog API or application key (next to its name)",
        ),
        _keyword_rule(
            "cloudflare-key",
            r"cloudflare|\bcf[_.-](?:api|auth)",
            rf"[{_ALNUM}_-]{{37,40}}",
            "Cloudflare API token or global API key (next to its name)",
        ),
        _keyword_rule(
            "bitbucket-key",
            r"bitbucket",
            rf"[{_ALNUM}=_-]{{32,64}}",
            "Bitbucket client id or secret (next to its name)",
        ),
        _keyword_rule(
            "okta-token",
            r"okta",
            rf"00[{_ALNUM}=_-]{{40}}",
            "Okta API token (next to its name)",
        ),
        _keyword_rule(
            "sentry-legacy-token",
            r"sentry",
            r"[a-fA-F0-9]{64}",
            "Sentry auth token, legacy hex form (next to its name)",
        ),
        _keyword_rule(
            "twitter-key",
            r"twitter",
            # API key (25), secret (50), access token (id-random), bearer (A*22 + 80-100):
            # one class, so the engine filter is its first 16 bytes.
            rf"[{_ALNUM}%-]{{25,122}}",
            "Twitter (X) API key, secret or access token (next to its name)",
        ),
        _keyword_rule(
            "algolia-key",
            r"algolia",
            rf"[{_ALNUM}]{{32}}",
            "Algolia API key (next to its name)",
        ),
        _keyword_rule(
            "asana-token",
            r"asana",
            r"[A-Za-z0-9/:]{32,70}",  # 1/<16 digits>:<32 hex>, 2/<16>/<16>:<32>, or 32
            "Asana personal access token or client secret (next to its name)",
        ),
        _keyword_rule(
            "adafruit-key",
            r"adafruit",
            rf"[{_ALNUM}_-]{{32}}",
            "Adafruit IO key (next to its name)",
        ),
        _keyword_rule(
            "airtable-key",
            r"airtable",
            rf"[{_ALNUM}]{{17}}",  # key + 14, or 17
            "Airtable API key (next to its name)",
            min_length=17,
        ),
        _keyword_rule(
            "alibaba-secret-key",
            r"alibaba|aliyun|access[_.-]?key[_.-]?secret",
            rf"[{_ALNUM}]{{30}}",
            "Alibaba Cloud access key secret (next to its name)",
        ),
    )


# The generic rule: a credential-ish name and a long random value. Its value must
# switch between digits and letters at least three times and carry 3.3 bits per
# symbol: identifiers, words, paths and version strings do not.
GENERIC_KEYWORDS = (
    r"token|secret|passw(?:or)?d|passphrase|\bpwd|api[_.-]?key|apikey|access[_.-]?key"
    r"|auth[_.-]?key|private[_.-]?key|credentials?|signing[_.-]?key|encryption[_.-]?key"
)

KEYWORD_PATTERNS: tuple[PatternSpec, ...] = (
    *_provider_rules(),
    _keyword_rule(
        "generic-secret",
        GENERIC_KEYWORDS,
        r"[A-Za-z0-9_+/=.~%-]{14,200}",
        "a token, secret, password or API key assigned a random-looking value",
        min_length=14,
        min_entropy=3.3,
        min_turns=3,
        words=True,
    ),
)

# Findings of these rules are dropped where a more specific rule matched the same bytes.
GENERIC_RULES = frozenset({"generic-secret"})
