"""Recall on the test cases of gitleaks' rule suite (fixture in data/gitleaks, MIT).

Each sample is sent as an API request body would carry it: inside a JSON
string, so quotes arrive escaped and newlines as \\n. At least 85% of the
5,843 samples must be found, and each provider family named in issue 25
must be found in most of its samples.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from claude_bottle.policy.dlp import Scanner

FIXTURE = Path(__file__).with_name("data") / "gitleaks" / "samples.json"
MIN_RECALL = 0.85
# Provider families of issue 25, by gitleaks rule id; each must be found in most samples.
FAMILIES = (
    "1password-secret-key", "adafruit-api-key", "airtable-api-key", "alibaba-secret-key",
    "artifactory-api-key", "artifactory-reference-token", "aws-amazon-bedrock-api-key-long-lived",
    "aws-amazon-bedrock-api-key-short-lived", "stripe-access-token", "gitlab-session-cookie",
    "gitlab-ptt", "mailgun-pub-key", "new-relic-insert-key", "new-relic-browser-api-token",
    "facebook-access-token", "twitter-bearer-token", "microsoft-teams-webhook",
    "kubernetes-secret-yaml", "curl-auth-user", "square-access-token", "datadog-access-token",
    "bitbucket-client-secret", "okta-access-token", "sentry-access-token", "heroku-api-key",
    "twitter-api-secret", "algolia-api-key", "asana-client-secret", "aws-access-token",
)  # fmt: skip


@functools.cache
def samples() -> dict[str, list[str]]:
    loaded: dict[str, list[str]] = json.loads(FIXTURE.read_text())
    return loaded


def _found(scanner: Scanner, sample: str) -> bool:
    body = json.dumps({"messages": [{"role": "user", "content": sample}]}).encode()
    return bool(scanner.scan(body, "body"))


@pytest.fixture(scope="module")
def per_rule() -> dict[str, tuple[int, int]]:
    scanner = Scanner()
    return {
        rule: (sum(_found(scanner, sample) for sample in cases), len(cases))
        for rule, cases in samples().items()
    }


def test_recall_on_gitleaks_rule_samples(per_rule: dict[str, tuple[int, int]]) -> None:
    found = sum(hit for hit, _ in per_rule.values())
    total = sum(count for _, count in per_rule.values())
    assert total >= 5000
    missed = sorted(rule for rule, (hit, count) in per_rule.items() if hit < count)
    assert found / total >= MIN_RECALL, f"recall {found}/{total}; partly missed: {missed}"


@pytest.mark.parametrize("rule", FAMILIES)
def test_each_family_is_covered(per_rule: dict[str, tuple[int, int]], rule: str) -> None:
    hit, count = per_rule[rule]
    assert hit * 2 > count, f"{rule}: {hit} of {count}"
