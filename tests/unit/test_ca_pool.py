"""CAs minted ahead (bundle/ca_pool.py): each one used by one bundle only, never one
that someone else could have written or read, and published as a minted one is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from claude_bottle.bundle import ca_pool
from claude_bottle.bundle.server import open_bundle
from claude_bottle.bundle.settings import BundleSettings
from tests.unit.loaded_modules import modules_after
from tests.unit.test_tls import _handshake


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    directory = tmp_path / "ca-pool"
    assert ca_pool.refill(directory, size=2) == 2
    return directory


def test_refill_keeps_keys_private_and_stops_at_the_size(pool: Path) -> None:
    assert os.stat(pool).st_mode & 0o777 == 0o700
    names = ca_pool.entries(pool)
    assert len(names) == 2
    for name in names:
        assert os.stat(pool / name).st_mode & 0o777 == 0o600
    assert ca_pool.refill(pool, size=2) == 0


def test_each_ca_is_claimed_once_and_leaves_the_disk(pool: Path) -> None:
    # Claimers racing: no entry may reach two of them (a claimed file once still looked
    # like an entry to the next claimer, who took it again).
    for _ in range(5):
        ca_pool.refill(pool, size=4)
        start = threading.Barrier(16)
        claims: list[ca_pool.PooledCA | None] = []

        def claimer(start: threading.Barrier, claims: list[ca_pool.PooledCA | None]) -> None:
            start.wait()
            claims.append(ca_pool.claim(pool))

        threads = [threading.Thread(target=claimer, args=(start, claims)) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        taken = [c.key_pem for c in claims if c is not None]
        assert len(taken) == len(set(taken)) == 4
        assert os.listdir(pool) == [ca_pool.LOCK]  # no key left behind


@pytest.mark.parametrize("attack", ["group-readable", "symlink", "foreign", "old", "garbage"])
def test_an_entry_someone_else_could_have_made_or_read_is_not_used(
    pool: Path, tmp_path: Path, attack: str
) -> None:
    for name in ca_pool.entries(pool)[1:]:
        os.unlink(pool / name)
    (entry,) = (pool / name for name in ca_pool.entries(pool))
    if attack == "group-readable":
        os.chmod(entry, 0o640)
    elif attack == "symlink":  # to a CA the attacker knows
        planted = tmp_path / "planted.ca"
        os.rename(entry, planted)
        os.symlink(planted, entry)
    elif attack == "foreign":
        if os.getuid() != 0:
            pytest.skip("needs root to give the file away")
        os.chown(entry, 65534, 65534)
    elif attack == "old":
        past = time.time() - 2 * ca_pool.MAX_AGE_S
        os.utime(entry, (past, past))
    else:
        entry.write_text(json.dumps({"cert": "x", "key": "y", "java_truststore": "%%%"}))
    assert ca_pool.claim(pool) is None
    assert ca_pool.entries(pool) == []  # taken out of the pool all the same


def test_a_pool_directory_others_may_enter_is_not_used(pool: Path) -> None:
    os.chmod(pool, 0o755)
    assert ca_pool.claim(pool) is None
    assert len(ca_pool.entries(pool)) == 2


def test_a_bundle_publishes_and_intercepts_with_a_pooled_ca(pool: Path, tmp_path: Path) -> None:
    entry = json.loads((pool / ca_pool.entries(pool)[0]).read_text())
    settings = BundleSettings(
        bottle="pooled",
        proxy_socket=str(tmp_path / "proxy.sock"),
        control_socket=str(tmp_path / "control.sock"),
        audit_log=str(tmp_path / "audit.jsonl"),
        allow=(),
        intercept=True,
        ca_cert=str(tmp_path / "ca.pem"),
        ca_bundle=str(tmp_path / "ca-bundle.pem"),
        ca_pool=str(pool),
    )
    opened = open_bundle(settings)
    try:
        published = (tmp_path / "ca.pem").read_bytes()
        assert published == entry["cert"].encode()
        assert (tmp_path / "ca-bundle.pem").read_bytes().endswith(published)
        assert len(ca_pool.entries(pool)) == 1  # one claimed, one left
        assert opened.interception is not None
        tls = _handshake(opened.interception.authority, "pooled.test", tmp_path / "ca.pem")  # type: ignore[arg-type]
        assert tls.version() is not None
        tls.close()
    finally:
        opened.close()


def test_without_a_pooled_ca_the_bundle_mints_its_own(tmp_path: Path) -> None:
    empty = tmp_path / "empty-pool"
    settings = BundleSettings(
        bottle="minted",
        proxy_socket=str(tmp_path / "proxy.sock"),
        control_socket=str(tmp_path / "control.sock"),
        audit_log=str(tmp_path / "audit.jsonl"),
        allow=(),
        intercept=True,
        ca_cert=str(tmp_path / "ca.pem"),
        ca_pool=str(empty),
    )
    opened = open_bundle(settings)
    try:
        assert b"BEGIN CERTIFICATE" in (tmp_path / "ca.pem").read_bytes()
        assert opened.interception is not None
        tls = _handshake(opened.interception.authority, "minted.test", tmp_path / "ca.pem")  # type: ignore[arg-type]
        tls.close()
    finally:
        opened.close()


def test_a_pooled_bundle_is_ready_without_cryptography(pool: Path, tmp_path: Path) -> None:
    settings = BundleSettings(
        bottle="light",
        proxy_socket=str(tmp_path / "proxy.sock"),
        control_socket=str(tmp_path / "control.sock"),
        audit_log=str(tmp_path / "audit.jsonl"),
        allow=(),
        intercept=True,
        ca_cert=str(tmp_path / "ca.pem"),
        ca_pool=str(pool),
    )
    settings.dump(tmp_path / "bundle.json")
    loaded = modules_after(
        "from pathlib import Path\n"
        "from claude_bottle.bundle.server import open_bundle\n"
        "from claude_bottle.bundle.settings import BundleSettings\n"
        f"open_bundle(BundleSettings.load(Path({str(tmp_path / 'bundle.json')!r}))).close()"
    )
    assert "claude_bottle.bundle.ca_pool" in loaded
    assert not {name for name in loaded if name.startswith("cryptography")}


def test_a_config_without_dlp_ignores_does_not_load_the_patterns(tmp_path: Path) -> None:
    loaded = modules_after(
        "from pathlib import Path\n"
        "from claude_bottle.config.load import load_config\n"
        f"load_config(workspace=Path({str(tmp_path)!r}), known_backends=['namespace'],"
        f" user_config=Path({str(tmp_path / 'none.toml')!r}))"
    )
    assert "claude_bottle.config.load" in loaded
    assert "claude_bottle.policy.dlp_patterns" not in loaded


def test_the_refiller_runs_only_on_idle_cores() -> None:
    """It starts beside a bottle's start, which on two cores it would slow (SCHED_IDLE)."""

    code = (
        "import os; from claude_bottle.bundle import ca_pool; ca_pool._yield_to_everything(); "
        "print(os.sched_getscheduler(0) == os.SCHED_IDLE)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr
