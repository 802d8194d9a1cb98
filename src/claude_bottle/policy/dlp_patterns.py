"""The credential pattern table the DLP scanner compiles into one multi-pattern engine.

Every regex is written in the subset that Hyperscan, RE2 and Python `re`
all accept with the same meaning: no look-around, no back-references,
ASCII classes, bounded repetition (a match is never longer than
`MAX_PATTERN_WIDTH` bytes, which bounds the stream overlap window).
Case-insensitive parts use a scoped `(?i:...)` group. The one exception
is a pattern with an explicit `prefilter`: the engines look for the
prefilter (common subset) and only Python `re` runs the regex itself, near
each hit, so that regex may use look-behind.

Validators take `(data, start, end)` and cut false positives: checksums
(Luhn, mod-97), structure (JWT header, Discord snowflake), and "not a
placeholder" (enough distinct symbols; `xxxx...`, `0000...` fail). Prefixes
that are distinctive (`ghp_`, `sk-ant-`, `AKIA`, ...) carry no leading word
boundary, so gluing a letter in front of a token does not hide it; generic
shapes (`hf_`, `SK` + hex, digits) do.
"""

from __future__ import annotations

from claude_bottle.policy.dlp_keywords import KEYWORD_PATTERNS
from claude_bottle.policy.dlp_providers import PROVIDER_PATTERNS
from claude_bottle.policy.dlp_spec import (
    ASSIGN,
    MAX_PATTERN_WIDTH,
    PatternSpec,
    Validator,
    all_of,
    ends_token,
    mixed_case,
    not_example,
    random_token,
)
from claude_bottle.policy.validators import card_ok, discord_token_ok, iban_ok, jwt_ok, looks_random

__all__ = ["MAX_PATTERN_WIDTH", "PATTERNS", "PATTERN_NAMES", "PatternSpec", "Validator"]

_CODE_BEFORE = frozenset(b"([{,*+-")
_CODE_AFTER = frozenset(b"*/)]}")


def _card(data: bytes, start: int, end: int) -> bool:
    before = data[max(0, start - 2) : start].rstrip(b" ")
    after = data[end : end + 2].lstrip(b" ")
    if before[-1:] == b"." or (after[:1] == b"." and after[1:2].isdigit()):
        return False  # the digits of a decimal number: 0.4532..., 4532...5.25
    if (before and before[-1] in _CODE_BEFORE) or (after and after[0] in _CODE_AFTER):
        return False  # a numeric literal in code: f(4532...), [..., 4532...], 4532...*x
    if before[-1:].isdigit() or after[:1].isdigit():
        return False  # one group of a longer run of digit groups
    return card_ok(data[start:end].decode("ascii"))


def _iban(data: bytes, start: int, end: int) -> bool:
    return iban_ok(data[start:end].decode("ascii"))


def _jwt(data: bytes, start: int, end: int) -> bool:
    return jwt_ok(data[start:end])


def _discord(data: bytes, start: int, end: int) -> bool:
    return discord_token_ok(data[start:end]) and looks_random(data[start:end], 16)


# Building blocks.
_NL = r"(?:\r?\n|\\r\\n|\\n|%0[Aa]|%0[Dd]%0[Aa])"  # a newline, also JSON-escaped or URL-encoded
_SP = r"(?: |%20|\+)"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_PEM_HEADERS = rf"(?:[A-Za-z-]{{2,20}}:{_SP}?[^\r\n\\%]{{1,100}}{_NL}){{0,4}}{_NL}?"

