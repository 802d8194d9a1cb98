"""`[dlp] ignore` and `ignore_fingerprints`, and `claude-bottle dlp scan` (issue 25).

A user silences a false positive by rule id or by the fingerprint of one
finding; what is silenced is let through and audited; the user's own secret
values can never be silenced; `dlp scan` shows rule, offset, a redacted
match and the fingerprint, never the secret.
"""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.scanning import DlpInspector
from claude_bottle.cli.main import cli
from claude_bottle.config import load_config
from claude_bottle.config.trust import TrustStore
from claude_bottle.errors import ConfigError
from claude_bottle.policy.dlp import DlpPatternError, Scanner, finding_fingerprint
from claude_bottle.policy.dlp_patterns import PATTERNS

_RND = random.Random(25)
TOKEN = "gh" + "p_" + "".join(_RND.choice(string.ascii_letters + string.digits) for _ in range(36))
BODY = f'{{"note": "token {TOKEN} here"}}'.encode()


def test_every_rule_has_a_stable_id_and_a_one_line_description() -> None:
    for spec in PATTERNS:
        assert spec.name == spec.name.lower() and " " not in spec.name, spec.name
        assert spec.description and "\n" not in spec.description, spec.name


def test_findings_carry_a_fingerprint_of_rule_and_match() -> None:
    found = Scanner().scan(BODY, "body")
    assert [f.pattern for f in found] == ["github-pat"]
    assert found[0].fingerprint == finding_fingerprint("github-pat", TOKEN.encode())
    assert TOKEN not in repr(found)
    assert not found[0].ignored


def test_ignore_by_rule_or_fingerprint_flags_the_finding() -> None:
    by_rule = Scanner(ignore_rules=["github-pat"]).scan(BODY, "body")
    assert by_rule and all(f.ignored for f in by_rule)
    fingerprint = finding_fingerprint("github-pat", TOKEN.encode())
    by_print = Scanner(ignore_fingerprints=[fingerprint]).scan(BODY, "body")
    assert by_print and all(f.ignored for f in by_print)
    other = TOKEN[:-1] + ("a" if TOKEN[-1] != "a" else "b")
    still = Scanner(ignore_fingerprints=[fingerprint]).scan(other.encode(), "body")
    assert still and not any(f.ignored for f in still)


def test_streamed_findings_are_flagged_too() -> None:
    scanner = Scanner(ignore_rules=["github-pat"])
    stream = scanner.stream("body")
    found = stream.feed(BODY[:20]) + stream.feed(BODY[20:]) + stream.finish()
    assert found and all(f.ignored for f in found)
    assert found[0].fingerprint == finding_fingerprint("github-pat", TOKEN.encode())


def test_own_secret_values_can_never_be_ignored() -> None:
    secret = "hunter2-" + TOKEN[4:20]
    with pytest.raises(DlpPatternError, match="own secret"):
        Scanner(secrets={"MY_TOKEN": secret}, ignore_rules=["secret:MY_TOKEN:raw"])
    scanner = Scanner(secrets={"MY_TOKEN": secret})
    found = scanner.scan(secret.encode(), "body")
    assert found and all(not f.ignored and f.fingerprint == "" for f in found)


def test_unknown_rule_or_bad_fingerprint_is_refused() -> None:
    with pytest.raises(DlpPatternError, match="not a DLP rule id"):
        Scanner(ignore_rules=["no-such-rule"])
    with pytest.raises(DlpPatternError, match="fingerprint"):
        Scanner(ignore_fingerprints=["XYZ"])


def _inspector(scanner: Scanner) -> tuple[DlpInspector, list[tuple[Any, ...]]]:
    records: list[tuple[Any, ...]] = []

    def record(kind: str, decision: str, **fields: Any) -> None:
        records.append((kind, decision, fields))

    return DlpInspector(scanner, block=True, record=record), records


