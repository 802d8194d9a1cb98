"""The home image that `[bottle] disk` sizes (src/claude_bottle/home_image.py): made,
migrated, resized and checked with the real e2fsprogs on a file (no mount needed), and how
plan and doctor show it. Mounting is tested in tests/integration/test_limits_home.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from claude_bottle import home_image
from claude_bottle.backend.namespace import limits as ns_limits
from claude_bottle.cli import commands
from claude_bottle.errors import ConfigError, LaunchError, MissingDependency
from claude_bottle.limits import MIB, Limits

needs_e2fsprogs = pytest.mark.skipif(
    home_image.tool("mkfs.ext4") is None or home_image.tool("debugfs") is None,
    reason="e2fsprogs (mkfs.ext4, debugfs) is not installed",
)


def _cat(image: Path, path: str) -> str:
    """A file's content read from the image without mounting it."""
    result = subprocess.run(
        [str(home_image.tool("debugfs")), "-R", f"cat {path}", str(image)],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def _blocks(image: Path) -> int:
    return image.stat().st_blocks * 512


@needs_e2fsprogs
def test_a_new_image_is_sparse_and_holds_the_earlier_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_text('{"kept": true}')
    (home / "link").symlink_to("/etc/shadow")  # kept as a link, never followed
    image = home_image.prepare(home, 64 * MIB)
    assert image == tmp_path / "home.img"
    assert image.stat().st_size == 64 * MIB
    assert _blocks(image) < 16 * MIB  # sparse: no journal or inode tables written out
    assert oct(image.stat().st_mode & 0o777) == "0o600"
    assert _cat(image, "/.claude/settings.json") == '{"kept": true}'
    assert list(home.iterdir()) == []  # migrated once: the directory is emptied
    stat = subprocess.run(
        [str(home_image.tool("debugfs")), "-R", "stat /link", str(image)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert 'Fast link dest: "/etc/shadow"' in stat.stdout


@needs_e2fsprogs
def test_a_default_sized_image_takes_a_few_mib_of_the_host_disk(tmp_path: Path) -> None:
    # mkfs.ext4 keeps only the last -E it is given: a second one (root_owner) once dropped
    # lazy_journal_init, and every bottle's home then held its 16 MiB journal zeroed out.
    image = home_image.prepare(tmp_path / "home", Limits().disk)
    assert image.stat().st_size == Limits().disk
    assert _blocks(image) < 8 * MIB


@needs_e2fsprogs
def test_a_home_larger_than_disk_is_refused_naming_the_key_and_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "big").write_bytes(os.urandom(12 * MIB))
    with pytest.raises(ConfigError) as refused:
        home_image.prepare(home, 8 * MIB)
    assert "[bottle] disk = 8M" in refused.value.message and "bottle.disk" in refused.value.hint
    assert (home / "big").stat().st_size == 12 * MIB  # nothing lost
    assert not (tmp_path / "home.img").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["home"]  # no partial image left


@needs_e2fsprogs
def test_a_larger_disk_grows_the_image_and_keeps_its_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "keep").write_text("run 1")
    image = home_image.prepare(home, 32 * MIB)
    assert home_image.prepare(home, 96 * MIB) == image
    assert image.stat().st_size == 96 * MIB
    assert _cat(image, "/keep") == "run 1"
    home_image.prepare(home, 48 * MIB)  # shrinking to what still holds the files works
    assert image.stat().st_size == 48 * MIB
    assert _cat(image, "/keep") == "run 1"


@needs_e2fsprogs
def test_shrinking_below_what_the_home_holds_names_the_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "big").write_bytes(b"x" * (20 * MIB))
    image = home_image.prepare(home, 64 * MIB)
    with pytest.raises(ConfigError) as refused:
        home_image.prepare(home, 16 * MIB)
    assert "[bottle] disk = 16M is less than" in refused.value.message
    assert "bottle.disk" in refused.value.hint
    assert image.stat().st_size == 64 * MIB
    assert len(_cat(image, "/big")) == 20 * MIB


