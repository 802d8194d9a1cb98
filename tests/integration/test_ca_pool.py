"""The pool of CAs minted ahead, with a real bottle: the bottle never sees the pool
(another bottle's future CA key), its bundle takes one CA out of it, and `run` tops
the pool up again."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.bottle_env import SYSTEM_CA_BUNDLE
from claude_bottle.bundle import ca_pool
from tests.integration.conftest import BottleEnv
from tests.integration.tls_upstream import TLSUpstream

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state_outside_tmp(bottle_env: BottleEnv) -> Iterator[Path]:
    # Not under /tmp, /home or /root, which every bottle gets empty anyway: a state dir
    # the bottle's read-only view of / would show but for the pool's own mask.
    state = Path(tempfile.mkdtemp(prefix=".test-state-", dir=ROOT))
    bottle_env.env["CLAUDE_BOTTLE_STATE_DIR"] = str(state)
    yield state
    shutil.rmtree(state, ignore_errors=True)


@pytest.mark.parametrize("backend", ["namespace"], indirect=True)
def test_a_bottle_cannot_see_the_pool_and_its_bundle_takes_one_ca(
    bottle_env: BottleEnv, state_outside_tmp: Path
) -> None:
    pool = state_outside_tmp / "ca-pool"
    ca_pool.refill(pool, size=ca_pool.REFILL_BELOW)  # one claim and it runs low
    before = set(ca_pool.entries(pool))
    # Covered by an empty tmpfs, or (a bottle of another uid) not to be entered.
    done = bottle_env.sh(f"ls -A {pool} 2>&1; cat {pool}/*{ca_pool.SUFFIX} 2>&1; echo ran")
    assert done.returncode == 0 and "ran" in done.stdout, done.stderr
    assert "PRIVATE KEY" not in done.stdout
    assert not any(name in done.stdout for name in before), done.stdout
    after = set(ca_pool.entries(pool))
    assert len(before - after) == 1  # the bundle took one, and only one
    deadline = time.monotonic() + 60  # the refiller runs in the background
    while len(ca_pool.entries(pool)) < ca_pool.POOL_SIZE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(ca_pool.entries(pool)) == ca_pool.POOL_SIZE


@pytest.mark.parametrize("backend", ["namespace"], indirect=True)
def test_a_bottle_trusts_the_pooled_ca_its_bundle_claimed(
    bottle_env: BottleEnv, tmp_path: Path
) -> None:
    upstream = TLSUpstream(tmp_path, "tls.test")
    try:
        bottle_env.write_config(f"""
            [egress]
            allow = ["tls.test"]
            upstream_ca_file = "{upstream.ca_file}"
            [egress.resolve]
            "tls.test" = "127.0.0.1:{upstream.port}"
        """)
        pool = Path(bottle_env.env["CLAUDE_BOTTLE_STATE_DIR"]) / "ca-pool"
        ca_pool.refill(pool, size=ca_pool.POOL_SIZE)
        certs = {
            name: json.loads((pool / name).read_text())["cert"] for name in ca_pool.entries(pool)
        }
        done = bottle_env.sh(
            "curl -sS -o /dev/null -w '%{http_code}\\n' --max-time 10 https://tls.test/ok; "
            f"cat {SYSTEM_CA_BUNDLE}"
        )
        assert done.stdout.split()[0] == "200", done.stdout + done.stderr
        (taken,) = set(certs) - set(ca_pool.entries(pool))  # one CA left the pool
        assert done.stdout.rstrip().endswith(certs[taken].rstrip())  # and the bottle trusts it
    finally:
        upstream.close()