def test_inspector_lets_ignored_findings_through_and_audits_them() -> None:
    inspector, records = _inspector(Scanner(ignore_rules=["github-pat"]))
    guard = inspector.body([], "POST", "api.test", 443, "/x")
    assert guard.feed(BODY) + guard.finish() == BODY
    assert [(kind, decision) for kind, decision, _ in records] == [("dlp", "allow")]
    fields = records[0][2]
    assert fields["rule"] == "dlp:github-pat"
    assert fields["detail"]["ignored"] == [finding_fingerprint("github-pat", TOKEN.encode())]
    assert TOKEN not in repr(records)


def test_inspector_still_blocks_what_is_not_ignored() -> None:
    inspector, records = _inspector(Scanner(ignore_rules=["slack-token"]))
    with pytest.raises(Refusal):
        inspector.check_head("GET", "api.test", 443, "/?t=" + TOKEN, [])
    assert [decision for _, decision, _ in records] == ["deny"]


# --- configuration -------------------------------------------------------------------


def _load(tmp_path: Path, text: str) -> Any:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    user = tmp_path / "config.toml"
    user.write_text(text)
    return load_config(
        workspace=workspace,
        extra_file=None,
        allow=(),
        backend=None,
        known_backends=("namespace",),
        user_config=user,
        trust_store=TrustStore(tmp_path / "trusted.json"),
        warn=lambda message: None,
    )


def test_config_ignore_keys(tmp_path: Path) -> None:
    fingerprint = "0123456789abcdef"
    config = _load(
        tmp_path,
        "[dlp]\npatterns = [{name = 'team-token', regex = 'tt_[a-z0-9]{20}'}]\n"
        f"ignore = ['dlp:generic-secret', 'team-token']\nignore_fingerprints = ['{fingerprint}']\n",
    )
    assert config.dlp.ignore == ("generic-secret", "team-token")
    assert config.dlp.ignore_fingerprints == (fingerprint,)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[dlp]\nignore = ['nope']\n", "dlp.ignore[0]", "not a DLP rule id"),
        ("[dlp]\nignore = ['secret:HOME_TOKEN:raw']\n", "dlp.ignore[0]", "own secret"),
        ("[dlp]\nignore_fingerprints = ['abc']\n", "dlp.ignore_fingerprints[0]", "fingerprint"),
    ],
)
def test_config_ignore_errors(tmp_path: Path, text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert key in str(info.value) and words in str(info.value)


# --- claude-bottle dlp scan ----------------------------------------------------------


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.delenv("CLAUDE_BOTTLE_CONFIG", raising=False)
    (tmp_path / "ws").mkdir()
    monkeypatch.chdir(tmp_path / "ws")  # config files beside it, not in it: user files
    return tmp_path


def test_dlp_scan_prints_rule_offset_and_redaction_never_the_secret(isolated: Path) -> None:
    payload = isolated / "payload.json"
    payload.write_bytes(BODY)
    result = CliRunner().invoke(cli, ["dlp", "scan", str(payload)])
    assert result.exit_code == 1, result.output
    assert "dlp:github-pat" in result.output
    assert str(BODY.index(TOKEN.encode())) in result.output
    assert finding_fingerprint("github-pat", TOKEN.encode()) in result.output
    assert TOKEN not in result.output and TOKEN[4:12] not in result.output


def test_dlp_scan_reads_stdin_and_exits_0_when_clean(isolated: Path) -> None:
    result = CliRunner().invoke(cli, ["dlp", "scan", "-"], input="just some words\n")
    assert result.exit_code == 0, result.output
    assert "dlp:" not in result.output


def test_dlp_scan_honours_the_ignore_config(isolated: Path) -> None:
    extra = isolated / "extra.toml"
    extra.write_text("[dlp]\nignore = ['github-pat']\n")
    result = CliRunner().invoke(cli, ["dlp", "scan", "--config", str(extra), "-"], input=BODY)
    assert result.exit_code == 0, result.output
    assert "dlp:github-pat" in result.output and "ignored" in result.output
