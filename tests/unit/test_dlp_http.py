"""DLP sees credentials wherever HTTP carries them (issue 18, row 3).

The attack that got through: `Authorization: Basic base64("x-access-token:ghp_…")` to an
allowed github.com, enough for a `git push` of the workspace to the attacker's repo.
Each variant here must be refused with `dlp:credential-in-auth-header` and audited,
also when DLP otherwise only logs, and without the token in any record."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from claude_bottle.bundle.admission import EgressAdmission
from claude_bottle.bundle.gate import EgressGate
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.scanning import CREDENTIAL_RULE, DlpInspector
from claude_bottle.policy.dlp import Scanner
from claude_bottle.policy.dlp_http import credential_views, lenient_base64, userinfo_views

TOKEN = "ghp_" + "R4nd0mT0k3nV4lu3F0rT3st1ngOnly0123ab"  # shaped like one, issued by nobody


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


ATTACKS = {
    "basic, token as password": [("authorization", f"Basic {b64('x-access-token:' + TOKEN)}")],
    "basic, token as user": [("authorization", f"Basic {b64(TOKEN + ':x-oauth-basic')}")],
    "basic, lowercase scheme": [("authorization", f"basic {b64('x:' + TOKEN)}")],
    "basic, uppercase scheme": [("authorization", f"BASIC {b64('x:' + TOKEN)}")],
    "basic, tab after the scheme": [("authorization", f"Basic\t{b64('x:' + TOKEN)}")],
    "basic, no padding": [("authorization", "Basic " + b64("x:" + TOKEN + "1").rstrip("="))],
    "basic, base64url": [
        ("authorization", "Basic " + base64.urlsafe_b64encode(f"x:{TOKEN}?>".encode()).decode())
    ],
    "basic, second of duplicated headers": [
        ("authorization", f"Basic {b64('x:harmless-password')}"),
        ("authorization", f"Basic {b64('x:' + TOKEN)}"),
    ],
    "bearer": [("authorization", f"Bearer {TOKEN}")],
    "bearer, lowercase": [("authorization", f"bearer {TOKEN}")],
    "token": [("authorization", f"token {TOKEN}")],
    "bearer, base64 of the token": [("authorization", f"Bearer {b64(TOKEN)}")],
    "bare, no scheme": [("authorization", b64(TOKEN))],
    "proxy-authorization basic": [("proxy-authorization", f"Basic {b64('u:' + TOKEN)}")],
    "cookie": [("cookie", f"theme=dark; session={TOKEN}")],
    "cookie, base64": [("cookie", f"session={b64(TOKEN)}")],
    "cookie, percent-encoded": [("cookie", "s=" + "".join(f"%{ord(c):02x}" for c in TOKEN))],
}


class Records:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, kind: str, decision: str, **fields: Any) -> None:
        self.calls.append((kind, decision, fields))


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner()


async def public_resolver(host: str, port: int) -> list[str]:
    return ["140.82.112.3"]


def pipeline(scanner: Scanner, records: Records, *, block: bool) -> EgressAdmission:
    gate = EgressGate(["github.com"], resolver=public_resolver)
    return EgressAdmission(gate, DlpInspector(scanner, block=block, record=records))


@pytest.mark.parametrize("block", [True, False], ids=["block", "log-only"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_credential_where_http_carries_one_is_refused(
    scanner: Scanner, attack: str, block: bool
) -> None:
    records = Records()
    admission = pipeline(scanner, records, block=block)
    dest = asyncio.run(admission.destination("CONNECT", "github.com:443", 443))
    headers = [(name.encode(), value.encode()) for name, value in ATTACKS[attack]]
    with pytest.raises(Refusal) as caught:
        admission.head("GET", dest, "/attacker/loot.git/info/refs", headers)
    assert (caught.value.status, caught.value.rule) == (403, CREDENTIAL_RULE)
    assert records.calls, "the refusal is audited"
    assert all(kind == "dlp" and decision == "deny" for kind, decision, _ in records.calls)
    assert TOKEN not in repr(records.calls) and TOKEN not in str(caught.value)
    assert b64(TOKEN)[:20] not in repr(records.calls)


@pytest.mark.parametrize(
    "authority",
    [
        f"x-access-token:{TOKEN}@github.com:443",
        f"{TOKEN}@github.com:443",
        "x:" + "".join(f"%{ord(c):02X}" for c in TOKEN) + "@github.com:443",
    ],
)
def test_a_credential_in_url_userinfo_is_refused(scanner: Scanner, authority: str) -> None:
    records = Records()
    admission = pipeline(scanner, records, block=False)
    with pytest.raises(Refusal) as caught:
        asyncio.run(admission.destination("CONNECT", authority, 443))
    assert caught.value.rule == CREDENTIAL_RULE
    assert records.calls and TOKEN not in repr(records.calls)
    with pytest.raises(Refusal) as caught:  # absolute-form goes the same way
        asyncio.run(admission.route(f"http://{authority.replace(':443', '')}/", None))
    assert caught.value.rule == CREDENTIAL_RULE


def test_userinfo_without_a_credential_is_still_refused_as_before(scanner: Scanner) -> None:
    records = Records()
    with pytest.raises(Refusal) as caught:
        asyncio.run(
            pipeline(scanner, records, block=True).destination(
                "CONNECT", "user:hunter2@github.com:443", 443
            )
        )
    assert (caught.value.status, caught.value.rule) == (400, "deny:userinfo")
    assert records.calls == []


@pytest.mark.parametrize(
    "headers",
    [
        [("authorization", f"Basic {b64('alice:correct horse battery staple')}")],
        [("authorization", "Bearer not-a-known-token-shape-0123456789")],
        [("cookie", "theme=dark; lang=en; session=abc123")],
        [("authorization", "Basic !!!not base64!!!")],
        [("x-api-version", "2022-11-28")],
    ],
)
def test_ordinary_credentials_pass(scanner: Scanner, headers: list[tuple[str, str]]) -> None:
    records = Records()
    admission = pipeline(scanner, records, block=True)
    dest = asyncio.run(admission.destination("CONNECT", "github.com:443", 443))
    admission.head("GET", dest, "/", [(n.encode(), v.encode()) for n, v in headers])
    assert records.calls == []


def test_a_token_elsewhere_in_log_only_mode_is_only_logged(scanner: Scanner) -> None:
    records = Records()
    admission = pipeline(scanner, records, block=False)
    dest = asyncio.run(admission.destination("CONNECT", "github.com:443", 443))
    admission.head("GET", dest, "/", [(b"x-note", TOKEN.encode())])
    assert [decision for _, decision, _ in records.calls] == ["log"]


def test_views_name_where_the_credential_was() -> None:
    views = dict(credential_views(b"authorization", f"Basic {b64('u:' + TOKEN)}".encode()))
    assert views["authorization header (Basic user)"] == b"u"
    assert views["authorization header (Basic password)"] == TOKEN.encode()
    assert credential_views(b"accept", b"*/*") == []
    assert dict(userinfo_views("a:b@h"))["URL userinfo (password)"] == b"b"
    assert userinfo_views("h:443") == []


@pytest.mark.parametrize(
    ("text", "decoded"),
    [(b"eDp5", b"x:y"), (b"eDp5eg", b"x:yz"), (b"eDp5eg==", b"x:yz"), (b"e Dp\n5", b"x:y")],
)
def test_lenient_base64(text: bytes, decoded: bytes) -> None:
    assert lenient_base64(text) == decoded
