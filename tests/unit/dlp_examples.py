"""True examples and near misses of the provider and keyword DLP rules (issue 25).

`test_dlp` merges these into its table, so every rule is checked by the same
tests (found with every engine, near misses pass, never rejected by bad luck,
the engine filter covers every match). Tokens are random; the shapes follow
each provider's documented format.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable

B62 = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
UPPER_DIGITS = string.ascii_uppercase + string.digits
LOWER_DIGITS = string.ascii_lowercase + string.digits

Maker = Callable[[random.Random], str]


def rand(rnd: random.Random, size: int, alphabet: str = B62) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(size))


def _jwt(rnd: random.Random) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    header = part({"alg": "HS256", "typ": "JWT"})
    return header + "." + part({"sub": rand(rnd, 12)}) + "." + rand(rnd, 43)


def _k8s(data_first: bool) -> Maker:
    def make(rnd: random.Random) -> str:
        value = base64.b64encode(rand(rnd, 18).encode()).decode()
        kind = "kind: Secret\nmetadata:\n  name: db\n"
        data = f"data:\n  password: {value}\n"
        return "apiVersion: v1\n" + (data + kind if data_first else kind + data)

    return make


def mixed(rnd: random.Random, size: int) -> str:
    """A random base62 value with a digit in it (the generic rule's threshold for a value
    without digits is stricter; see dlp_keywords._mixes_classes)."""
    return rand(rnd, size - 1) + rnd.choice(string.digits)


def _json_escaped(inner: str) -> str:
    """`inner` as it travels inside a JSON string (quotes escaped, newlines as \\n)."""
    return json.dumps({"content": inner})


MORE_EXAMPLES: dict[str, tuple[list[Maker], list[Maker]]] = {
    "onepassword-secret-key": (
        [
            lambda r: "A3-" + "-".join(rand(r, n, UPPER_DIGITS) for n in (6, 11, 5, 5, 5)),
            lambda r: "A3-" + "-".join(rand(r, n, UPPER_DIGITS) for n in (6, 6, 5, 5, 5, 5)),
        ],
        [lambda r: "A3-AAAAAA-AAAAAAAAAAA-AAAAA-AAAAA-AAAAA"],
    ),
    "adafruit-io-key": (
        [lambda r: "aio_" + rand(r, 28)],
        [lambda r: "aio_" + "x" * 28],
    ),
    "artifactory-api-key": (
        [lambda r: "AKCp" + rand(r, 69)],
        [lambda r: "AKCp" + rand(r, 20)],
    ),
    "artifactory-reference-token": (
        [lambda r: base64.b64encode(b"reftkn:01:" + rand(r, 38).encode()).decode()[:64]],
        [lambda r: "cmVmd" + "A" * 59],
    ),
    "aws-bedrock-api-key": (
        [
            lambda r: "ABSK" + base64.b64encode(b"BedrockAPIKey-" + r.randbytes(90)).decode(),
            lambda r: "bedrock-api-key-YmVkcm9jay5hbWF6b25hd3MuY29t" + rand(r, 200),
        ],
        [lambda r: "ABSK" + rand(r, 40)],
    ),
    "gitlab-session-cookie": (
        [lambda r: "Cookie: _gitlab_session=" + rand(r, 32, LOWER_DIGITS)],
        [lambda r: "_gitlab_session=" + "0" * 32],
    ),
    "mailgun-public-key": (
        [lambda r: "MAILGUN_PUBLIC_KEY=pubkey-" + rand(r, 32, HEX)],
        [lambda r: "pubkey-" + rand(r, 20, HEX)],
    ),
    "new-relic-insert-key": (
        [lambda r: "NRII-" + rand(r, 32, B62 + "_-")],
        [lambda r: "NRII-" + "a" * 32],
    ),
    "new-relic-browser-key": (
        [lambda r: "NRJS-" + rand(r, 19, HEX)],
        [lambda r: "NRJS-" + "0" * 19],
    ),
    "facebook-access-token": (
        [lambda r: "EAAC" + rand(r, 180), lambda r: "EAAM" + rand(r, 120)],
        [lambda r: "EAAC" + rand(r, 40)],
    ),
    "facebook-app-token": (
        [lambda r: "access_token=" + str(r.randint(10**14, 10**15 - 1)) + "|" + rand(r, 27)],
        [lambda r: "id=" + str(r.randint(10**14, 10**15 - 1)) + "|" + "a" * 27],
    ),
    "twitter-bearer-token": (
        [lambda r: "Bearer " + "A" * 22 + rand(r, 90, B62 + "%")],
        [lambda r: "data=" + base64.b64encode(bytes(40) + r.randbytes(90)).decode()],
    ),
    "teams-incoming-webhook": (
        [
            lambda r: (
                "https://contoso.webhook.office.com/webhookb2/"
                + f"{rand(r, 8, HEX)}-{rand(r, 4, HEX)}-{rand(r, 4, HEX)}-{rand(r, 4, HEX)}-"
                + f"{rand(r, 12, HEX)}@{rand(r, 8, HEX)}-{rand(r, 4, HEX)}-{rand(r, 4, HEX)}-"
                + f"{rand(r, 4, HEX)}-{rand(r, 12, HEX)}/IncomingWebhook/{rand(r, 32, HEX)}/"
                + f"{rand(r, 8, HEX)}-{rand(r, 4, HEX)}-{rand(r, 4, HEX)}-{rand(r, 4, HEX)}-"
                + rand(r, 12, HEX)
            )
        ],
        [lambda r: "https://contoso.webhook.office.com/webhookb2/"],
    ),
    "kubernetes-secret": (
        [_k8s(False), _k8s(True), lambda r: _json_escaped(_k8s(True)(r))],
        [
            lambda r: "kind: Secret\nmetadata:\n  name: db\ntype: Opaque\n",
            lambda r: "kind: Secret\ndata:\n  password: {{ .Values.password }}\n",
        ],
    ),
    "curl-basic-auth": (
        [
            lambda r: "curl -u deploy:" + rand(r, 16) + " https://example.com/api",
            lambda r: "curl -X POST \\\n  --user 'ci:" + rand(r, 14) + "' https://h/x",
            lambda r: _json_escaped('curl -s --user "api:' + rand(r, 20) + '" https://h/'),
        ],
        [
            lambda r: "curl -u admin:$PASSWORD https://example.com",
            lambda r: "curl -u user:password https://example.com",
            lambda r: "docker exec -u root:" + rand(r, 12) + " web sh",
        ],
    ),
    "curl-auth-header": (
        [
            lambda r: 'curl -H "Authorization: Bearer ' + rand(r, 40) + '" https://h/',
            lambda r: "curl -X POST \\\n  --header 'X-Api-Key: " + rand(r, 32, HEX) + "' h",
            lambda r: (
                'curl -H "Authorization: Basic '
                + base64.b64encode(b"ci:" + rand(r, 16).encode()).decode()
                + '" h'
            ),
        ],
        [
            lambda r: 'curl -H "Authorization: Bearer $TOKEN" https://h/',
            lambda r: 'grep -H "Authorization: Bearer ' + rand(r, 30) + '" notes.txt',
        ],
    ),
    "harness-token": (
        [lambda r: "pat." + rand(r, 22) + "." + rand(r, 24) + "." + rand(r, 20)],
        [lambda r: "pat." + rand(r, 22) + "." + rand(r, 24)],
    ),
    "easypost-api-key": (
        [lambda r: "EZAK" + rand(r, 54), lambda r: "EZTK" + rand(r, 54, LOWER_DIGITS)],
        [lambda r: "EZAK" + "0" * 54],
    ),
    "sourcegraph-token": (
        [lambda r: "sgp_" + rand(r, 16, HEX) + "_" + rand(r, 40, HEX)],
        [lambda r: "sgp_" + "0" * 40],
    ),
    "jwt-base64": (
        [lambda r: "token: " + base64.b64encode(_jwt(r).encode()).decode()],
        [lambda r: "ZXlK" + rand(r, 60)],
    ),
    # --- keyword-near-value rules -------------------------------------------------------
    "datadog-key": (
        [
            lambda r: "DATADOG_API_KEY=" + rand(r, 32, HEX),
            lambda r: _json_escaped('datadog:\n  dd_app_key: "' + rand(r, 40, HEX) + '"'),
        ],
        [lambda r: "DATADOG_API_KEY=" + "0" * 32],
    ),
    "cloudflare-key": (
        [lambda r: 'cloudflare_api_token = "' + rand(r, 40, B62 + "_-") + '"'],
        [lambda r: "cloudflare_api_token = get_token()"],
    ),
    "bitbucket-key": (
        [lambda r: "BITBUCKET_CLIENT_SECRET: " + rand(r, 32)],
        [lambda r: "bitbucket_url: https://bitbucket.org/team/repository-name-here"],
    ),
    "okta-token": (
        [lambda r: "OKTA_API_TOKEN=00" + rand(r, 40, B62 + "_-")],
        [lambda r: "okta_token = 00" + "a" * 40],
    ),
    "sentry-legacy-token": (
        [lambda r: "SENTRY_AUTH_TOKEN=" + rand(r, 64, HEX)],
        [lambda r: "SENTRY_AUTH_TOKEN=" + "ab" * 32],
    ),
    "twitter-key": (
        [
            lambda r: "twitter_api_secret = '" + rand(r, 50) + "'",
            lambda r: "TWITTER_ACCESS_TOKEN=" + str(r.randint(10**17, 10**18)) + "-" + rand(r, 30),
        ],
        [lambda r: "twitter_handle = 'someone_who_tweets_often'"],
    ),
    "algolia-key": (
        [lambda r: '"algoliaAdminKey": "' + rand(r, 32, HEX) + '"'],
        [lambda r: '"algoliaIndex": "products_production_index_v1"'],
    ),
    "asana-token": (
        [lambda r: "ASANA_TOKEN=1/" + rand(r, 16, "0123456789") + ":" + rand(r, 32, HEX)],
        [lambda r: "asana_workspace = 1234567890123456"],
    ),
    "adafruit-key": (
        [lambda r: "adafruit_io_key: " + rand(r, 32, LOWER_DIGITS)],
        [lambda r: "adafruit_feed: temperature-sensor-in-the-kitchen"],
    ),
    "airtable-key": (
        [lambda r: "AIRTABLE_API_KEY=key" + rand(r, 14)],
        [lambda r: "airtable_base = appointments"],
    ),
    "alibaba-secret-key": (
        [lambda r: "ALIBABA_CLOUD_ACCESS_KEY_SECRET=" + rand(r, 30)],
        [lambda r: "alibaba_region = cn-hangzhou"],
    ),
    "generic-secret": (
        [
            lambda r: 'API_TOKEN="' + rand(r, 32, LOWER_DIGITS) + '"',
            lambda r: "db_password: " + mixed(r, 20),
            lambda r: _json_escaped('client_secret = "' + mixed(r, 24) + '"'),
            lambda r: 'var serviceToken string = "' + mixed(r, 30) + '"',
            lambda r: "https://h/cb?access_key=" + mixed(r, 24) + "&x=1",
            lambda r: 'System.setProperty("APP_SECRET", "' + mixed(r, 24) + '")',
            lambda r: "{\\u0022auth_secret\\u0022:\\u0022" + mixed(r, 24) + "\\u0022}",
        ],
        [
            lambda r: "token = get_token()",
            lambda r: "password: ${DB_PASSWORD}",
            lambda r: 'secret_key = "changeme-please-1234"',
            lambda r: 'next_page_token = "' + mixed(r, 30) + '"',
            lambda r: "PrivateKey,\n    ed25519.Ed25519PrivateKey,",
            lambda r: '"MLKEM768X25519PrivateKey",\n    "MLKEM768X25519PublicKey",',
            lambda r: "password: 'bm90IG15IHJlYWwgcGFzc3dvcmQ='",
            lambda r: 'tokenizer_name = "bert-base-uncased-v2"',
            lambda r: "'ReplacePasswordWithSignInRequest', 'ASAccountAuthenticationRequest'",
        ],
    ),
}
