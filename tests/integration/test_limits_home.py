"""`[bottle] disk` bounds the bottle's home too (issue 26), with the real mechanisms: an
ext4 image, loop-mounted as root, mounted with fuse2fs as a user who may open /dev/fuse
(for the docker engine, root, only where /etc/fuse.conf lets users mount allow_other);
where neither works, `run` says so. Also run as an unprivileged user by scripts/test.sh,
which gives /dev/fuse Debian's default mode for it, and runs the docker cases both
without and with user_allow_other.

Each write is bounded by the test (100 MiB), so a bottle whose limit failed cannot fill
the machine either.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from claude_bottle import home_image
from tests.integration.conftest import BottleEnv

WAIT = 60.0  # bound on every wait below
DISK = 64 << 20


def _configure(bottle_env: BottleEnv, extra: str = "") -> None:
    bottle_env.config.write_text(bottle_env.config.read_text() + f'[bottle]\ndisk = "64M"\n{extra}')


def _unbounded_because(bottle_env: BottleEnv) -> str | None:
    """Why claude-bottle's own plan leaves the home unbounded here, if it does."""
    shown = bottle_env.cli("plan", "--json", "--backend", bottle_env.backend, "--", "true")
    assert shown.returncode == 0, shown.stderr
    limits = json.loads(shown.stdout)["limits"]
    return next((u["reason"] for u in limits["unapplied"] if u["key"] == "disk"), None)


def _bounded_here(bottle_env: BottleEnv) -> None:
    if bottle_env.backend not in ("namespace", "docker"):
        pytest.skip(f"the {bottle_env.backend} backend does not size the home (plan says so)")
    reason = _unbounded_because(bottle_env)
    if reason is not None:
        pytest.skip(f"the home cannot be bounded here ({reason}): see the user tests below")


def _loops(image: Path) -> bool:
    """Whether a mount of the image lives: a loop device on it, or fuse2fs's lock."""
    return image.exists() and home_image.in_use(image)


