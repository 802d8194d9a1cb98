"""`[gateway]` switches for API features that carry data out, and its prompt-DLP mode:
validated with the file and key named, carried to the bundle, shown in `plan`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from claude_bottle.backend.base import gateway_features
from claude_bottle.config.model import GatewayConfig
from tests.unit.test_config import Env


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.delenv("CLAUDE_BOTTLE_CONFIG", raising=False)


def test_defaults_refuse_the_networked_features_and_keep_web_search() -> None:
    gateway = GatewayConfig()
    assert gateway_features(gateway) == ("web_search",)
    assert gateway.dlp == "audit"


def test_switches_and_dlp_mode_are_read(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.write_user(
        "[gateway]\nmcp_servers = true\nweb_fetch = true\nweb_search = false\n"
        'files = true\ndlp = "block"\n'
    )
    gateway = env.load().gateway
    assert gateway_features(gateway) == ("mcp_servers", "web_fetch", "files")
    assert gateway.dlp == "block"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[gateway]\ndlp = "maybe"\n', "gateway.dlp", "expected one of audit, block"),
        ("[gateway]\nmcp_servers = 1\n", "gateway.mcp_servers", "expected a boolean"),
        ('[gateway]\nweb_search = "no"\n', "gateway.web_search", "expected a boolean"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    from claude_bottle.errors import ConfigError

    env = Env(tmp_path)
    env.write_user(text)
    with pytest.raises(ConfigError) as caught:
        env.load()
    assert caught.value.message.startswith(f"{env.user}: {key}: "), caught.value.message
    assert problem in caught.value.message
    assert caught.value.hint


def test_plan_shows_what_the_gateway_refuses(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nweb_search = false\ndlp = "block"\n')
    workspace = tmp_path / "ws"
    workspace.mkdir()
    argv = [sys.executable, "-m", "claude_bottle", "plan", "--backend", "namespace"]
    result = subprocess.run(
        [*argv, "--config", str(config)],
        cwd=workspace,
        env={**os.environ, "ANTHROPIC_API_KEY": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    refused = next(line for line in result.stdout.splitlines() if "refused" in line)
    for feature in ("mcp_servers", "web_fetch", "web_search", "files"):
        assert f"{feature} ([gateway] {feature} = true)" in refused
    assert any(
        "prompt secrets" in line and "refused" in line for line in result.stdout.splitlines()
    )
