"""`[[egress.rules]]` and `[[credentials.inject]]` in config: user-only, checked entry by
entry, refused for hosts the bundle cannot see into; and in the plan: the placeholder in
the bottle's environment, never the secret, and the rules in force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_bottle.backend.base import plan_injections, rules_in_force
from claude_bottle.bottle_env import injected_env
from claude_bottle.bundle.settings import BundleSettings, InjectionSpec, RuleSpec
from claude_bottle.config import Config, TrustStore, load_config
from claude_bottle.errors import ConfigError

SECRET = "ghp_" + "Zq8Xw2Lk9Vb4Nm7Rt1Yp3Hs6Jd5Fg0Ca8Ue2Wo"[:36]

RULES = """
[[egress.rules]]
host = "api.github.com"
methods = ["GET", "HEAD"]
paths = ["/repos/acme/*", "/user"]
"""
INJECT = """
[[credentials.inject]]
hosts = ["api.github.com", "github.com"]
env = "GITHUB_TOKEN"
also_env = ["GH_TOKEN"]
secret = "env:HOST_GITHUB_TOKEN"
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("CLAUDE_BOTTLE_CONFIG", raising=False)
    monkeypatch.setenv("HOST_GITHUB_TOKEN", SECRET)


def load(tmp_path: Path, user: str = "", project: str | None = None) -> Config:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    (tmp_path / "user.toml").write_text(user)
    store = TrustStore(tmp_path / "trusted.json")
    if project is not None:
        (workspace / ".claude-bottle.toml").write_text(project)
        store.trust(workspace / ".claude-bottle.toml")
    return load_config(
        workspace=workspace,
        known_backends=("namespace",),
        user_config=tmp_path / "user.toml",
        trust_store=store,
        warn=lambda _: None,
    )


def test_rules_and_injections_load_from_the_user_config(tmp_path: Path) -> None:
    config = load(tmp_path, RULES + INJECT)
    assert config.egress.rules == (
        RuleSpec("api.github.com", ("GET", "HEAD"), ("/repos/acme/*", "/user")),
    )
    assert "api.github.com" in config.egress.allow  # rules imply their host
    (injection,) = config.credentials.inject
    assert injection == InjectionSpec(
        ("api.github.com", "github.com"), "GITHUB_TOKEN", "env:HOST_GITHUB_TOKEN", ("GH_TOKEN",)
    )


@pytest.mark.parametrize("text", [RULES, INJECT])
def test_a_workspace_file_may_not_set_them_even_trusted(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "", text)
    assert "may be set only in your user config" in str(caught.value)


@pytest.mark.parametrize("text", [RULES, INJECT])
def test_a_host_excluded_from_interception_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, '[egress]\nintercept_exclude = ["api.github.com"]\n' + text)
    assert caught.value.exit_code == 2 and "excluded from TLS interception" in str(caught.value)
    with pytest.raises(ConfigError):
        load(tmp_path, "[egress]\nintercept = false\n" + text)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('host = "*.github.com"', "not a pattern"),
        ('host = "a.test"\nmethods = ["get it"]', "not an HTTP method"),
        ('host = "a.test"\npaths = ["repos"]', "starting with '/'"),
        ('host = "a.test"\npaths = ["/a?x=1"]', "starting with '/'"),
        ('host = "a.test"\npaths = ["/a/../b"]', "never matches"),
        ('host = "a.test"\npaths = ["/%7Ea"]', "normal form"),
        ('host = "a.test"\npaths = []', "matches nothing"),
    ],
)
def test_bad_rules(tmp_path: Path, entry: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"[[egress.rules]]\n{entry}\n")
    assert problem in str(caught.value) and "egress.rules[0]" in str(caught.value)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (f'hosts = ["a.test"]\nenv = "T"\nsecret = "{SECRET}"', "value not shown"),
        ('hosts = []\nenv = "T"\nsecret = "env:X"', "is empty"),
        ('hosts = ["a.test"]\nenv = "1T"\nsecret = "env:X"', "not an environment variable"),
        ('hosts = ["*.example.test"]\nenv = "T"\nsecret = "env:X"', "not a pattern"),
    ],
)
def test_bad_injections(tmp_path: Path, entry: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"[[credentials.inject]]\n{entry}\n")
    assert problem in str(caught.value) and SECRET not in str(caught.value)


def test_the_plan_holds_placeholders_and_the_rules_in_force(tmp_path: Path) -> None:
    config = load(tmp_path, RULES + INJECT + '[egress]\nallow = ["registry.npmjs.org"]\n')
    injections = plan_injections(config)
    env = injected_env(injections)
    assert env["GITHUB_TOKEN"] == env["GH_TOKEN"] == injections[0].placeholder
    assert env["GITHUB_TOKEN"] != SECRET and env["GITHUB_TOKEN"].startswith("ghp_")
    in_force = rules_in_force(config)
    hosts = {rule.host for rule in in_force}
    assert {"api.github.com", "registry.npmjs.org"} <= hosts
    assert "pypi.org" not in hosts  # not allowed: not shown
    # github.com receives the credential, is not allowed here, so no rules are shown for it
    assert tuple(next(rule for rule in in_force if rule.host == "api.github.com"))[:3] == (
        "api.github.com",
        ("GET", "HEAD"),
        ("/repos/acme/*", "/user"),
    )


def test_bundle_settings_carry_specs_never_secrets(tmp_path: Path) -> None:
    config = load(tmp_path, RULES + INJECT)
    settings = BundleSettings(
        "b",
        "p",
        "c",
        "a",
        allow=(),
        egress_rules=config.egress.rules,
        injections=plan_injections(config),
    )
    settings.dump(tmp_path / "bundle.json")
    text = (tmp_path / "bundle.json").read_text()
    assert SECRET not in text and "env:HOST_GITHUB_TOKEN" in text
    assert BundleSettings.load(tmp_path / "bundle.json") == settings
    assert json.loads(text)["egress_rules"][0]["host"] == "api.github.com"


def test_a_resumed_bottle_keeps_its_placeholders(tmp_path: Path) -> None:
    config = load(tmp_path, INJECT)
    first = plan_injections(config, tmp_path / "absent.json")
    earlier = tmp_path / "plan.json"
    earlier.write_text(json.dumps({"injections": [i._asdict() for i in first]}))
    assert plan_injections(config, earlier) == first
    assert plan_injections(config) != first  # a new bottle: a new placeholder
    # a plan that holds no placeholder of the secret's shape is not believed
    forged = [{**first[0]._asdict(), "placeholder": "Bearer"}]
    earlier.write_text(json.dumps({"injections": forged}))
    (again,) = plan_injections(config, earlier)
    assert again.placeholder not in ("Bearer", first[0].placeholder)
