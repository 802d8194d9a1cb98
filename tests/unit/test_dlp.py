"""DLP engine: every pattern (true and near-miss), validators, secret fingerprints,
streaming, body decoding and host labels.

Every credential below is generated at test time from a seeded PRNG and
assembled by concatenation, so this file holds no token-shaped literal.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import string
import time
import uuid
import zlib
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest

from claude_bottle.policy import dlp
from claude_bottle.policy.dlp import (
    CorruptBody,
    DecompressionBomb,
    DlpPatternError,
    Finding,
    Scanner,
    UnsupportedEncoding,
    available_engines,
    decoded_stream,
    host_label_findings,
    prefix_filter,
    scan_host_labels,
    secret_forms,
)
from claude_bottle.policy.dlp_patterns import MAX_PATTERN_WIDTH, PATTERN_NAMES, PATTERNS
from claude_bottle.policy.validators import (
    card_brand,
    card_ok,
    discord_token_ok,
    iban_checksum,
    iban_ok,
    jwt_ok,
    looks_random,
    luhn_ok,
    shannon_entropy,
)
from tests.unit.dlp_examples import MORE_EXAMPLES

B62 = string.ascii_letters + string.digits
B64U = B62 + "_-"
B64 = B62 + "+/"
HEX = "0123456789abcdef"
UPPER_DIGITS = string.ascii_uppercase + string.digits
BASE32_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
BECH32 = "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L"


def rand(rnd: random.Random, size: int, alphabet: str = B62) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(size))


def digits(rnd: random.Random, size: int) -> str:
    return str(rnd.randint(1, 9)) + rand(rnd, size - 1, string.digits)


def luhn_complete(partial: str) -> str:
    for check in "0123456789":
        if luhn_ok(partial + check):
            return partial + check
    raise AssertionError("unreachable")


def card(rnd: random.Random, prefix: str = "4", size: int = 16) -> str:
    while True:
        number = luhn_complete(prefix + rand(rnd, size - len(prefix) - 1, string.digits))
        if card_ok(number if size <= 16 else grouped(number)):
            return number


def grouped(number: str, separator: str = " ") -> str:
    return separator.join(number[i : i + 4] for i in range(0, len(number), 4))


def iban(rnd: random.Random, country: str = "DE", size: int = 22) -> str:
    bban = rand(rnd, size - 4, string.digits)
    remainder = iban_checksum(country + "00" + bban)
    return f"{country}{98 - remainder:02d}{bban}"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def jwt(rnd: random.Random) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": rand(rnd, 10), "iat": 1700000000}).encode())
    return header + "." + payload + "." + rand(rnd, 43, B64U)


def discord_token(rnd: random.Random) -> str:
    snowflake = str(rnd.randint(10**17, 10**18 - 1)).encode()
    return b64url(snowflake) + "." + rand(rnd, 6, B64U) + "." + rand(rnd, 38, B64U)


def pem(rnd: random.Random, kind: str = "RSA ", newline: str = "\n") -> str:
    body = base64.b64encode(rnd.randbytes(96)).decode()
    begin = "-----BEGIN " + kind + "PRIVATE" + " KEY-----"
    end = "-----END " + kind + "PRIVATE" + " KEY-----"
    return begin + newline + body[:64] + newline + body[64:] + newline + end


Maker = Callable[[random.Random], str]

# pattern name -> (makers of true examples, makers of near misses)
EXAMPLES: dict[str, tuple[list[Maker], list[Maker]]] = {
    "anthropic-api-key": (
        [lambda r: "sk-ant-" + "api03-" + rand(r, 93, B64U) + "AA"],
        [lambda r: "sk-ant-" + "api03-" + rand(r, 30, B64U)],
    ),
    "anthropic-admin-key": (
        [lambda r: "sk-ant-" + "admin01-" + rand(r, 93, B64U) + "AA"],
        [lambda r: "sk-ant-" + "admin01-" + "x" * 95],
    ),
    "anthropic-oauth-token": (
        [
            lambda r: "sk-ant-" + "oat01-" + rand(r, 95, B64U),
            lambda r: "sk-ant-" + "ort01-" + rand(r, 95, B64U),
        ],
        [lambda r: "sk-ant-" + "oat01-" + rand(r, 20, B64U)],
    ),
    "openai-api-key": (
        [
            lambda r: "sk-" + "proj-" + rand(r, 74, B64U) + "T3Blbk" + "FJ" + rand(r, 74, B64U),
            lambda r: "sk-" + rand(r, 20) + "T3Blbk" + "FJ" + rand(r, 20),
            lambda r: "sk-" + "proj-" + rand(r, 156, B64U),
        ],
        [lambda r: "sk-" + rand(r, 48), lambda r: "sk-" + "proj-" + rand(r, 40, B64U)],
    ),
    "groq-api-key": ([lambda r: "gsk_" + rand(r, 52)], [lambda r: "gsk_" + rand(r, 20)]),
    "xai-api-key": ([lambda r: "xai-" + rand(r, 80)], [lambda r: "xai-" + rand(r, 40)]),
    "perplexity-api-key": ([lambda r: "pplx-" + rand(r, 48)], [lambda r: "pplx-" + rand(r, 12)]),
    "replicate-api-token": (
        [lambda r: "r8_" + rand(r, 37)],
        [lambda r: "ar8_" + rand(r, 37)],
    ),
    "huggingface-token": (
        [lambda r: "hf_" + rand(r, 34, string.ascii_letters)],
        [lambda r: "hf_" + rand(r, 34, string.ascii_lowercase)],
    ),
    "huggingface-org-token": (
        [lambda r: "api_org_" + rand(r, 34, string.ascii_letters)],
        [lambda r: "api_org_" + "a" * 34],
    ),
    "aws-access-key-id": (
        [
            lambda r: "AKIA" + rand(r, 16, BASE32_UPPER),
            lambda r: "ASIA" + rand(r, 16, BASE32_UPPER),
        ],
        [lambda r: "AKIA" + "IOSFODNN7" + "EXAMPLE", lambda r: "AKIA" + rand(r, 10, BASE32_UPPER)],
    ),
    "aws-secret-access-key": (
        [
            lambda r: "aws_secret_access_key = " + rand(r, 40, B64),
            lambda r: '{"SecretAccessKey": "' + rand(r, 40, B64) + '"}',
            lambda r: "AWS_SECRET_ACCESS_KEY=" + rand(r, 40, B64),
        ],
        [
            lambda r: "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY",
            lambda r: "aws_region = " + rand(r, 40, B64),
            lambda r: "RawSecretAccessKey=" + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY1234",
        ],
    ),
    "aws-session-token": (
        [
            lambda r: "aws_session_token=" + rand(r, 300, B64),
            lambda r: '"SessionToken": "' + rand(r, 300, B64) + '"',
        ],
        [
            lambda r: "aws_session_token=" + "A" * 120,
            lambda r: '"sessionTokenExpiry": "2026-12-07T04:00:00Z"',
        ],
    ),
    "google-api-key": (
        [lambda r: "AIza" + rand(r, 35, B64U)],
        [lambda r: "AIza" + rand(r, 20, B64U)],
    ),
    "google-oauth-access-token": (
        [lambda r: "ya29." + rand(r, 150, B64U)],
        [lambda r: "ya29." + rand(r, 10, B64U)],
    ),
    "google-oauth-client-secret": (
        [lambda r: "GOCSPX-" + rand(r, 28, B64U)],
        [lambda r: "GOCSPX-" + rand(r, 10, B64U)],
    ),
    "google-oauth-refresh-token": (
        [lambda r: "1//0" + rand(r, 100, B64U)],
        [lambda r: "x1//0" + rand(r, 100, B64U)],
    ),
    "gcp-service-account": (
        [
            lambda r: '{"type": "service_account", "project_id": "' + rand(r, 8) + '"}',
            lambda r: '{"private_key_id": "' + rand(r, 40, HEX) + '"}',
        ],
        [lambda r: '{"type": "authorized_user", "client_id": "' + rand(r, 8) + '"}'],
    ),
    "azure-storage-key": (
        [
            lambda r: (
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey="
                + rand(r, 86, B64)
                + "==;EndpointSuffix=core.windows.net"
            )
        ],
        [lambda r: "AccountKey=" + rand(r, 40, B64) + "=="],
    ),
    "azure-shared-access-key": (
        [
            lambda r: (
                "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;"
                + "SharedAccessKey="
                + rand(r, 43, B64)
                + "="
            )
        ],
        [lambda r: "SharedAccessKey=" + "A" * 43 + "="],
    ),
    "azure-sas-token": (
        [
            lambda r: (
                "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&ss=b&srt=sco&sp=rl"
                + "&se=2030-01-01T00:00:00Z&spr=https&sig="
                + rand(r, 44, B62)
            )
        ],
        [lambda r: "?sv=2022-11-02&sig=" + rand(r, 10)],
    ),
    "azure-ad-client-secret": (
        [lambda r: rand(r, 3) + "8Q~" + rand(r, 34, B62 + "_~.-")],
        [lambda r: rand(r, 3) + "8Q-" + rand(r, 34, B62)],
    ),
    "alibaba-access-key-id": ([lambda r: "LTAI" + rand(r, 20)], [lambda r: "LTAI" + rand(r, 10)]),
    "digitalocean-token": (
        [lambda r: "dop_v1_" + rand(r, 64, HEX), lambda r: "doo_v1_" + rand(r, 64, HEX)],
        [lambda r: "dop_v1_" + rand(r, 32, HEX)],
    ),
    "cloudflare-origin-ca-key": (
        [lambda r: "v1.0-" + rand(r, 24, HEX) + "-" + rand(r, 146, HEX)],
        [lambda r: "v1.0-" + rand(r, 24, HEX) + "-" + rand(r, 40, HEX)],
    ),
    "heroku-api-key": (
        [
            lambda r: "HRKU-AA" + rand(r, 58, B64U),
            lambda r: "HEROKU_API_KEY=" + str(uuid.UUID(int=r.getrandbits(128))),
        ],
        [lambda r: "heroku_api_key=" + "00000000-0000-0000-0000-000000000000"],
    ),
    "terraform-cloud-token": (
        [lambda r: rand(r, 14) + ".atlas" + "v1." + rand(r, 67, B64U + "=")],
        [lambda r: rand(r, 14) + ".atlas" + "v2." + rand(r, 67, B64U)],
    ),
    "pulumi-token": ([lambda r: "pul-" + rand(r, 40, HEX)], [lambda r: "pul-" + rand(r, 20, HEX)]),
    "vault-token": ([lambda r: "hvs." + rand(r, 90, B64U)], [lambda r: "hvs." + rand(r, 10, B64U)]),
    "doppler-token": (
        [lambda r: "dp.pt." + rand(r, 43)],
        [lambda r: "dp.xx." + rand(r, 43)],
    ),
    "onepassword-service-token": (
        [lambda r: "ops_eyJ" + rand(r, 300, B64U)],
        [lambda r: "ops_eyJ" + rand(r, 30, B64U)],
    ),
    "tailscale-key": (
        [lambda r: "tskey-" + "auth-" + rand(r, 12) + "-" + rand(r, 30)],
        [lambda r: "tskey-" + "auth-" + rand(r, 12)],
    ),
    "github-pat": ([lambda r: "gh" + "p_" + rand(r, 36)], [lambda r: "gh" + "p_" + rand(r, 20)]),
    "github-oauth": ([lambda r: "gh" + "o_" + rand(r, 36)], [lambda r: "gh" + "o_" + "x" * 36]),
    "github-app": (
        [lambda r: "gh" + "s_" + rand(r, 36), lambda r: "gh" + "u_" + rand(r, 36)],
        [lambda r: "gh" + "x_" + rand(r, 36)],
    ),
    "github-refresh": (
        [lambda r: "gh" + "r_" + rand(r, 76)],
        [lambda r: "gh" + "r_" + rand(r, 10)],
    ),
    "github-fine-grained-pat": (
        [lambda r: "github_" + "pat_" + rand(r, 22) + "_" + rand(r, 59)],
        [lambda r: "github_" + "pat_" + rand(r, 22) + "_" + rand(r, 10)],
    ),
    "gitlab-pat": (
        [lambda r: "gl" + "pat-" + rand(r, 20, B64U)],
        [lambda r: "gl" + "pat-" + "x" * 20],
    ),
    "gitlab-token": (
        [lambda r: "gl" + "rt-" + rand(r, 20, B64U), lambda r: "GR1348941" + rand(r, 20, B64U)],
        [lambda r: "gl" + "zz-" + rand(r, 20, B64U)],
    ),
    "bitbucket-app-password": (
        [lambda r: "ATBB" + rand(r, 32)],
        [lambda r: "xATBB" + rand(r, 32)],
    ),
    "atlassian-api-token": (
        [lambda r: "ATATT3" + rand(r, 186, B64U + "=")],
        [lambda r: "ATATT3" + rand(r, 50, B64U)],
    ),
    "npm-token": ([lambda r: "np" + "m_" + rand(r, 36)], [lambda r: "np" + "m_" + rand(r, 20)]),
    "pypi-token": (
        [lambda r: "pypi-" + "AgEIcHlwaS5vcmc" + rand(r, 150, B64U)],
        [lambda r: "pypi-" + "AgEIcHlwaS5vcmc" + rand(r, 20, B64U)],
    ),
    "rubygems-token": (
        [lambda r: "rubygems_" + rand(r, 48, HEX)],
        [lambda r: "rubygems_" + rand(r, 20, HEX)],
    ),
    "docker-hub-pat": (
        [lambda r: "dckr_" + "pat_" + rand(r, 27, B64U)],
        [lambda r: "dckr_" + "pat_" + rand(r, 10, B64U)],
    ),
    "slack-token": (
        [
            lambda r: "xo" + "xb-" + digits(r, 12) + "-" + digits(r, 13) + "-" + rand(r, 24),
            lambda r: (
                "xo"
                + "xp-"
                + digits(r, 12)
                + "-"
                + digits(r, 12)
                + "-"
                + digits(r, 12)
                + "-"
                + rand(r, 32, HEX)
            ),
        ],
        [lambda r: "xo" + "xb-123-456-xxxxxxxx"],
    ),
    "slack-app-token": (
        [
            lambda r: (
                "xa"
                + "pp-1-A"
                + rand(r, 10, UPPER_DIGITS)
                + "-"
                + digits(r, 13)
                + "-"
                + rand(r, 64, HEX)
            )
        ],
        [lambda r: "xa" + "pp-1-A" + rand(r, 10, UPPER_DIGITS) + "-" + digits(r, 13)],
    ),
    "slack-webhook": (
        [
            lambda r: (
                "https://hooks.slack.com/services/T"
                + rand(r, 8, UPPER_DIGITS)
                + "/B"
                + rand(r, 8, UPPER_DIGITS)
                + "/"
                + rand(r, 24)
            )
        ],
        [lambda r: "https://hooks.slack.com/services/T00000000/B00000000/" + "X" * 24],
    ),
    "discord-bot-token": (
        [discord_token],
        [lambda r: "N" + rand(r, 23, B64U) + "." + rand(r, 6, B64U) + "." + rand(r, 38, B64U)],
    ),
    "discord-webhook": (
        [lambda r: "https://discord.com/api/webhooks/" + digits(r, 18) + "/" + rand(r, 68, B64U)],
        [lambda r: "https://discord.com/api/webhooks/" + digits(r, 18) + "/" + rand(r, 20, B64U)],
    ),
    "telegram-bot-token": (
        [lambda r: digits(r, 10) + ":AA" + rand(r, 33, B64U)],
        [lambda r: digits(r, 10) + ":BB" + rand(r, 33, B64U)],
    ),
    "twilio-api-key": ([lambda r: "SK" + rand(r, 32, HEX)], [lambda r: "SK" + "0" * 32]),
    "sendgrid-api-key": (
        [lambda r: "SG." + rand(r, 22, B64U) + "." + rand(r, 43, B64U)],
        [lambda r: "SG." + rand(r, 22, B64U) + "." + rand(r, 20, B64U)],
    ),
    "mailgun-api-key": (
        [
            lambda r: "MAILGUN_API_KEY=" + "key-" + rand(r, 32, HEX),
            lambda r: "https://api:" + "key-" + rand(r, 32, HEX) + "@api.eu",
        ],
        [lambda r: "cache-" + "key-" + rand(r, 32, HEX)],
    ),
    "mailchimp-api-key": (
        [lambda r: rand(r, 32, HEX) + "-us14"],
        [lambda r: rand(r, 32, HEX) + "-eu14"],
    ),
    "stripe-secret-key": (
        [lambda r: "sk_" + "live_" + rand(r, 99), lambda r: "sk_" + "test_" + rand(r, 24)],
        [lambda r: "sk_" + "live_" + "x" * 30, lambda r: "ask_" + "test_" + rand(r, 24)],
    ),
    "stripe-restricted-key": (
        [lambda r: "rk_" + "live_" + rand(r, 99), lambda r: "rk_" + "test_" + rand(r, 24)],
        [lambda r: "rk_" + "live_" + "x" * 30, lambda r: "work_" + "test_" + rand(r, 24)],
    ),
    "stripe-webhook-secret": (
        [lambda r: "whsec_" + rand(r, 32)],
        [lambda r: "whsec_" + rand(r, 10)],
    ),
    "square-access-token": (
        [lambda r: "EAAA" + rand(r, 60, B64U), lambda r: "sq0" + "atp-" + rand(r, 22, B64U)],
        [lambda r: "EAAA" + "A" * 60, lambda r: "AAAAACt/EAAA" + rand(r, 60, B64U)],
    ),
    "square-oauth-secret": (
        [lambda r: "sq0" + "csp-" + rand(r, 43, B64U)],
        [lambda r: "sq0" + "csp-" + rand(r, 20, B64U)],
    ),
    "shopify-token": (
        [lambda r: "shp" + "at_" + rand(r, 32, HEX), lambda r: "shp" + "ss_" + rand(r, 32, HEX)],
        [lambda r: "shp" + "at_" + rand(r, 16, HEX)],
    ),
    "databricks-token": (
        [lambda r: "dapi" + rand(r, 32, HEX)],
        [lambda r: "dapi" + rand(r, 20, HEX)],
    ),
    "linear-api-key": (
        [lambda r: "lin_" + "api_" + rand(r, 40)],
        [lambda r: "lin_" + "api_" + rand(r, 20)],
    ),
    "notion-token": (
        [lambda r: "secret_" + rand(r, 43), lambda r: "ntn_" + rand(r, 46)],
        [lambda r: "secret_" + rand(r, 43, string.ascii_lowercase)],
    ),
    "postman-api-key": (
        [lambda r: "PMAK-" + rand(r, 24, HEX) + "-" + rand(r, 34, HEX)],
        [lambda r: "PMAK-" + rand(r, 24, HEX)],
    ),
    "grafana-token": (
        [
            lambda r: "glc_" + rand(r, 80, B64) + "==",
            lambda r: "glsa_" + rand(r, 32) + "_" + rand(r, 8, HEX),
        ],
        [lambda r: "glc_" + rand(r, 10)],
    ),
    "new-relic-key": (
        [lambda r: "NRAK-" + rand(r, 27, UPPER_DIGITS)],
        [lambda r: "NRAK-" + rand(r, 10, UPPER_DIGITS)],
    ),
    "dynatrace-token": (
        [lambda r: "dt0c01." + rand(r, 24, UPPER_DIGITS) + "." + rand(r, 64, UPPER_DIGITS)],
        [lambda r: "dt0c01." + rand(r, 24, UPPER_DIGITS) + "." + rand(r, 10, UPPER_DIGITS)],
    ),
    "sentry-token": (
        [lambda r: "sntrys_" + "eyJ" + rand(r, 150, B64U), lambda r: "sntryu_" + rand(r, 64, HEX)],
        [lambda r: "sntryu_" + rand(r, 10, HEX)],
    ),
    "airtable-pat": (
        [lambda r: "pat" + rand(r, 14) + "." + rand(r, 64, HEX)],
        [lambda r: "pat" + rand(r, 14) + "." + rand(r, 20, HEX)],
    ),
    "planetscale-token": (
        [lambda r: "pscale_" + "tkn_" + rand(r, 43, B64U)],
        [lambda r: "pscale_" + "tkn_" + rand(r, 10, B64U)],
    ),
    "supabase-token": (
        [lambda r: "sbp_" + rand(r, 40, HEX), lambda r: "sb_" + "secret_" + rand(r, 40, B64U)],
        [lambda r: "sbp_" + rand(r, 20, HEX)],
    ),
    "mapbox-secret-token": (
        [lambda r: "sk." + "eyJ" + rand(r, 60, B64U) + "." + rand(r, 22, B64U)],
        [lambda r: "pk." + "eyJ" + rand(r, 60, B64U) + "." + rand(r, 22, B64U)],
    ),
    "figma-token": (
        [lambda r: "figd_" + rand(r, 40, B64U)],
        [lambda r: "figd_" + rand(r, 10, B64U)],
    ),
    "contentful-token": (
        [lambda r: "CFPAT-" + rand(r, 43, B64U)],
        [lambda r: "CFPAT-" + rand(r, 10, B64U)],
    ),
    "netlify-token": ([lambda r: "nfp_" + rand(r, 36)], [lambda r: "nfp_" + rand(r, 10)]),
    "buildkite-token": (
        [lambda r: "bkua_" + rand(r, 40, HEX)],
        [lambda r: "bkua_" + rand(r, 20, HEX)],
    ),
    "pem-private-key": (
        [
            lambda r: pem(r),
            lambda r: pem(r, ""),
            lambda r: pem(r, "EC "),
            lambda r: json.dumps({"private_key": pem(r, "")}),  # JSON-escaped newlines
            lambda r: pem(r, "ENCRYPTED "),
        ],
        [
            lambda r: 'MARKER = b"-----BEGIN ' + 'PRIVATE KEY-----"\n',
            lambda r: "-----BEGIN CERTIFICATE-----\n" + base64.b64encode(r.randbytes(60)).decode(),
        ],
    ),
    "openssh-private-key": (
        [
            lambda r: (
                "-----BEGIN OPENSSH " + "PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE" + rand(r, 60, B64)
            )
        ],
        [lambda r: "-----BEGIN OPENSSH " + "PRIVATE KEY-----\n-----END OPENSSH PRIVATE KEY-----"],
    ),
    "putty-private-key": (
        [lambda r: "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: x\n"],
        [lambda r: 'if line.startswith("PuTTY-User-Key-File-3: "):'],
    ),
    "age-secret-key": (
        [lambda r: "AGE-SECRET-" + "KEY-1" + rand(r, 58, BECH32)],
        [lambda r: "AGE-SECRET-" + "KEY-1" + rand(r, 20, BECH32)],
    ),
    "jwt": (
        [jwt, lambda r: jwt(r).rsplit(".", 1)[0] + "."],
        [
            lambda r: (
                "eyJ" + rand(r, 20, B64U) + ".eyJ" + rand(r, 20, B64U) + "." + rand(r, 43, B64U)
            ),
            lambda r: b64url(b'{"typ":"JWT"}') + "." + b64url(b'{"a":1}') + "." + rand(r, 43, B64U),
        ],
    ),
    "credit-card": (
        [
            lambda r: "card=" + card(r),
            lambda r: '{"pan": "' + card(r, "51") + '"}',
            lambda r: grouped(card(r), " "),
            lambda r: grouped(card(r, "4"), "-"),
            lambda r: "amex " + card(r, "37", 15),
        ],
        [
            lambda r: "n = 0." + card(r),
            lambda r: "card=" + (lambda n: n[:-1] + str((int(n[-1]) + 1) % 10))(card(r)),
            lambda r: "card=4111111111111111",
            lambda r: "seed = default_rng(" + card(r) + ")",
            lambda r: "id=" + card(r, "4", 19),
        ],
    ),
    "iban": (
        [
            lambda r: "IBAN " + iban(r),
            lambda r: "to " + iban(r, "GB", 22),
            lambda r: "FR " + iban(r, "FR", 27),
        ],
        [
            lambda r: "IBAN " + (lambda n: n[:2] + "00" + n[4:])(iban(r)),
            lambda r: "IBAN GB82WEST12345698765432",
            lambda r: "IBAN " + iban(r, "DE", 23),
        ],
    ),
}

EXAMPLES.update(MORE_EXAMPLES)
ENGINE_NAMES = available_engines()


@pytest.fixture(scope="module", params=ENGINE_NAMES)
def scanner(request: pytest.FixtureRequest) -> Scanner:
    return Scanner(engine=request.param)


@pytest.fixture(scope="module")
def best() -> Scanner:
    return Scanner()


def names(findings: list[Finding]) -> set[str]:
    return {finding.pattern for finding in findings}


# --- the pattern table --------------------------------------------------------------------


def test_pattern_table_is_large_and_covered() -> None:
    assert len(PATTERNS) >= 40
    assert len(set(PATTERN_NAMES)) == len(PATTERN_NAMES)
    assert set(EXAMPLES) == set(PATTERN_NAMES)
    for name, (true, false) in EXAMPLES.items():
        assert true and false, name


def test_engines_available_here() -> None:
    assert ENGINE_NAMES[-1] == "re"
    assert Scanner().engine == ENGINE_NAMES[0]


def test_every_pattern_is_bounded() -> None:
    for spec in PATTERNS:
        low, high = dlp._regex_width(spec.regex.encode())
        assert 4 <= low <= high <= MAX_PATTERN_WIDTH, spec.name
    assert Scanner().overlap <= dlp.STREAM_WINDOW


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_true_examples_found(scanner: Scanner, name: str) -> None:
    for seed, make in enumerate(EXAMPLES[name][0]):
        example = make(random.Random(seed))
        data = ("text before\n" + example + "\nafter").encode()
        found = scanner.scan(data, "body")
        hits = [finding for finding in found if finding.pattern == name]
        assert hits, f"{name} example {seed} missed by {scanner.engine}"
        assert all(finding.location == "body" for finding in found)
        start = data.index(b"\n") + 1
        assert any(start <= hit.start and hit.end <= start + len(example) for hit in hits)


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_near_misses_pass(scanner: Scanner, name: str) -> None:
    for seed, make in enumerate(EXAMPLES[name][1]):
        example = make(random.Random(seed))
        found = scanner.scan(("text before\n" + example + "\nafter").encode(), "body")
        assert not found, f"{name} near miss {seed} flagged by {scanner.engine}: {found}"


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_random_tokens_are_never_rejected(best: Scanner, name: str) -> None:
    """Validators must not reject real-looking tokens by bad luck (50 draws each)."""
    for make in EXAMPLES[name][0]:
        for seed in range(100, 150):
            example = make(random.Random(seed))
            assert name in names(best.scan(example.encode(), "x")), (name, seed)


def test_engine_filters_cover_every_match() -> None:
    """Each rule's engine filter hits within filter_width after the start of a real match."""
    for rule in dlp.builtin_rules():
        assert dlp._regex_width(rule.filter)[1] == rule.filter_width <= rule.width + 1, rule.name
        for make in EXAMPLES[rule.name][0]:
            data = b"x " + make(random.Random(7)).encode() + b" y"
            full = rule.compiled().search(data)
            assert full is not None, rule.name
            ends = [hit.end() for hit in dlp.re.finditer(rule.filter, data)]
            assert any(end - rule.filter_width <= full.start() <= end for end in ends), rule.name