@needs_e2fsprogs
def test_a_damaged_image_is_refused_not_mounted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    image = home_image.prepare(home, 32 * MIB)
    with image.open("rb+") as handle:  # overwrite the superblock and the group descriptors
        handle.seek(1024)
        handle.write(b"\xff" * 8192)
    with pytest.raises(LaunchError) as refused:
        home_image.prepare(home, 32 * MIB)
    assert "e2fsck -p cannot repair" in refused.value.message


def test_mount_points_are_read_with_their_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    line = "36 35 7:0 / /state/bottles/a\\040b/home rw,nosuid - ext4 /dev/loop0 rw\n"
    monkeypatch.setattr(home_image, "_mount_targets", lambda: {"/state/bottles/a b/home"})
    homes = [Path("/state/bottles/a b/home"), Path("/state/bottles/c/home")]
    assert home_image.stale_mounts(homes) == [homes[0]]
    assert home_image._unescape(line.split()[4]) == "/state/bottles/a b/home"


def _as_a_user(monkeypatch: pytest.MonkeyPatch, *, fuse_device_open: bool) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1001)
    monkeypatch.setattr(home_image, "tool", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(home_image, "_fusermount", lambda: "/usr/bin/fusermount3")
    access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode: fuse_device_open if path == "/dev/fuse" else access(path, mode),
    )


def test_as_a_user_who_may_not_use_fuse_the_home_is_not_bounded_and_run_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _as_a_user(monkeypatch, fuse_device_open=False)
    reason = home_image.unavailable()
    assert reason is not None and "root" in reason and "/dev/fuse" in reason
    assert "mode 0666" in home_image.doctor_line()  # the fix
    plan, _ = ns_limits.confine("t", Limits(disk=64 * MIB))
    assert "the home: not bounded" in plan.disk_mechanism
    disk = [u for u in plan.unapplied if u.key == "disk"]
    assert disk and "host directory" in disk[0].reason and "root" in disk[0].reason
    assert any("disk cannot bound the bottle's home" in line for line in ns_limits.doctor_lines())

    class Plan:
        limits = plan

    commands._check_limits(Plan())  # type: ignore[arg-type]
    assert "disk: the bottle's home is a host directory" in capsys.readouterr().err
    with pytest.raises(MissingDependency):

        class Required:
            limits = plan._replace(require=True)

        commands._check_limits(Required())  # type: ignore[arg-type]


def test_as_a_user_who_may_use_fuse_the_home_is_an_image_fuse2fs_mounts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _as_a_user(monkeypatch, fuse_device_open=True)
    assert home_image.unavailable() is None
    plan, _ = ns_limits.confine("t", Limits(disk=64 * MIB))
    assert "ext4 image" in plan.disk_mechanism and "mounted with fuse2fs" in plan.disk_mechanism
    assert not [u for u in plan.unapplied if u.key == "disk"]
    assert any("mounted with fuse2fs (this user)" in line for line in ns_limits.doctor_lines())


@pytest.mark.parametrize("line", ["#user_allow_other", "", "user_allow_other  # for docker"])
def test_a_users_mount_for_a_docker_engine_needs_user_allow_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str
) -> None:
    """A FUSE mount is its user's only; the engine (root) that binds it into the container
    can open it only when it is mounted allow_other, which fuse.conf must let users ask."""
    _as_a_user(monkeypatch, fuse_device_open=True)
    conf = tmp_path / "fuse.conf"
    conf.write_text(f"# mount_max = 1000\n{line}\n")
    monkeypatch.setattr(home_image, "FUSE_CONF", conf)
    allowed = line.startswith("user_allow_other")
    mechanism, unapplied = home_image.disk_mechanism("tmpfs", for_root=True)
    assert home_image.disk_mechanism("tmpfs")[1] == ()  # for the user alone: bounded
    if allowed:
        assert unapplied == () and "mounted with fuse2fs" in mechanism
        return
    assert "not bounded" in mechanism and "user_allow_other" in unapplied[0].reason
    assert "add a line user_allow_other" in home_image.doctor_line(for_root=True)


