"""Credentials injected at the edge, without a socket: the placeholder's shape, the secret
sources, the head stage (swap for its hosts, refuse for any other), its place in the
admission pipeline before DLP, the response guard, and the hostile-input table: each
input handled or refused, never forwarded with the real secret to the wrong place."""

from __future__ import annotations

import asyncio
import base64
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.bundle.admission import EgressAdmission
from claude_bottle.bundle.gate import EgressGate
from claude_bottle.bundle.injection import (
    MASK,
    InjectedHead,
    Injection,
    Injector,
    ResponseGuard,
)
from claude_bottle.bundle.l7 import RuleBook
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.scanning import DlpInspector
from claude_bottle.bundle.secret_sources import load_secret, placeholder_for, same_shape
from claude_bottle.errors import MissingDependency
from claude_bottle.policy.dlp import Scanner

SECRET = "ghp_" + "Zq8Xw2Lk9Vb4Nm7Rt1Yp3Hs6Jd5Fg0Ca8Ue2Wo"[:36]  # shaped like one, issued by nobody
PLACEHOLDER = placeholder_for(SECRET)
HOSTS = frozenset({"api.github.com", "github.com"})


def injector() -> Injector:
    return Injector([Injection("GITHUB_TOKEN", HOSTS, PLACEHOLDER.encode(), SECRET.encode())])


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def test_the_placeholder_has_the_secrets_shape_and_is_new_each_time() -> None:
    assert PLACEHOLDER.startswith("ghp_") and len(PLACEHOLDER) == len(SECRET)
    assert re.fullmatch(r"ghp_[A-Za-z0-9]{36}", PLACEHOLDER)
    assert PLACEHOLDER != SECRET and placeholder_for(SECRET) != PLACEHOLDER
    assert placeholder_for("glpat-abcDEF123456").startswith("glpat-")
    short = placeholder_for("hunter2hunter")
    assert len(short) >= 20
    pat = placeholder_for("github_pat_11ABCDEFG0abcdefghijkl_" + "x" * 40)
    assert re.fullmatch(r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{40}", pat)


def test_a_placeholder_kept_from_an_earlier_run_must_still_fit_the_secret() -> None:
    assert same_shape(PLACEHOLDER, SECRET)
    assert same_shape(placeholder_for("hunter2hunter"), "hunter2hunter")
    pat = "github_pat_11ABCDEFG0abcdefghijkl_" + "x" * 40
    assert same_shape(placeholder_for(pat), pat)
    forgeries = (SECRET, "Bearer", PLACEHOLDER[:-1], "gho_" + PLACEHOLDER[4:])
    forgeries += (PLACEHOLDER[:-1] + "/",)
    for forged in forgeries:
        assert not same_shape(forged, SECRET), forged


def test_secret_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_secret("env:TOK", {"TOK": f" {SECRET}\n"}) == SECRET
    (tmp_path / "tok").write_text(SECRET + "\n")
    assert load_secret(f"file:{tmp_path / 'tok'}", {}) == SECRET
    printer = f"command:{sys.executable} -c 'print(\"{SECRET}\")'"
    assert load_secret(printer, {}) == SECRET
    for spec, env in [
        ("env:MISSING", {}),
        (f"file:{tmp_path / 'absent'}", {}),
        (f"command:{sys.executable} -c 'import sys; print(\"{SECRET}\"); sys.exit(3)'", {}),
        ("env:TOK", {"TOK": "two words"}),  # would break the header
        ("env:TOK", {"TOK": "line\r\nX-Evil: 1"}),
    ]:
        with pytest.raises(MissingDependency) as caught:
            load_secret(spec, env)
        assert SECRET not in str(caught.value) and SECRET not in caught.value.hint


def test_a_command_source_runs_once_per_process(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    printer = f"command:sh -c 'echo run >> {runs}; echo {SECRET}'"
    assert load_secret(printer, {}) == SECRET
    assert load_secret(printer, {}, key="credentials.inject[0].secret") == SECRET
    assert runs.read_text() == "run\n"


def applied(headers: list[tuple[bytes, bytes]], host: str = "api.github.com") -> InjectedHead:
    result = injector().apply("GET", host, "/user", headers)
    assert result is not None
    return result


def test_bearer_token_and_raw_values_are_swapped_for_their_hosts() -> None:
    result = applied(
        [
            (b"authorization", f"Bearer {PLACEHOLDER}".encode()),
            (b"x-token", PLACEHOLDER.encode()),
            (b"accept-encoding", b"gzip"),
        ]
    )
    assert result.forward == [
        (b"authorization", f"Bearer {SECRET}".encode()),
        (b"x-token", SECRET.encode()),
    ]  # no Accept-Encoding: the answer must be readable to be scanned
    assert result.injected == ("GITHUB_TOKEN",) and result.secrets == (SECRET.encode(),)
    assert all(
        PLACEHOLDER.encode() not in v and SECRET.encode() not in v for _, v in result.scanned
    )
    assert (b"authorization", b"Bearer " + MASK) in result.scanned


@pytest.mark.parametrize(
    ("user", "password"),
    [("x-access-token", PLACEHOLDER), (PLACEHOLDER, "x-oauth-basic"), ("_", PLACEHOLDER)],
)
def test_basic_credentials_are_decoded_swapped_and_re_encoded(user: str, password: str) -> None:
    (_name, value), *_ = applied([(b"authorization", basic(user, password))]).forward
    decoded = base64.b64decode(value.split()[1]).decode()
    assert decoded == f"{user}:{password}".replace(PLACEHOLDER, SECRET)


def test_a_head_without_the_placeholder_is_left_alone() -> None:
    assert injector().apply("GET", "api.github.com", "/", [(b"accept", b"*/*")]) is None
    assert injector().apply("GET", "other.test", "/", [(b"accept", b"*/*")]) is None


def wrong_host(headers: list[tuple[bytes, bytes]], target: str = "/") -> Refusal:
    with pytest.raises(Refusal) as caught:
        injector().apply("POST", "attacker.test", target, headers)
    assert (caught.value.status, caught.value.rule) == (403, "credential-wrong-host")
    assert PLACEHOLDER not in caught.value.message and SECRET not in caught.value.message
    return caught.value


def test_the_placeholder_to_any_other_host_is_refused() -> None:
    wrong_host([(b"authorization", f"token {PLACEHOLDER}".encode())])
    wrong_host([(b"authorization", basic(PLACEHOLDER, "x"))])
    wrong_host([(b"x-anything", f"prefix{PLACEHOLDER}suffix".encode())])
    wrong_host([], target=f"/collect?t={PLACEHOLDER}")
    wrong_host([], target="/collect?t=" + "".join(f"%{ord(c):02x}" for c in PLACEHOLDER))


def test_trace_to_a_host_that_receives_credentials_is_refused() -> None:
    with pytest.raises(Refusal) as caught:
        injector().apply("TRACE", "api.github.com", "/", [])
    assert caught.value.rule == "credential-trace"


# The hostile-input table: what the bottle sends, and what must (not) reach which host.
HOSTILE: list[tuple[str, str, list[tuple[bytes, bytes]], str]] = [
    (
        "placeholder split across two headers",
        "api.github.com",
        [
            (b"authorization", f"Bearer {PLACEHOLDER[:20]}".encode()),
            (b"x-rest", PLACEHOLDER[20:].encode()),
        ],
        "untouched",
    ),
    (
        "lower-case scheme word",
        "api.github.com",
        [(b"authorization", f"bearer {PLACEHOLDER}".encode())],
        "swapped",
    ),
    (
        "upper-case Basic",
        "github.com",
        [(b"authorization", b"BASIC " + base64.b64encode(f"u:{PLACEHOLDER}".encode()))],
        "swapped",
    ),
    (
        "Basic with the placeholder as user",
        "github.com",
        [(b"authorization", basic(PLACEHOLDER, ""))],
        "swapped",
    ),
    (
        "duplicated Authorization headers",
        "api.github.com",
        [
            (b"authorization", f"Bearer {PLACEHOLDER}".encode()),
            (b"authorization", f"Bearer {PLACEHOLDER}".encode()),
        ],
        "swapped",
    ),
    (
        "Basic in base64url without padding",
        "github.com",
        [
            (
                b"authorization",
                b"Basic " + base64.urlsafe_b64encode(f"u:{PLACEHOLDER}".encode()).rstrip(b"="),
            )
        ],
        "swapped",
    ),
    (
        "split headers to the wrong host",
        "attacker.test",
        [(b"a", PLACEHOLDER[:20].encode()), (b"b", PLACEHOLDER[20:].encode())],
        "untouched",
    ),
    (
        "lower-case scheme to the wrong host",
        "attacker.test",
        [(b"authorization", f"bEaReR {PLACEHOLDER}".encode())],
        "refused",
    ),
    (
        "duplicated headers to the wrong host",
        "attacker.test",
        [(b"authorization", b"Bearer x"), (b"authorization", basic(PLACEHOLDER, "p"))],
        "refused",
    ),
]


@pytest.mark.parametrize(
    ("what", "host", "headers", "outcome"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_hostile_heads(
    what: str, host: str, headers: list[tuple[bytes, bytes]], outcome: str
) -> None:
    try:
        result = injector().apply("GET", host, "/", headers)
    except Refusal as exc:
        assert outcome == "refused", what
        assert exc.rule == "credential-wrong-host"
        return
    assert outcome != "refused", what
    forwarded = headers if result is None else result.forward
    wire = b"\n".join(value for _, value in forwarded)
    carried = SECRET.encode() in wire or SECRET.encode() in b"".join(
        base64.b64decode(v.split()[1] + b"==", altchars=b"-_")
        for n, v in forwarded
        if n == b"authorization" and v.lower().startswith(b"basic ")
    )
    if outcome == "untouched":
        assert result is None and not carried, what
    else:
        assert host in HOSTS and carried and PLACEHOLDER.encode() not in wire, what


# --- the pipeline: rules, injection, DLP in that order ----------------------------


class Records:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, kind: str, decision: str, **fields: Any) -> None:
        self.calls.append((kind, decision, fields))


async def public_resolver(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


def pipeline(records: Records, *, block: bool = True) -> EgressAdmission:
    gate = EgressGate(["api.github.com", "github.com", "attacker.test"], resolver=public_resolver)
    scanner = Scanner(
        secrets={"inject.GITHUB_TOKEN": SECRET, "placeholder.GITHUB_TOKEN": PLACEHOLDER}
    )
    inspector = DlpInspector(scanner, block=block, record=records)
    return EgressAdmission(gate, inspector, RuleBook(injected_hosts=HOSTS), injector())


def head(admission: EgressAdmission, host: str, method: str, path: str, headers: Any) -> Any:
    async def run() -> Any:
        dest = await admission.gate.check(host, 443)
        return admission.head(method, dest, path, headers)

    return asyncio.run(run())


def test_the_placeholder_passes_dlp_for_its_own_hosts_only() -> None:
    records = Records()
    admission = pipeline(records)
    auth = [(b"authorization", f"Bearer {PLACEHOLDER}".encode())]
    injected = head(admission, "api.github.com", "GET", "/user", auth)
    assert injected.forward == [(b"authorization", f"Bearer {SECRET}".encode())]
    assert not records.calls  # nothing for DLP to report
    with pytest.raises(Refusal) as caught:
        head(admission, "attacker.test", "GET", "/", auth)
    assert caught.value.rule == "credential-wrong-host"
    # the real secret, which the bottle should not have, is refused to every host
    real = [(b"authorization", f"Bearer {SECRET}".encode())]
    for host in ("attacker.test", "api.github.com"):
        with pytest.raises(Refusal) as caught:
            head(admission, host, "GET", "/user", real)
        assert caught.value.rule == "dlp:credential-in-auth-header"


def test_rules_come_before_the_swap() -> None:
    admission = pipeline(Records())
    auth = [(b"authorization", f"Bearer {PLACEHOLDER}".encode())]
    with pytest.raises(Refusal) as caught:
        head(admission, "api.github.com", "DELETE", "/repos/acme/x", auth)
    assert caught.value.rule == "l7:api.github.com"
    for path in ("/repos/acme/%2e%2e/x", "/repos//acme", "/a;b", "/%C0%AE%C0%AE/x"):
        with pytest.raises(Refusal) as caught:
            head(admission, "api.github.com", "GET", path, auth)
        assert caught.value.rule == "l7:api.github.com", path


def test_a_placeholder_in_the_url_or_body_of_its_own_host_is_not_swapped() -> None:
    admission = pipeline(Records())
    with pytest.raises(Refusal) as caught:  # not swapped: DLP sees the canary
        head(admission, "api.github.com", "GET", f"/search?q={PLACEHOLDER}", [])
    assert caught.value.rule == "credential-wrong-host"

    async def run() -> None:
        dest = await admission.gate.check("github.com", 443)
        guard = admission.body("POST", dest, "/acme/x.git/git-upload-pack", [])
        assert guard is not None
        with pytest.raises(Refusal):
            guard.feed(f'{{"content": "{PLACEHOLDER}"}}'.encode())
            guard.finish()

    asyncio.run(run())


# --- the response ---------------------------------------------------------------


def test_the_response_guard_holds_back_and_refuses_the_secret_in_any_encoding() -> None:
    secret = SECRET.encode()
    guard = ResponseGuard([secret])
    passed = guard.feed(b"x" * 100) + guard.feed(b"y" * 10)
    assert secret not in passed and passed + guard.finish() == b"x" * 100 + b"y" * 10
    for reflected in (
        secret,
        base64.b64encode(b"user:" + secret),
        secret.hex().encode(),
        b'{"token": "' + secret + b'"}',
    ):
        guard = ResponseGuard([secret])
        with pytest.raises(Refusal) as caught:  # split across two chunks
            guard.feed(b"echo: " + reflected[:7])
            guard.feed(reflected[7:] + b" end")
            guard.finish()
        assert caught.value.rule == "credential-in-response"
    with pytest.raises(Refusal):
        ResponseGuard([secret]).check_head([(b"x-echo", b"Bearer " + secret)])
    with pytest.raises(Refusal):
        ResponseGuard([secret]).check_head([(b"content-encoding", b"gzip")])
    ResponseGuard([secret]).check_head([(b"content-type", b"application/json")])


def test_the_placeholder_in_a_body_elsewhere_is_refused_even_when_dlp_only_logs() -> None:
    records = Records()
    admission = pipeline(records, block=False)

    async def run() -> None:
        dest = await admission.gate.check("attacker.test", 443)
        admission.head("POST", dest, "/upload", [])
        guard = admission.body("POST", dest, "/upload", [])
        assert guard is not None
        with pytest.raises(Refusal) as caught:
            guard.feed(b"x" * 100 + base64.b64encode(PLACEHOLDER.encode()) + b"y" * 100)
            guard.finish()
        assert caught.value.rule == "credential-wrong-host"
        # an ordinary secret-shaped value is only logged, as configured
        guard = admission.body("POST", dest, "/upload", [])
        assert guard is not None
        passed = guard.feed(b"key AKIAIOSFODNN7EXAMPLE1 " + b"z" * 300) + guard.finish()
        assert passed.startswith(b"key")

    asyncio.run(run())
    assert next(c[1] for c in records.calls if c[0] == "dlp") == "deny"
