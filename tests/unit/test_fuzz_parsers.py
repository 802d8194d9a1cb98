"""The parser fuzz targets (tests/fuzz/) under hypothesis: a few thousand derandomised
inputs each, the same every run, so a failure reproduces. `scripts/fuzz.sh` runs the
same targets for a million inputs each under atheris.

Each example must finish within a second (hypothesis fails a slower one after running
it again to rule out a hiccup); pytest-timeout cuts a true hang. pytest runs with
`-p no:hypothesispytest`, so the settings here are all there is. The bugs the fuzzers
found have their own regression tests at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from claude_bottle.bundle.gate import parse_authority
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.config.load import load_config
from claude_bottle.errors import ConfigError
from tests.fuzz.targets import TARGETS

EXAMPLES = 2000  # per target; the whole file stays well under a minute


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name: str) -> None:
    target: Callable[[bytes], None] = TARGETS[name]

    @settings(
        max_examples=EXAMPLES,
        deadline=timedelta(seconds=1),
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.binary(max_size=1024))
    def run(data: bytes) -> None:
        target(data)

    run()


# -- regressions: what the fuzzers found -------------------------------------------------


@pytest.mark.parametrize("port", ["²", "١٢", "٤٤٣", "８０"])
def test_non_ascii_digits_are_no_port(port: str) -> None:
    # str.isdigit passes them; int() then raised ValueError ("²") or read "٤٤٣" as 443
    with pytest.raises(Refusal) as caught:
        parse_authority(f"a.test:{port}", 443)
    assert caught.value.rule == "deny:bad-port"


def _load(tmp_path: Path, text: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text, encoding="utf-8")
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    load_config(workspace=workspace, user_config=config, known_backends=("namespace",))


@pytest.mark.parametrize("section", ["egress", "gateway"])
@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/" + "d/" * 3000 + "ca.pem", "cannot be read"),  # ENAMETOOLONG was an OSError
        ("~no-such-user-fuzz/ca.pem", "no such user"),  # expanduser's RuntimeError
    ],
)
def test_unreadable_ca_file_is_a_config_error(
    tmp_path: Path, section: str, path: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f'[{section}]\nupstream_ca_file = "{path}"\n')
    assert f"{section}.upstream_ca_file" in str(caught.value)
    assert problem in str(caught.value)


@pytest.mark.parametrize("key", ["anthropic_upstream", "oauth_token_url"])
def test_malformed_ipv6_url_is_a_config_error(tmp_path: Path, key: str) -> None:
    # urlsplit raises ValueError("Invalid IPv6 URL") on these
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f'[gateway]\n{key} = "https://[::1/"\n')
    assert f"gateway.{key}" in str(caught.value)