def _gone(image: Path, home: Path) -> bool:
    """Whether nothing holds the image and the host has no mount of it, within WAIT (the
    kernel releases the loop device, and a fuse2fs daemon exits, as the bottle's last
    process exits)."""
    deadline = time.monotonic() + WAIT
    while (_loops(image) or home_image.is_mounted(home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _loops(image) and not home_image.is_mounted(home)


def test_a_write_past_disk_into_the_home_fails_inside_not_on_the_host(
    bottle_env: BottleEnv,
) -> None:
    _bounded_here(bottle_env)
    _configure(bottle_env)
    name = f"filler-{secrets.token_hex(4)}"
    result = bottle_env.sh(
        f'dd if=/dev/zero of="$HOME/{name}" bs=1M count=100; echo dd=$?; du -k "$HOME/{name}"'
    )
    assert "No space left on device" in result.stderr, result.stderr
    assert "dd=1" in result.stdout
    written_kib = int(result.stdout.split("dd=1")[1].split()[0])
    assert 0 < written_kib <= DISK // 1024  # what it wrote before ENOSPC
    image = bottle_env.state_dir() / "home.img"
    assert image.stat().st_size == DISK
    assert image.stat().st_blocks * 512 <= DISK  # the host's disk holds at most `disk`
    assert list(bottle_env.root.rglob(name)) == []  # only inside the image
    first = json.loads((bottle_env.state_dir() / "audit.jsonl").read_text().splitlines()[0])
    assert "ext4 image" in first["detail"]["limits"]["disk_mechanism"]  # the audit says how
    assert _gone(image, bottle_env.state_dir() / "home")


def test_the_home_keeps_its_files_between_runs(bottle_env: BottleEnv) -> None:
    _configure(bottle_env)
    home = bottle_env.state_dir() / "home"
    home.mkdir(parents=True)
    (home / "from-before").write_text("a home kept in a directory by an earlier version")
    first = bottle_env.sh('cat "$HOME/from-before"; echo run-1 > "$HOME/kept"')
    assert first.returncode == 0, first.stderr
    assert "an earlier version" in first.stdout  # migrated into the image, once
    second = bottle_env.sh('cat "$HOME/kept" "$HOME/from-before"')
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        "run-1",
        "a home kept in a directory by an earlier version",
    ]


def test_a_larger_disk_grows_the_home_and_a_smaller_one_than_it_holds_is_refused(
    bottle_env: BottleEnv,
) -> None:
    _bounded_here(bottle_env)
    _configure(bottle_env)
    filled = bottle_env.sh('head -c 40000000 /dev/zero > "$HOME/forty"; echo ok')
    assert "ok" in filled.stdout, filled.stderr
    base = bottle_env.config.read_text()
    bottle_env.config.write_text(base.replace('disk = "64M"', 'disk = "128M"'))
    grown = bottle_env.sh('df -k --output=size "$HOME" | tail -1; wc -c < "$HOME/forty"')
    assert grown.returncode == 0, grown.stderr
    size_kib, kept = (int(v) for v in grown.stdout.split())
    assert size_kib > 100_000 and kept == 40_000_000
    bottle_env.config.write_text(base.replace('disk = "64M"', 'disk = "16M"'))
    refused = bottle_env.sh("true")
    assert refused.returncode == 2, refused.stderr
    assert "[bottle] disk = 16M is less than" in refused.stderr and "bottle.disk" in refused.stderr
    # The refusal comes while the agent container starts (docker host placement runs it
    # before the home is mounted): none may be left running after it.
    assert _containers_of(bottle_env) == []


def _containers_of(bottle_env: BottleEnv) -> list[str]:
    """The docker containers carrying this test's own state-root label (none elsewhere)."""
    if bottle_env.backend != "docker":
        return []
    root = str(Path(bottle_env.env["CLAUDE_BOTTLE_STATE_DIR"]).resolve())
    label = f"claude-bottle.state={hashlib.sha256(root.encode()).hexdigest()[:12]}"
    listed = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()


def test_kill_9_of_the_cli_leaves_no_mount_no_loop_device_and_no_daemon(
    bottle_env: BottleEnv,
) -> None:
    _bounded_here(bottle_env)
    _configure(bottle_env)
    image = bottle_env.state_dir() / "home.img"
    process = bottle_env.start("touch started; exec sleep 60")
    started = bottle_env.workspace / "started"
    deadline = time.monotonic() + WAIT
    while not started.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the bottle never started"
        time.sleep(0.1)
    assert _loops(image)  # the bottle's own mount holds it
    assert not home_image.is_mounted(bottle_env.state_dir() / "home")  # the host's is gone
    process.kill()
    process.communicate(timeout=WAIT)
    assert _gone(image, bottle_env.state_dir() / "home")


def test_cleanup_removes_a_home_mount_left_by_a_start_killed_midway(
    bottle_env: BottleEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bounded_here(bottle_env)
    _configure(bottle_env)
    assert bottle_env.sh("true").returncode == 0
    home = bottle_env.state_dir() / "home"
    image = bottle_env.state_dir() / "home.img"
    home_image.mount(image, home)  # as a CLI killed between mount and detach leaves it
    try:
        listed = bottle_env.cli("cleanup", "--dry-run")
        assert f"home mount  {home}" in listed.stdout, listed.stdout
        for key in ("CLAUDE_BOTTLE_STATE_DIR", "CLAUDE_BOTTLE_RUNTIME_DIR"):
            monkeypatch.setenv(key, bottle_env.env[key])
        from claude_bottle.backend.namespace.backend import NamespaceBackend

        backend = NamespaceBackend()  # not `claude-bottle cleanup`: other suites' leftovers
        plan = backend.cleanup_plan(set())
        assert ("home mount", str(home)) in plan.items
        assert backend.cleanup(plan) == []
    finally:
        home_image.detach(home)
    assert _gone(image, home)


def test_as_a_user_run_says_the_home_is_not_bounded(bottle_env: BottleEnv) -> None:
    if bottle_env.backend not in ("namespace", "docker") or os.geteuid() == 0:
        pytest.skip("the unprivileged path (scripts/test.sh runs it as a user)")
    if _unbounded_because(bottle_env) is None:
        pytest.skip(f"this user's home is bounded here ({home_image.mounted_how()})")
    base = bottle_env.config.read_text()
    _configure(bottle_env)
    shown = bottle_env.cli("plan", "--json", "--backend", bottle_env.backend, "--", "true")
    limits = json.loads(shown.stdout)["limits"]
    assert "the home: not bounded" in limits["disk_mechanism"]
    assert any(u["key"] == "disk" for u in limits["unapplied"]), limits
    result = bottle_env.sh("true")
    assert result.returncode == 0, result.stderr
    assert "disk: the bottle's home is a host directory" in result.stderr
    bottle_env.config.write_text(base)
    _configure(bottle_env, "require_limits = true\n")
    refused = bottle_env.sh("true")
    assert refused.returncode == 3 and "require_limits" in refused.stderr


def test_the_image_is_not_reachable_from_inside(bottle_env: BottleEnv) -> None:
    _bounded_here(bottle_env)
    _configure(bottle_env)
    image = bottle_env.state_dir() / "home.img"
    probe = bottle_env.sh(
        f"ls -d {image} {image.parent} 2>&1; ls /dev | grep -c -e loop -e fuse; echo done",
    )
    assert "done" in probe.stdout, probe.stderr
    assert "No such file or directory" in probe.stdout  # the state dir is not shown
    assert probe.stdout.splitlines()[-2] == "0"  # no loop or FUSE device in the bottle's /dev