def test_prefix_filter_shapes() -> None:
    assert prefix_filter(rb"ghp_[A-Za-z0-9]{36}") == rb"ghp_[A-Za-z0-9]{16}"
    assert prefix_filter(rb"\bSK[0-9a-f]{16}\b") == rb"\bSK[0-9a-f]{16}\b"
    assert prefix_filter(rb"a[bc]{20,90}\b|xy(?:z|w){3}") == rb"a[bc]{16}|xy(?:z|w){3}"
    assert prefix_filter(rb"abcd(?:e)?x*") == rb"abcd"
    assert prefix_filter(rb"\b[2-6]\d{12}\b") == rb"\b[2-6]\d{12}\b"
    # Classes holding brackets and parentheses, inside groups: no group ends in a class.
    assert prefix_filter(rb"k(?:[()]|[]x])[a-z]{30}") == rb"k(?:[()]|[]x])[a-z]{16}"
    assert prefix_filter(rb"(?:[^])]\]){2}(z)[0-9]+") == rb"(?:[^])]\]){2}(z)[0-9]{1}"


def test_prefix_filter_reads_each_class_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group of many classes is read once, not again from each class on (which made the
    built-in rules take ~140 ms per bundle to prepare)."""
    from claude_bottle.policy import dlp_engine

    reads: list[int] = []
    real = dlp_engine._class_end

    def counted(regex: bytes, index: int) -> int:
        reads.append(index)
        return real(regex, index)

    monkeypatch.setattr(dlp_engine, "_class_end", counted)
    regex = b"(?:" + b"[ab]" * 500 + b")[0-9]{40}"
    assert prefix_filter(regex) == b"(?:" + b"[ab]" * 500 + b")[0-9]{16}"
    assert len(reads) == len(set(reads)) == 501, len(reads)


def test_findings_never_carry_the_secret(best: Scanner) -> None:
    token = "gh" + "p_" + rand(random.Random(1), 36)
    found = best.scan(f"Authorization: token {token}".encode(), "header:authorization")
    assert found == [Finding("github-pat", "header:authorization", 21, 61)]
    assert token not in repr(found) and token not in str(found[0])


def test_all_engines_agree_on_a_mixed_body() -> None:
    rnd = random.Random(11)
    parts: list[str] = []
    for name in PATTERN_NAMES:
        parts.append(EXAMPLES[name][0][0](rnd))
        parts.append(base64.b64encode(rnd.randbytes(300)).decode())
        parts.append(str(uuid.UUID(int=rnd.getrandbits(128))))
    data = "\n".join(parts).encode()
    results = {engine: Scanner(engine=engine).scan(data, "b") for engine in ENGINE_NAMES}
    reference = results[ENGINE_NAMES[0]]
    assert names(reference) == set(PATTERN_NAMES)
    for engine, found in results.items():
        assert found == reference, engine


# --- validators ---------------------------------------------------------------------------


def test_luhn() -> None:
    assert luhn_ok("79927398713")
    assert not luhn_ok("79927398710")
    assert luhn_ok("0")
    assert not luhn_ok("")
    assert not luhn_ok("4111-1111")
    assert not luhn_ok("٤١")  # non-ASCII digits


def test_card_brand_and_card_ok() -> None:
    rnd = random.Random(3)
    assert card_brand("4" + "1" * 15) == "visa"
    assert card_brand("4" + "1" * 12) is None  # 13-digit Visa is retired
    assert card_brand("5500000000000004") == "mastercard"
    assert card_brand("2221000000000009") == "mastercard"
    assert card_brand("378282246310005") == "amex"
    assert card_brand("6011000000000004") == "discover"
    assert card_brand("3530111333300000") == "jcb"
    assert card_brand("1234567890123456") is None
    visa = card(rnd)
    assert card_ok(visa)
    assert card_ok(" ".join(visa[i : i + 4] for i in range(0, 16, 4)))
    assert not card_ok(visa[:4] + " " + visa[4:8] + "-" + visa[8:])  # mixed separators
    assert not card_ok(visa[:3] + " " + visa[3:])  # bad grouping
    amex = card(rnd, "34", 15)
    assert card_ok(f"{amex[:4]} {amex[4:10]} {amex[10:]}")
    assert not card_ok("4242424242424242")  # published test card
    assert not card_ok("4000000000000002")  # too few distinct digits
    assert not card_ok(luhn_complete("422998980000000"))  # run of zeros
    assert not card_ok(card(rnd, "4", 19))  # 19 bare digits: a 64-bit integer
    long_card = card(rnd, "4", 19)
    assert card_ok(" ".join(long_card[i : i + 4] for i in range(0, 19, 4)))


def test_iban() -> None:
    assert iban_checksum("GB82WEST12345698765432") == 1
    assert iban_checksum("DE89370400440532013000") == 1
    assert not iban_ok("GB82WEST12345698765432")  # the published example
    rnd = random.Random(5)
    good = iban(rnd)
    assert iban_ok(good)
    assert iban_ok(" ".join(good[i : i + 4] for i in range(0, len(good), 4)))
    assert not iban_ok(good[:3] + " " + good[3:])
    assert not iban_ok(good[:2] + "00" + good[4:])
    assert not iban_ok("XX" + good[2:])  # unknown country
    assert not iban_ok(good + "1")  # wrong length for DE
    assert not iban_ok(good.lower())


def test_jwt_validator() -> None:
    rnd = random.Random(9)
    token = jwt(rnd).encode()
    assert jwt_ok(token)
    assert jwt_ok(token.rsplit(b".", 1)[0])  # cut before the signature
    assert jwt_ok(token[:40] if b"." in token[:40] else token)
    assert not jwt_ok(b64url(b'{"typ":"JWT"}').encode() + b"." + token.split(b".")[1])
    assert not jwt_ok(b"eyJub3Rqc29u.eyJhIjoxfQ.sig")
    assert not jwt_ok(b64url(b'{"alg":"HS256"}').encode() + b"." + b64url(b"[1,2]").encode())
    assert not jwt_ok(b"a.b.c.d")


def test_discord_and_randomness_validators() -> None:
    rnd = random.Random(2)
    assert discord_token_ok(discord_token(rnd).encode())
    assert not discord_token_ok(b"N" + rand(rnd, 23, B64U).encode() + b".abcdef.x")
    assert looks_random(rand(rnd, 36).encode(), 14)
    assert not looks_random(b"x" * 36, 2)
    assert not looks_random(b"ab" * 18, 2)  # one symbol fills half of it
    assert not looks_random(b"abcdefgh", 14)
    assert shannon_entropy(b"") == 0.0
    assert shannon_entropy(b"aaaa") == 0.0
    assert shannon_entropy(b"ab") == pytest.approx(1.0)
    assert shannon_entropy(bytes(range(256))) == pytest.approx(8.0)


# --- the user's own secrets ---------------------------------------------------------------

SECRET = "p@ss/w0rd+Key=" + "".join(random.Random(42).choice(B62) for _ in range(12))


@pytest.fixture(scope="module", params=ENGINE_NAMES)
def secret_scanner(request: pytest.FixtureRequest) -> Scanner:
    return Scanner(
        secrets={"MY_API_TOKEN": SECRET, "SHORT_TOKEN": "abc1234", "DULL_SECRET": "aaaabbbbaaaa"},
        engine=request.param,
    )


def _secret_hits(scanner: Scanner, data: bytes) -> set[str]:
    return {name for name in names(scanner.scan(data, "b")) if name.startswith("secret:")}


def test_secret_labels_skip_short_and_dull_values(secret_scanner: Scanner) -> None:
    assert secret_scanner.secret_labels == ("MY_API_TOKEN",)
    assert not _secret_hits(secret_scanner, b"xx abc1234 aaaabbbbaaaa yy")


def test_secret_verbatim_and_encoded(secret_scanner: Scanner) -> None:
    raw = SECRET.encode()
    forms = {
        "raw": raw,
        "hex": raw.hex().encode(),
        "hex-upper": raw.hex().upper().encode(),
        "url": quote(SECRET, safe="").encode(),
        "url-plus": quote_plus(SECRET).encode(),
        "url-all": "".join(f"%{byte:02x}" for byte in raw).encode(),
        "json": json.dumps({"v": SECRET}).replace("/", "\\/").encode(),
    }
    for form, data in forms.items():
        hits = _secret_hits(secret_scanner, b"q=" + data + b"&x=1")
        assert any(hit.startswith("secret:MY_API_TOKEN:") for hit in hits), form


@pytest.mark.parametrize("prefix", [0, 1, 2, 3, 4, 5])
def test_secret_in_base64_at_every_alignment(secret_scanner: Scanner, prefix: int) -> None:
    rnd = random.Random(prefix)
    blob = rnd.randbytes(prefix) + SECRET.encode() + rnd.randbytes(7)
    std = base64.b64encode(blob)
    url = base64.urlsafe_b64encode(blob)
    assert "secret:MY_API_TOKEN:base64" in _secret_hits(secret_scanner, b"data:" + std)
    assert _secret_hits(secret_scanner, b"t=" + url)
    b32 = base64.b32encode(blob).lower()
    assert "secret:MY_API_TOKEN:base32" in _secret_hits(secret_scanner, b32)


def test_secret_forms_cover_alignments() -> None:
    forms = secret_forms(b"0123456789abcdef")
    kinds = [encoding for encoding, _, _ in forms]
    assert kinds.count("base64") == 3
    assert kinds.count("base32") == 5
    assert all(len(literal) >= dlp.MIN_SECRET_LENGTH for _, literal, _ in forms)
    assert len({(literal, caseless) for _, literal, caseless in forms}) == len(forms)


def test_secret_never_shown(secret_scanner: Scanner) -> None:
    shown = repr(secret_scanner) + repr(vars(secret_scanner))
    for _, literal, _ in secret_forms(SECRET.encode()):
        assert literal.decode() not in shown
    assert SECRET not in shown and "MY_API_TOKEN" not in repr(secret_scanner)
    found = secret_scanner.scan(b"x" + SECRET.encode(), "b")
    assert found == [Finding("secret:MY_API_TOKEN:raw", "b", 1, 1 + len(SECRET))]


def test_long_secret_fingerprinted_by_prefix() -> None:
    value = rand(random.Random(8), 1000)
    scanner = Scanner(secrets={"BIG_KEY": value}, engine=ENGINE_NAMES[0])
    assert scanner.max_match <= MAX_PATTERN_WIDTH
    assert names(scanner.scan(value[:300].encode(), "b")) == {"secret:BIG_KEY:raw"}


def test_secret_label_is_sanitised() -> None:
    scanner = Scanner(secrets={"weird label\n": "Zq8#kLm2!xYw9"}, engine=ENGINE_NAMES[-1])
    assert scanner.secret_labels == ("weird_label_",)


# --- extra patterns and engine selection --------------------------------------------------


def test_extra_pattern() -> None:
    for engine in ENGINE_NAMES:
        scanner = Scanner([("acme-key", r"acme_[a-z0-9]{12}")], engine=engine)
        assert "acme-key" in scanner.pattern_names
        assert names(scanner.scan(b"k=acme_abcdef123456", "u")) == {"acme-key"}


@pytest.mark.parametrize(
    ("name", "regex", "problem"),
    [
        ("Bad Name", r"abcd", "not valid"),
        ("github-pat", r"abcd", "already used"),
        ("x-key", r"(abc", "not a valid regex"),
        ("x-key", r"abc[a-z]+", "bound every repetition"),
        ("x-key", r"ab?", "fewer than"),
    ],
)
def test_bad_extra_patterns(name: str, regex: str, problem: str) -> None:
    with pytest.raises(DlpPatternError, match=problem):
        Scanner([(name, regex)], engine="re")


def test_extra_pattern_the_engine_cannot_compile() -> None:
    for engine in ENGINE_NAMES[:-1]:
        with pytest.raises(DlpPatternError, match="lookbehind-key"):
            Scanner([("lookbehind-key", r"(?<=k=)[a-z]{8}")], engine=engine)


def test_unknown_engine() -> None:
    with pytest.raises(ValueError, match="unknown DLP engine"):
        Scanner(engine="grep")


# --- streaming ----------------------------------------------------------------------------


def _stream(scanner: Scanner, data: bytes, cuts: list[int]) -> list[Finding]:
    stream = scanner.stream("body")
    found: list[Finding] = []
    previous = 0
    for cut in [*cuts, len(data)]:
        found.extend(stream.feed(data[previous:cut]))
        previous = cut
    found.extend(stream.finish())
    return found


def test_secret_split_at_every_position_found_once(secret_scanner: Scanner) -> None:
    token = "gh" + "p_" + rand(random.Random(4), 36)
    head = b"POST body " + b"x" * 50 + b" "
    data = head + token.encode() + b" middle " + SECRET.encode() + b" tail"
    expected = secret_scanner.scan(data, "body")
    assert names(expected) == {"github-pat", "secret:MY_API_TOKEN:raw"}
    for cut in range(len(head) - 2, len(data) + 1):
        assert _stream(secret_scanner, data, [cut]) == expected, cut


def test_stream_matches_one_shot_scan_for_any_chunking(best: Scanner) -> None:
    rnd = random.Random(6)
    parts = [
        EXAMPLES[name][0][0](rnd) + " " + rand(rnd, rnd.randint(0, 3000), B64)
        for name in PATTERN_NAMES
    ]
    data = "\n".join(parts).encode()
    expected = best.scan(data, "body")
    assert len(expected) >= len(PATTERN_NAMES)
    for _ in range(5):
        cuts = sorted(rnd.sample(range(1, len(data)), 40))
        assert _stream(best, data, cuts) == expected
    assert _stream(best, data[:3000], list(range(1, 3000, 7))) == best.scan(data[:3000], "body")


def test_stream_bytewise(best: Scanner) -> None:
    data = b"k=" + ("sk-ant-" + "api03-" + rand(random.Random(2), 93, B64U) + "AA").encode() + b"&"
    assert _stream(best, data, list(range(1, len(data)))) == best.scan(data, "body")


def test_stream_finish_is_final(best: Scanner) -> None:
    stream = best.stream("body")
    stream.feed(b"abc")
    assert stream.finish() == []
    assert stream.finish() == []
    with pytest.raises(RuntimeError):
        stream.feed(b"more")


# --- body decoding ------------------------------------------------------------------------


def _decode_all(encoding: str, body: bytes, max_output: int = 64 << 20, step: int = 997) -> bytes:
    decoder = decoded_stream(encoding, max_output)
    out = [decoder.feed(body[i : i + step]) for i in range(0, len(body), step)]
    out.append(decoder.finish())
    return b"".join(out)


def test_gzip_body_with_secret_found(best: Scanner) -> None:
    token = "gh" + "p_" + rand(random.Random(12), 36)
    plain = b"{" + b'"pad": "' + b"y" * 5000 + b'", "token": "' + token.encode() + b'"}'
    body = gzip.compress(plain)
    assert token.encode() not in body
    decoder = decoded_stream("gzip", 1 << 20)
    stream = best.stream("body")
    found: list[Finding] = []
    for i in range(0, len(body), 64):
        found.extend(stream.feed(decoder.feed(body[i : i + 64])))
    found.extend(stream.feed(decoder.finish()))
    found.extend(stream.finish())
    assert names(found) == {"github-pat"}
    assert found[0].start == plain.index(token.encode())


def test_decoders_round_trip() -> None:
    plain = (b"hello world " * 5000) + random.Random(1).randbytes(3000)
    assert _decode_all("gzip", gzip.compress(plain)) == plain
    assert _decode_all("x-gzip", gzip.compress(plain)) == plain
    assert _decode_all("deflate", zlib.compress(plain)) == plain
    raw = zlib.compressobj(wbits=-15)
    assert _decode_all("deflate", raw.compress(plain) + raw.flush()) == plain
    two_members = gzip.compress(plain[:100]) + gzip.compress(plain[100:])
    assert _decode_all("gzip", two_members) == plain
    assert _decode_all("deflate, gzip", gzip.compress(zlib.compress(plain))) == plain
    assert _decode_all("identity", plain) == plain
    assert _decode_all("", plain) == plain
    assert _decode_all("gzip", b"") == b""


def test_brotli_or_refused() -> None:
    plain = b"brotli body " * 1000
    try:
        import brotli
    except ImportError:
        with pytest.raises(UnsupportedEncoding, match="brotli"):
            decoded_stream("br", 1 << 20)
        return
    assert _decode_all("br", brotli.compress(plain)) == plain
    with pytest.raises(CorruptBody):
        _decode_all("br", brotli.compress(plain)[:-5])
    bomb = brotli.compress(b"\0" * (50 << 20), quality=5)
    started = time.perf_counter()
    with pytest.raises(DecompressionBomb):
        _decode_all("br", bomb, step=len(bomb))
    assert time.perf_counter() - started < 5


def test_unknown_encoding_refused() -> None:
    for encoding in ("zstd", "compress", "gzip, snappy", "évil"):
        with pytest.raises(UnsupportedEncoding, match="not supported"):
            decoded_stream(encoding, 1 << 20)


def test_corrupt_and_truncated_bodies() -> None:
    body = gzip.compress(b"payload " * 1000)
    with pytest.raises(CorruptBody, match="truncated"):
        _decode_all("gzip", body[: len(body) // 2])
    with pytest.raises(CorruptBody):
        _decode_all("gzip", b"\x1f\x8b" + b"\xff" * 50)
    with pytest.raises(CorruptBody, match="after its end"):
        _decode_all("deflate", zlib.compress(b"x" * 100) + b"trailing")
    with pytest.raises(CorruptBody):
        _decode_all("deflate", b"\x01")


def test_gzip_bomb_refused_quickly() -> None:
    bomb = gzip.compress(b"\0" * (50 << 20))
    assert len(bomb) < 100_000
    started = time.perf_counter()
    with pytest.raises(DecompressionBomb, match="100:1"):
        _decode_all("gzip", bomb, max_output=1 << 30, step=len(bomb))
    assert time.perf_counter() - started < 2


def test_output_cap() -> None:
    plain = random.Random(3).randbytes(3 << 20)  # incompressible: the ratio cap never trips
    with pytest.raises(DecompressionBomb, match="more than 1048576 bytes"):
        _decode_all("gzip", gzip.compress(plain), max_output=1 << 20)


# --- host labels --------------------------------------------------------------------------


def test_encoded_labels_flagged() -> None:
    rnd = random.Random(13)
    b32 = base64.b32encode(rnd.randbytes(20)).decode().rstrip("=").lower()
    assert names(scan_host_labels(b32 + ".files.example.com")) == {"dns-exfil-base32"}
    hexed = rnd.randbytes(16).hex()
    assert names(scan_host_labels(hexed + ".cdn.example.com")) == {"dns-exfil-hex"}
    mixed = b64url(rnd.randbytes(24))
    assert "dns-exfil-base64" in names(host_label_findings(mixed + ".example.com"))
    label_uuid = str(uuid.UUID(int=rnd.getrandbits(128)))
    assert names(host_label_findings(label_uuid + ".example.com")) == {"dns-exfil-hex"}
    finding = scan_host_labels("a." + b32 + ".example.com")[0]
    assert (finding.location, finding.start, finding.end) == ("host", 2, 2 + len(b32))


def test_ordinary_labels_pass() -> None:
    hosts = [
        "www.example.com",
        "api.github.com",
        "cdn-123.example.net",
        "s3.us-east-1.amazonaws.com",
        "a1b2c3d4e5f6.preview.example.com",  # a 12-digit git SHA prefix
        "ip-10-0-1-23.ec2.internal",
        "my-very-long-service-name-for-production.example.com",
        "thequickbrownfoxjumpsoverthelazydog.example.org",
        "objects.githubusercontent.com",
        "xn--bcher-kva.example",
        "WWW.Example.COM",
        "d111111abcdef8.cloudfront.net",
    ]
    for host in hosts:
        assert scan_host_labels(host) == [], host


def test_label_calibration() -> None:
    """Random data of 16+ bytes per label is caught; the thresholds hold over 300 draws."""
    rnd = random.Random(21)
    for _ in range(300):
        raw = rnd.randbytes(16)
        assert host_label_findings(raw.hex() + ".x.com")
        assert host_label_findings(raw.hex()[:24] + ".x.com")
    caught = sum(
        bool(host_label_findings(base64.b32encode(rnd.randbytes(16)).decode().rstrip("=").lower()))
        for _ in range(300)
    )
    assert caught >= 280


def test_scanner_scan_host_checks_secrets() -> None:
    scanner = Scanner(secrets={"DB_PASSWORD": "Tr0ub4dor&3-horse"}, engine=ENGINE_NAMES[0])
    label = base64.b32encode(b"Tr0ub4dor&3-horse").decode().rstrip("=").lower()
    found = names(scanner.scan_host(label + ".evil.example.com"))
    assert "secret:DB_PASSWORD:base32" in found
    assert scanner.scan_host("www.example.com") == []


class MemoryCache:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.stores = 0

    def load(self, key: str) -> bytes | None:
        return self.blobs.get(key)

    def store(self, key: str, blob: bytes) -> None:
        self.stores += 1
        self.blobs[key] = blob


def test_hyperscan_reuses_its_cached_patterns_but_never_stores_secrets() -> None:
    if "hyperscan" not in dlp.available_engines():
        pytest.skip("hyperscan is not installed")
    value = "Zq8wY3" + uuid.uuid4().hex  # the user's own secret
    cache = MemoryCache()
    first = Scanner(secrets={"MY_TOKEN": value}, engine="hyperscan", cache=cache)
    second = Scanner(secrets={"MY_TOKEN": value}, engine="hyperscan", cache=cache)
    assert (cache.stores, len(cache.blobs)) == (1, 1)  # compiled once, then loaded
    token = "gh" + "p_" + rand(random.Random(7), 36)
    body = f"key={token} and {value} and {base64.b64encode(value.encode()).decode()}"
    for scanner in (first, second):
        assert {f.pattern for f in scanner.scan(body.encode(), "body")} >= {
            "github-pat",
            "secret:MY_TOKEN:raw",
            "secret:MY_TOKEN:base64",
        }
    (blob,) = cache.blobs.values()
    for _, literal, _ in dlp.secret_forms(value.encode()):
        assert literal not in blob


def test_hyperscan_recompiles_over_a_damaged_cache_entry() -> None:
    if "hyperscan" not in dlp.available_engines():
        pytest.skip("hyperscan is not installed")
    cache = MemoryCache()
    Scanner(engine="hyperscan", cache=cache)
    (key,) = cache.blobs
    cache.blobs[key] = b"not a database"
    scanner = Scanner(engine="hyperscan", cache=cache)
    assert cache.stores == 2
    token = "gh" + "p_" + rand(random.Random(7), 36)
    assert [f.pattern for f in scanner.scan(f"token {token}".encode(), "body")] == ["github-pat"]
