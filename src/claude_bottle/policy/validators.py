"""Checksum and shape checks that turn a regex hit into a credible secret.

Pure functions on text, no I/O. The DLP patterns (`dlp_patterns`) match a
shape; these decide whether the shape is real: a card number passes Luhn,
an IBAN passes ISO 7064 mod-97, a JWT's header is base64url JSON with an
`alg`, a token is not a placeholder like `xxxxxxxx`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections import Counter

# ISO 13616 IBAN length per country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

# Published example numbers (ISO/EBA documentation, payment-provider test cards):
# they fill documentation and test suites and are never anyone's account.
EXAMPLE_IBANS = frozenset({"GB82WEST12345698765432", "DE89370400440532013000"})
TEST_CARDS = frozenset(
    {
        "4111111111111111", "4242424242424242", "4012888888881881", "4222222222222",
        "4000056655665556", "5555555555554444", "5105105105105100", "5200828282828210",
        "2223003122003222", "378282246310005", "371449635398431", "378734493671000",
        "6011111111111117", "6011000990139424", "3530111333300000", "3566002020360505",
        "30569309025904", "38520000023237", "6200000000000005", "6011000400000000",
    }
)  # fmt: skip


def shannon_entropy(text: bytes | str) -> float:
    """Bits per symbol of `text` (0.0 for empty input)."""
    if not text:
        return 0.0
    size = len(text)
    counts = Counter(text)
    return -sum(n / size * math.log2(n / size) for n in counts.values())


def distinct(text: bytes | str) -> int:
    return len(set(text))


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of ASCII digits; False for anything else."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def card_brand(digits: str) -> str | None:
    """The card scheme whose IIN range and length `digits` fits, or None.

    Only current lengths: 13-digit Visa numbers are long retired, Diners
    cards are 14 or 16 digits.
    """
    size = len(digits)
    if size < 14:
        return None
    head2, head3, head4 = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits.startswith("4") and size in (16, 19):
        return "visa"
    if (51 <= head2 <= 55 or 2221 <= head4 <= 2720) and size == 16:
        return "mastercard"
    if head2 in (34, 37) and size == 15:
        return "amex"
    if (head4 == 6011 or 644 <= head3 <= 649 or head2 == 65) and 16 <= size <= 19:
        return "discover"
    if (300 <= head3 <= 305 or head2 in (36, 38, 39)) and size in (14, 16):
        return "diners"
    if 3528 <= head4 <= 3589 and 16 <= size <= 19:
        return "jcb"
    if head2 == 62 and 16 <= size <= 19:
        return "unionpay"
    return None


_CARD_GROUPINGS = ((4, 6, 5), (4, 6, 4))


def longest_run(text: str) -> int:
    """Length of the longest run of one repeated character."""
    best = run = 0
    previous = ""
    for char in text:
        run = run + 1 if char == previous else 1
        previous = char
        best = max(best, run)
    return best


def card_ok(text: str) -> bool:
    """A payment card number: known scheme and length, Luhn, plausible layout.

    Separators (one space or one dash) must be used consistently: in groups
    of four (the last group may be shorter) or the 4-6-5 / 4-6-4 layout of
    Amex and Diners. Numbers of 17-19 digits count only when grouped (bare
    ones are mostly 64-bit integers: seeds, ids, nonces). Published test
    cards, numbers of fewer than five different digits and numbers with a
    digit repeated five times in a row are rejected.
    """
    separators = {char for char in text if char in " -"}
    if len(separators) > 1:
        return False
    digits = text.replace(" ", "").replace("-", "")
    if card_brand(digits) is None or not luhn_ok(digits):
        return False
    if digits in TEST_CARDS or distinct(digits) < 5 or longest_run(digits) >= 5:
        return False
    if not separators:
        return len(digits) <= 16
    groups = tuple(len(part) for part in text.split(separators.pop()))
    if groups in _CARD_GROUPINGS:
        return True
    *head, last = groups
    return all(size == 4 for size in head) and 1 <= last <= 4


def iban_checksum(text: str) -> int:
    """ISO 7064 mod 97-10 remainder of an IBAN (1 for a valid one)."""
    moved = text[4:] + text[:4]
    number = "".join(str(int(char, 36)) for char in moved)
    return int(number) % 97


def iban_ok(text: str) -> bool:
    """An IBAN: known country, that country's length, mod-97 remainder 1.

    Spaces are allowed only in the printed groups of four. Published example
    IBANs are rejected.
    """
    if " " in text:
        groups = text.split(" ")
        if any(len(part) != 4 for part in groups[:-1]) or not 1 <= len(groups[-1]) <= 4:
            return False
    compact = text.replace(" ", "")
    if not compact.isascii() or not compact.isalnum() or not compact[:2].isalpha():
        return False
    if not compact[2:4].isdigit() or IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    if compact in EXAMPLE_IBANS or compact.upper() != compact:
        return False
    return iban_checksum(compact) == 1


def b64url_decode(segment: bytes) -> bytes | None:
    """Decode unpadded base64url (or standard base64); None if it is not valid."""
    padded = segment + b"=" * (-len(segment) % 4)
    try:
        return base64.urlsafe_b64decode(padded.replace(b"+", b"-").replace(b"/", b"_"))
    except (binascii.Error, ValueError):
        return None


def _json_object(raw: bytes | None) -> dict[str, object] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def jwt_ok(token: bytes) -> bool:
    """A JWS/JWT: header is base64url JSON with a string `alg`, payload starts a JSON object.

    The payload may be cut short (very long tokens are matched by their
    first kilobyte), so only its decodable prefix is checked.
    """
    parts = token.split(b".")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        return False
    header = _json_object(b64url_decode(parts[0]))
    if header is None or not isinstance(header.get("alg"), str):
        return False
    payload = parts[1][: len(parts[1]) - len(parts[1]) % 4]
    decoded = b64url_decode(payload)
    return decoded is not None and decoded.lstrip().startswith(b"{")


def discord_token_ok(token: bytes) -> bool:
    """A Discord bot token: its first segment is the base64 of a numeric snowflake id."""
    head = token.split(b".", 1)[0]
    decoded = b64url_decode(head)
    return decoded is not None and decoded.isdigit() and 17 <= len(decoded) <= 20


def looks_random(token: bytes, min_distinct: int) -> bool:
    """Not a placeholder: enough different symbols and no symbol filling 40% of it.

    `xxxxxxxxxxxxxxxxxxxx`, `0000...` and `XXXX-XXXX` fail; real random
    tokens of the same length pass with overwhelming probability.
    """
    if distinct(token) < min_distinct:
        return False
    most = Counter(token).most_common(1)[0][1]
    return most * 5 <= len(token) * 2
