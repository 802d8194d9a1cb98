"""Keyword rules through every carrier, and the three defects of issue 25.

Each credential is written the way a config file, env file, YAML, code,
a JSON body (escaped quotes, \\u escapes, a JSON string inside a JSON
string), a form or a URL query carries it, and must be found in each.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from urllib.parse import quote, urlencode

import pytest

from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.scanning import DlpInspector
from claude_bottle.policy.dlp import Scanner

B62 = string.ascii_letters + string.digits
HEX = "0123456789abcdef"


def rand(rnd: random.Random, size: int, alphabet: str = B62) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(size))


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner()


def _json(text: str) -> str:
    return json.dumps({"content": text})


def _unicode_quotes(text: str) -> str:
    return text.replace('"', "\\u0022")


CARRIERS: dict[str, Callable[[str, str], str]] = {
    "env": lambda key, value: f"{key.upper()}={value}\n",
    "ini quoted": lambda key, value: f'{key} = "{value}"\n',
    "yaml": lambda key, value: f"config:\n  {key}: {value}\n",
    "yaml quoted": lambda key, value: f"{key}: '{value}'\n",
    "python": lambda key, value: f"{key} = '{value}'\n",
    "go": lambda key, value: f'var {key} string = "{value}"\n',
    "json": lambda key, value: json.dumps({key: value}),
    "json in json": lambda key, value: _json(json.dumps({key: value})),
    "env in json": lambda key, value: _json(f"{key.upper()}={value}\nDEBUG=1\n"),
    "code in json": lambda key, value: _json(f'{key} = "{value}";\n'),
    "unicode quotes": lambda key, value: _unicode_quotes(json.dumps({key: value})),
    "form": lambda key, value: urlencode({"grant_type": "x", key: value}),
    "url query": lambda key, value: f"GET /cb?{urlencode({key: value})}&page=2 HTTP/1.1",
    "url-encoded json": lambda key, value: "data=" + quote(json.dumps({key: value})),
    "xml": lambda key, value: f"<{key}>{value}</{key}>",
    "header": lambda key, value: f"X-{key.replace('_', '-')}: {value}\r\n",
}

# (rule, key name, value maker)
CREDENTIALS: list[tuple[str, str, Callable[[random.Random], str]]] = [
    ("generic-secret", "client_secret", lambda r: rand(r, 31) + "7"),
    ("generic-secret", "api_token", lambda r: rand(r, 40, HEX)),
    ("datadog-key", "datadog_api_key", lambda r: rand(r, 32, HEX)),
    ("okta-token", "okta_api_token", lambda r: "00" + rand(r, 40)),
    ("aws-secret-access-key", "aws_secret_access_key", lambda r: rand(r, 40, B62 + "/+")),
]


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize(("rule", "key", "make"), CREDENTIALS, ids=[c[1] for c in CREDENTIALS])
def test_keyword_rules_in_every_carrier(
    scanner: Scanner, carrier: str, rule: str, key: str, make: Callable[[random.Random], str]
) -> None:
    for seed in range(5):
        text = CARRIERS[carrier](key, make(random.Random(seed)))
        found = {finding.pattern for finding in scanner.scan(text.encode(), "body")}
        assert found, f"{rule} missed in {carrier}: {text!r}"


@pytest.mark.parametrize("carrier", CARRIERS)
def test_ordinary_assignments_pass_in_every_carrier(scanner: Scanner, carrier: str) -> None:
    for key, value in [
        ("token", "get_token"),
        ("password", "${DB_PASSWORD}"),
        ("secret_key", "changeme"),
        ("next_page_token", "CiAKGjBpNDd2Nmp2Zml2cXRwYjBpOXA"),
        ("tokenizer_name", "bert-base-uncased"),
        ("api_key_header", "X-Api-Key"),
    ]:
        text = CARRIERS[carrier](key, value)
        assert not scanner.scan(text.encode(), "body"), (carrier, text)


def test_request_header_name_counts_as_the_keyword(scanner: Scanner) -> None:
    value = rand(random.Random(3), 32, HEX).encode()
    found = scanner.scan_header(b"DD-API-KEY", value, "DD-API-KEY header")
    assert [finding.pattern for finding in found] == ["datadog-key"]
    assert found[0].start == 0 and found[0].end == len(value)
    assert not scanner.scan_header(b"X-Request-Id", value, "X-Request-Id header")

    records: list[str] = []
    inspector = DlpInspector(
        scanner, block=True, record=lambda kind, decision, **fields: records.append(decision)
    )
    with pytest.raises(Refusal):
        inspector.check_head("GET", "api.test", 443, "/", [(b"DD-API-KEY", value)])
    assert records == ["deny"]


# --- the three defects ----------------------------------------------------------------


def test_gitlab_pipeline_trigger_tokens_are_always_found(scanner: Scanner) -> None:
    for seed in range(200):
        token = "glptt-" + rand(random.Random(seed), 40, HEX)
        found = {f.pattern for f in scanner.scan(f"TRIGGER={token}\n".encode(), "body")}
        assert "gitlab-token" in found, seed


def test_square_token_after_an_equals_sign(scanner: Scanner) -> None:
    token = "EAAA" + rand(random.Random(1), 60, B62 + "_-")
    found = {f.pattern for f in scanner.scan(f"TOKEN={token}".encode(), "body")}
    assert "square-access-token" in found


def test_aws_secret_in_a_json_body(scanner: Scanner) -> None:
    secret = rand(random.Random(2), 40, B62 + "/+")
    config = f'[default]\naws_secret_access_key = "{secret}"\n'
    body = json.dumps({"messages": [{"role": "user", "content": config}]})
    found = {f.pattern for f in scanner.scan(body.encode(), "body")}
    assert "aws-secret-access-key" in found
    escaped = json.dumps({"file": json.dumps({"aws_secret_access_key": secret})})
    assert "aws-secret-access-key" in {f.pattern for f in scanner.scan(escaped.encode(), "b")}


def test_a_specific_rule_shadows_the_generic_one_on_the_same_bytes(scanner: Scanner) -> None:
    rnd = random.Random(9)
    token = "gh" + "p_" + rand(rnd, 36)
    other = rand(rnd, 23) + "7"
    lines = [f'token = "{token}"', f'client_secret = "{other}"'] * 300
    found = scanner.scan("\n".join(lines).encode(), "body")
    assert [f.pattern for f in found[:2]] == ["github-pat", "generic-secret"]
    assert sum(f.pattern == "github-pat" for f in found) == 300
    assert sum(f.pattern == "generic-secret" for f in found) == 300