def test_a_mount_for_root_asks_fuse2fs_for_allow_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _as_a_user(monkeypatch, fuse_device_open=True)
    calls: list[list[str]] = []

    def fuse2fs(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(
            argv,
            1,
            "",
            "fusermount: option allow_other only allowed if 'user_allow_other' is set in "
            "/etc/fuse.conf",
        )

    monkeypatch.setattr(subprocess, "run", fuse2fs)
    image = tmp_path / "home.img"
    image.write_bytes(b"")
    for for_root in (False, True):
        with pytest.raises(LaunchError, match="user_allow_other"):
            home_image.mount(image, tmp_path, for_root=for_root)
    assert [argv[-1] for argv in calls] == [
        home_image.FUSE_OPTIONS,
        "nosuid,nodev,allow_other,default_permissions",
    ]


def test_as_root_the_plan_names_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(home_image, "unavailable", lambda **_: None)
    monkeypatch.setattr(home_image, "loop_mounted", lambda: True)
    plan, _ = ns_limits.confine("t", Limits(disk=64 * MIB))
    assert "ext4 image" in plan.disk_mechanism
    assert not [u for u in plan.unapplied if u.key == "disk"]
    assert dict(plan.rows())["disk"].startswith("64M (")
    assert any("an ext4 image, loop-mounted" in line for line in ns_limits.doctor_lines())


@pytest.mark.parametrize("bounded", [True, False])
def test_the_namespace_plan_names_the_image_the_start_mounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bounded: bool
) -> None:
    from claude_bottle.backend.base import LaunchRequest
    from claude_bottle.backend.namespace.backend import NamespaceBackend
    from claude_bottle.config.model import Config

    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLAUDE_BOTTLE_RUNTIME_DIR", str(tmp_path / "rt"))
    monkeypatch.setattr(home_image, "unavailable", lambda **_: None if bounded else "needs root")
    (tmp_path / "ws").mkdir()
    plan = NamespaceBackend().plan(LaunchRequest("p", tmp_path / "ws", Config(), ("true",)))
    image = tmp_path / "state" / "bottles" / "p" / "home.img"
    data = json.loads(plan.to_json())
    if bounded:
        assert plan.home_image == data["home_image"] == str(image)
        assert f"{image}, mounted as the home ([bottle] disk)" in plan.render()
        assert plan.bwrap.home_source == str(image.with_name("home"))  # the mount point
    else:
        assert plan.home_image is None and data["home_image"] is None
        assert data["limits"]["unapplied"][-1]["key"] == "disk"
        assert "home image" not in plan.render()


@needs_e2fsprogs
def test_an_image_another_mount_still_holds_is_never_mounted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home_image.prepare(home, 32 * MIB)
    monkeypatch.setattr(home_image, "in_use", lambda image: True)
    monkeypatch.setattr(home_image, "RELEASE_WAIT", 0.2)
    with pytest.raises(LaunchError, match="still in use"):
        home_image.prepare(home, 32 * MIB)


def test_mounted_in_compares_the_device_a_process_sees_at_a_path(tmp_path: Path) -> None:
    me = os.getpid()
    assert home_image.mounted_in(me, "/", Path("/"))  # this process's own root
    assert not home_image.mounted_in(me, "/no/such/mount/point", Path("/"))
    # A directory that is no mount point never counts: its device is its parent's.
    assert not home_image.mounted_in(me, "/", tmp_path)
    assert not home_image.mounted_in(2**22 + 7, "/", Path("/"))  # no such process


def test_an_image_whose_lock_a_process_holds_is_in_use_until_it_exits(tmp_path: Path) -> None:
    """How a fuse2fs daemon's hold on the image is seen (it inherits a locked descriptor)."""
    image = tmp_path / "home.img"
    image.write_bytes(b"")
    assert not home_image.in_use(image)
    # util-linux's flock(2) around a sleep that inherits the locked descriptor, as the daemon
    holder = subprocess.Popen(["flock", str(image), "sleep", "30"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not home_image.in_use(image):
            assert time.monotonic() < deadline, "the lock was never seen"
            time.sleep(0.02)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while home_image.in_use(image):  # the sleep may outlive flock by a moment
        assert time.monotonic() < deadline, "the lock outlived its holders"
        time.sleep(0.02)