_CORE: tuple[PatternSpec, ...] = (
    # --- AI providers -----------------------------------------------------------------
    PatternSpec(
        "anthropic-api-key",
        r"sk-ant-api\d\d-[A-Za-z0-9_-]{80,120}",
        random_token(20, skip=14),
        "Anthropic API key",
    ),
    PatternSpec(
        "anthropic-admin-key",
        r"sk-ant-admin\d\d-[A-Za-z0-9_-]{80,120}",
        random_token(20, skip=16),
        "Anthropic admin API key",
    ),
    PatternSpec(
        "anthropic-oauth-token",
        r"sk-ant-o[ar]t\d\d-[A-Za-z0-9_-]{40,160}",
        random_token(16, skip=14),
        "Anthropic OAuth access/refresh token",
    ),
    PatternSpec(
        "openai-api-key",
        r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,200}T3BlbkFJ[A-Za-z0-9_-]{20,200}"
        r"|sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}"
        r"|sk-proj-[A-Za-z0-9_-]{100,200}",
        random_token(20, skip=3),
        "OpenAI API key",
    ),
    PatternSpec("groq-api-key", r"gsk_[A-Za-z0-9]{52}", random_token(16, skip=4), "Groq API key"),
    PatternSpec("xai-api-key", r"\bxai-[A-Za-z0-9]{80}\b", random_token(20, skip=4), "xAI API key"),
    PatternSpec(
        "perplexity-api-key",
        r"pplx-[A-Za-z0-9]{48}",
        random_token(16, skip=5),
        "Perplexity API key",
    ),
    PatternSpec(
        "replicate-api-token",
        r"\br8_[A-Za-z0-9]{37}\b",
        random_token(14, skip=3),
        "Replicate token",
    ),
    PatternSpec(
        "huggingface-token",
        r"\bhf_[A-Za-z0-9]{34,40}\b",
        all_of(random_token(14, skip=3), mixed_case(3)),
        "Hugging Face access token",
    ),
    PatternSpec(
        "huggingface-org-token",
        r"\bapi_org_[A-Za-z0-9]{34}\b",
        all_of(random_token(14, skip=8), mixed_case(8)),
        "Hugging Face organisation token",
    ),
    # --- Cloud providers --------------------------------------------------------------
    PatternSpec(
        "aws-access-key-id",
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
        all_of(not_example, random_token(8, skip=4)),
        "AWS access key id",
    ),
    PatternSpec(
        "aws-secret-access-key",
        r"(?i:aws[_.-]?secret[_.-]?(?:access[_.-]?)?key|secret[_.-]?access[_.-]?key)"
        + ASSIGN
        + r"[A-Za-z0-9/+]{40}",
        all_of(not_example, ends_token, random_token(14, tail=40)),
        "AWS secret access key (next to its name)",
    ),
    PatternSpec(
        "aws-session-token",
        r"(?:(?i:aws[_.-]?session[_.-]?token)|SessionToken)"
        + ASSIGN
        + r"[A-Za-z0-9/+=%]{100,1000}",
        all_of(not_example, random_token(20, tail=100)),
        "AWS session token (next to its name)",
    ),
    PatternSpec(
        "google-api-key", r"AIza[0-9A-Za-z_-]{35}", random_token(14, skip=4), "Google API key"
    ),
    PatternSpec(
        "google-oauth-access-token",
        r"ya29\.[0-9A-Za-z_-]{30,1000}",
        random_token(14, skip=5),
        "Google OAuth access token",
    ),
    PatternSpec(
        "google-oauth-client-secret",
        r"GOCSPX-[A-Za-z0-9_-]{28}",
        random_token(12, skip=7),
        "Google OAuth client secret",
    ),
    PatternSpec(
        "google-oauth-refresh-token",
        r"\b1//0[A-Za-z0-9_-]{40,300}",
        random_token(16, skip=4),
        "Google OAuth refresh token",
    ),
    PatternSpec(
        "gcp-service-account",
        r"\\?\"type\\?\"\s{0,5}:\s{0,5}\\?\"service_account\\?\""
        r"|\\?\"private_key_id\\?\"\s{0,5}:\s{0,5}\\?\"[a-f0-9]{40}\\?\"",
        None,
        "GCP service-account key file",
    ),
    PatternSpec(
        "azure-storage-key",
        r"(?i:AccountKey)\s{0,3}=\s{0,3}[A-Za-z0-9+/]{86}==",
        random_token(20, tail=88),
        "Azure storage account key / connection string",
    ),
    PatternSpec(
        "azure-shared-access-key",
        r"(?i:SharedAccessKey)\s{0,3}=\s{0,3}[A-Za-z0-9+/]{42,43}=",
        random_token(16, tail=43),
        "Azure Service Bus / Event Hubs connection string key",
    ),
    PatternSpec(
        "azure-sas-token",
        r"sv=20\d\d-\d\d-\d\d&[A-Za-z0-9&=%:._-]{0,300}sig=[A-Za-z0-9%+/]{40,100}"
        r"|sig=[A-Za-z0-9%+/]{40,100}&[A-Za-z0-9&=%:._-]{0,300}sv=20\d\d-\d\d-\d\d",
        None,
        "Azure shared access signature",
    ),
    PatternSpec(
        "azure-ad-client-secret",
        r"\b[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34}",
        random_token(16),
        "Azure AD (Entra) client secret",
    ),
    PatternSpec(
        "alibaba-access-key-id",
        r"\bLTAI[A-Za-z0-9]{20}\b",
        random_token(8, skip=4),
        "Alibaba Cloud access key id",
    ),
    PatternSpec(
        "digitalocean-token",
        r"do[opr]_v1_[a-f0-9]{64}",
        random_token(8, skip=6),
        "DigitalOcean token",
    ),
    PatternSpec(
        "cloudflare-origin-ca-key",
        r"v1\.0-[a-f0-9]{24}-[a-f0-9]{146}",
        random_token(12, skip=5),
        "Cloudflare Origin CA key",
    ),
    PatternSpec(
        "heroku-api-key",
        r"HRKU-AA[A-Za-z0-9_-]{58}"
        r"|(?i:heroku[_.-]?(?:api[_.-]?)?(?:key|token))" + ASSIGN + _UUID,
        random_token(8, tail=36),
        "Heroku API key",
    ),
    PatternSpec(
        "terraform-cloud-token",
        r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70}",
        random_token(16),
        "Terraform Cloud / Enterprise token",
    ),
    PatternSpec(
        "pulumi-token", r"pul-[a-f0-9]{40}", random_token(8, skip=4), "Pulumi access token"
    ),
    PatternSpec(
        "vault-token",
        r"hv[sbr]\.[A-Za-z0-9_-]{24,300}",
        random_token(14, skip=4),
        "HashiCorp Vault token",
    ),
    PatternSpec(
        "doppler-token",
        r"dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}",
        random_token(14, tail=40),
        "Doppler token",
    ),
    PatternSpec(
        "onepassword-service-token",
        r"ops_eyJ[A-Za-z0-9+/=_-]{100,1000}",
        random_token(16, skip=4),
        "1Password service-account token",
    ),
    PatternSpec(
        "tailscale-key",
        r"tskey-(?:api|auth|client|webhook|scim)-[A-Za-z0-9]{8,20}-[A-Za-z0-9]{20,64}",
        random_token(14),
        "Tailscale key",
    ),
    # --- Source hosting and package registries ------------------------------------------
    PatternSpec("github-pat", r"ghp_[A-Za-z0-9]{36}", random_token(14, skip=4), "GitHub PAT"),
    PatternSpec(
        "github-oauth", r"gho_[A-Za-z0-9]{36}", random_token(14, skip=4), "GitHub OAuth token"
    ),
    PatternSpec(
        "github-app",
        r"gh[us]_[A-Za-z0-9]{36}",
        random_token(14, skip=4),
        "GitHub App user-to-server / installation token",
    ),
    PatternSpec(
        "github-refresh",
        r"ghr_[A-Za-z0-9]{36,76}",
        random_token(14, skip=4),
        "GitHub refresh token",
    ),
    PatternSpec(
        "github-fine-grained-pat",
        r"github_pat_[A-Za-z0-9_]{82}",
        random_token(20, skip=11),
        "GitHub fine-grained PAT",
    ),
    PatternSpec(
        "gitlab-pat",
        r"glpat-[A-Za-z0-9_.-]{20,120}",
        random_token(12, skip=6),
        "GitLab personal access token",
    ),
    PatternSpec(
        "gitlab-token",
        r"gl(?:rt|dt|cbt|ft|imt|agent|oas|soat|ptt|ffct|wt)-[A-Za-z0-9_.-]{20,120}"
        r"|GR1348941[A-Za-z0-9_-]{20}",
        # 8 of the last 20: a trigger token is 40 hex digits, 20 of which show 12
        # different ones only about half the time.
        random_token(8, tail=20),
        "GitLab runner / deploy / trigger / feed token",
    ),
    PatternSpec(
        "bitbucket-app-password",
        r"\bATBB[A-Za-z0-9]{28,40}\b",
        random_token(14, skip=4),
        "Bitbucket app password",
    ),
    PatternSpec(
        "atlassian-api-token",
        r"ATATT3[A-Za-z0-9_=-]{150,250}",
        random_token(20, skip=6),
        "Atlassian API token",
    ),
    PatternSpec("npm-token", r"npm_[A-Za-z0-9]{36}", random_token(14, skip=4), "npm access token"),
    PatternSpec(
        "pypi-token",
        r"pypi-AgE(?:IcHlwaS5vcmc|NdGVzdC5weXBpLm9yZw)[A-Za-z0-9_-]{50,1000}",
        random_token(10, skip=24),
        "PyPI API token",
    ),
    PatternSpec(
        "rubygems-token", r"rubygems_[a-f0-9]{48}", random_token(8, skip=9), "RubyGems API key"
    ),
    PatternSpec(
        "docker-hub-pat", r"dckr_pat_[A-Za-z0-9_-]{27}", random_token(12, skip=9), "Docker Hub PAT"
    ),
    # --- Messaging, payments, SaaS ---------------------------------------------------------
    PatternSpec(
        "slack-token",
        r"xox[abposre](?:\.xox[bp])?-(?:\d{1,16}-){1,4}[A-Za-z0-9-]{8,200}"
        r"|xox[abposr]-[A-Za-z0-9]{30,200}",
        random_token(12),
        "Slack token",
    ),
    PatternSpec(
        "slack-app-token",
        r"xapp-\d-[A-Z0-9]{9,12}-\d{9,16}-[A-Za-z0-9]{32,80}",
        random_token(8, tail=32),
        "Slack app-level token",
    ),
    PatternSpec(
        "slack-webhook",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{43,120}",
        random_token(12, tail=24),
        "Slack incoming-webhook URL",
    ),
    PatternSpec(
        "discord-bot-token",
        r"\b[MNO][A-Za-z0-9_-]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38}",
        _discord,
        "Discord bot token",
    ),
    PatternSpec(
        "discord-webhook",
        r"discord(?:app)?\.com/api/webhooks/\d{17,20}/[A-Za-z0-9_-]{60,70}",
        random_token(16, tail=60),
        "Discord webhook URL",
    ),
    PatternSpec(
        "telegram-bot-token",
        r"\b\d{8,10}:AA[A-Za-z0-9_-]{33}",
        random_token(14, tail=33),
        "Telegram bot token",
    ),
    PatternSpec(
        "twilio-api-key", r"\bSK[0-9a-f]{32}\b", random_token(8, skip=2), "Twilio API key SID"
    ),
    PatternSpec(
        "sendgrid-api-key",
        r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
        random_token(16, skip=3),
        "SendGrid API key",
    ),
    PatternSpec(
        "mailgun-api-key",
        r"(?i:mailgun)[^\r\n]{0,60}\b(?:key-[0-9a-f]{32}|[0-9a-f]{32}-[0-9a-f]{8}-[0-9a-f]{8})\b"
        r"|api:key-[0-9a-f]{32}\b",
        random_token(8, tail=32),
        "Mailgun API key",
    ),
    PatternSpec(
        "mailchimp-api-key",
        r"\b[0-9a-f]{32}-us\d{1,2}\b",
        random_token(8),
        "Mailchimp API key",
    ),
    PatternSpec(
        "stripe-secret-key",
        r"\bsk_(?:live|test|prod)_[A-Za-z0-9]{10,247}",
        random_token(8, skip=8),
        "Stripe secret key (live or test)",
    ),
    PatternSpec(
        "stripe-restricted-key",
        r"\brk_(?:live|test|prod)_[A-Za-z0-9]{10,247}",
        random_token(8, skip=8),
        "Stripe restricted key (live or test)",
    ),
    PatternSpec(
        "stripe-webhook-secret",
        r"whsec_[A-Za-z0-9+/=]{32,100}",
        random_token(14, skip=6),
        "Stripe webhook signing secret",
    ),
    PatternSpec(
        "square-access-token",
        r"(?<![A-Za-z0-9+/_-])EAAA[A-Za-z0-9_-]{22,60}|sq0atp-[A-Za-z0-9_-]{22}",
        random_token(14, skip=4),
        "Square access token",
        # EAAA is common inside base64 of binary data (runs of zero bytes): not after base64
        # (but after '=', which ends base64 and starts a value: TOKEN=EAAA...).
        prefilter=r"(?:^|[^A-Za-z0-9+/_-])EAAA[A-Za-z0-9_-]{16}|sq0atp-[A-Za-z0-9_-]{16}",
    ),
    PatternSpec(
        "square-oauth-secret",
        r"sq0csp-[A-Za-z0-9_-]{43}",
        random_token(14, skip=7),
        "Square OAuth secret",
    ),
    PatternSpec(
        "shopify-token",
        r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}",
        random_token(8, skip=6),
        "Shopify access token / shared secret",
    ),
    PatternSpec(
        "databricks-token",
        r"\bdapi[a-f0-9]{32}(?:-\d)?\b",
        random_token(8, skip=4),
        "Databricks token",
    ),
    PatternSpec(
        "linear-api-key", r"lin_api_[A-Za-z0-9]{40}", random_token(14, skip=8), "Linear API key"
    ),
    PatternSpec(
        "notion-token",
        r"\bsecret_[A-Za-z0-9]{43}\b|\bntn_[A-Za-z0-9]{46}\b",
        all_of(random_token(16, tail=40), mixed_case(4)),
        "Notion integration token",
    ),
    PatternSpec(
        "postman-api-key",
        r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}",
        random_token(8, skip=5),
        "Postman API key",
    ),
    PatternSpec(
        "grafana-token",
        r"glc_[A-Za-z0-9+/]{32,400}={0,2}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}",
        random_token(14, skip=4),
        "Grafana Cloud / service-account token",
    ),
    PatternSpec(
        "new-relic-key",
        r"NRAK-(?i:[A-Z0-9]{27})",
        random_token(12, skip=5),
        "New Relic user API key",
    ),
    PatternSpec(
        "dynatrace-token",
        r"dt0c01\.(?i:[A-Z0-9]{24}\.[A-Z0-9]{64})",
        random_token(14, skip=7),
        "Dynatrace API token",
    ),
    PatternSpec(
        "sentry-token",
        r"sntrys_eyJ[A-Za-z0-9+/=_-]{60,400}|sntryu_[a-f0-9]{64}",
        random_token(12, skip=7),
        "Sentry auth token",
    ),
    PatternSpec(
        "airtable-pat",
        r"pat[A-Za-z0-9]{14}\.[a-f0-9]{64}",
        random_token(12, tail=64),
        "Airtable personal access token",
    ),
    PatternSpec(
        "planetscale-token",
        r"pscale_(?:tkn|oauth|pw)_[A-Za-z0-9_.=-]{32,64}",
        random_token(14, tail=32),
        "PlanetScale token / password",
    ),
    PatternSpec(
        "supabase-token",
        r"sbp_[a-f0-9]{40}|sb_secret_[A-Za-z0-9_-]{31,64}",
        random_token(8, tail=30),
        "Supabase access token / secret key",
    ),
    PatternSpec(
        "mapbox-secret-token",
        r"sk\.eyJ[A-Za-z0-9_-]{50,300}\.[A-Za-z0-9_-]{20,100}",
        random_token(16, skip=3),
        "Mapbox secret token",
    ),
    PatternSpec(
        "figma-token", r"figd_[A-Za-z0-9_-]{40}", random_token(14, skip=5), "Figma access token"
    ),
    PatternSpec(
        "contentful-token",
        r"CFPAT-[A-Za-z0-9_-]{43}",
        random_token(14, skip=6),
        "Contentful management token",
    ),
    PatternSpec(
        "netlify-token", r"nfp_[A-Za-z0-9]{36}", random_token(14, skip=4), "Netlify access token"
    ),
    PatternSpec(
        "buildkite-token", r"bkua_[a-f0-9]{40}", random_token(8, skip=5), "Buildkite API token"
    ),
    # --- Keys and structured secrets ----------------------------------------------------
    PatternSpec(
        "pem-private-key",
        rf"-----BEGIN{_SP}(?:(?:RSA|EC|DSA|ENCRYPTED|ED25519|PGP){_SP})?PRIVATE{_SP}KEY"
        rf"(?:{_SP}BLOCK)?-----{_NL}{_PEM_HEADERS}[A-Za-z0-9+/=]{{40}}",
        not_example,
        "PEM private key",
    ),
    PatternSpec(
        "openssh-private-key",
        rf"-----BEGIN{_SP}OPENSSH{_SP}PRIVATE{_SP}KEY-----{_NL}b3BlbnNzaC1rZXktdjE",
        None,
        "OpenSSH private key",
    ),
    PatternSpec(
        "putty-private-key",
        rf"PuTTY-User-Key-File-[23]:{_SP}[a-z0-9-]{{7,25}}{_NL}Encryption:",
        None,
        "PuTTY private key file",
    ),
    PatternSpec(
        "age-secret-key",
        r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}",
        random_token(14, skip=16),
        "age encryption secret key",
    ),
    PatternSpec(
        "jwt",
        r"eyJ[A-Za-z0-9_-]{8,1000}\.eyJ[A-Za-z0-9_-]{8,1000}(?:\.[A-Za-z0-9_-]{0,1000})?",
        _jwt,
        "JSON Web Token",
    ),
    PatternSpec(
        "credit-card",
        r"(?<![0-9A-Za-z_.])[2-6](?:\d[ -]?){11,17}\d\b",
        _card,
        "payment card number (Luhn-valid)",
        # Not after a '.': the digits of a decimal fraction are the most common near miss.
        prefilter=r"(?:^|[^0-9A-Za-z_.])[2-6](?:\d[ -]?){11,17}\d\b",
    ),
    PatternSpec(
        "iban",
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
        _iban,
        "IBAN (mod-97 valid)",
    ),
)

PATTERNS: tuple[PatternSpec, ...] = _CORE + PROVIDER_PATTERNS + KEYWORD_PATTERNS
PATTERN_NAMES: tuple[str, ...] = tuple(spec.name for spec in PATTERNS)
