"""The policy a bottle ran with, as `resume` checks it (issue 27, row 6 / item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_bottle.cli import policy_record
from claude_bottle.cli.policy_record import PolicyInputs
from claude_bottle.config import Config, TrustStore, load_config

EXTRA = """
[egress]
mode = "ask"
deny = ["denied.test"]
[dlp]
patterns = [{ name = "itk", regex = "itk_[A-Za-z0-9]{8}" }]
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    extra = tmp_path / "extra.toml"
    extra.write_text(EXTRA)
    return workspace, extra


def _load(workspace: Path, extra: Path, allow: tuple[str, ...] = ("flag.test",)) -> Config:
    return load_config(
        workspace=workspace,
        extra_file=extra,
        allow=allow,
        known_backends=("namespace",),
        user_config=workspace.parent / "no-user-config.toml",
        trust_store=TrustStore(workspace.parent / "trusted.json"),
        warn=lambda _: None,
    )


def test_the_record_keeps_inputs_sources_and_the_effective_policy(
    files: tuple[Path, Path],
) -> None:
    workspace, extra = files
    config = _load(workspace, extra)
    record = policy_record.record(config, PolicyInputs(str(extra), ("flag.test",)))
    record = json.loads(json.dumps(record))  # as read back from bottle.json
    assert policy_record.inputs_of(record) == PolicyInputs(str(extra), ("flag.test",))
    assert [s["path"] for s in record["sources"]] == [str(extra)]
    assert record["effective"]["egress"]["mode"] == "ask"
    assert record["effective"]["egress"]["deny"] == ["denied.test"]
    assert policy_record.changes(record, _load(workspace, extra)) == []


def test_a_changed_source_is_named(files: tuple[Path, Path]) -> None:
    workspace, extra = files
    record = policy_record.record(_load(workspace, extra), PolicyInputs(str(extra), ()))
    extra.write_text(EXTRA.replace('"ask"', '"enforce"'))
    assert policy_record.changes(record, _load(workspace, extra)) == [f"{extra} changed"]


def test_a_source_no_longer_honoured_is_named(files: tuple[Path, Path]) -> None:
    workspace, extra = files
    record = policy_record.record(_load(workspace, extra), PolicyInputs(str(extra), ()))
    (changed,) = policy_record.changes(record, Config())
    assert str(extra) in changed and "no longer honoured" in changed


def test_the_same_files_giving_another_policy_is_a_change(files: tuple[Path, Path]) -> None:
    workspace, extra = files
    record = policy_record.record(_load(workspace, extra), PolicyInputs(str(extra), ()))
    different = _load(workspace, extra, allow=("other.test",))
    assert policy_record.changes(record, different) != []


@pytest.mark.parametrize(
    "policy",
    [{}, {"allow": "x"}, {"allow": [1]}, {"allow": [], "config_file": 5}],
)
def test_a_malformed_record_has_no_inputs(policy: dict[str, object]) -> None:
    assert policy_record.inputs_of(policy) is None
