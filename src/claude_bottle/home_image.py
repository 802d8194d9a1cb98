"""A bottle's home kept in a sized ext4 image (`[bottle] disk`), so that what the bottle
writes there fails with ENOSPC inside instead of filling the host's disk.

The image (`home.img`, sparse, `disk` bytes) lives in the bottle's state dir beside the
mount point (`home`), outside anything the bottle is shown. It is mounted at the mount
point for the start only: the CLI seeds the home there, the sandbox takes its own copy of
the mount (bind or idmapped clone), and then the host's mount is detached. From there on
only the bottle's mount namespace holds the filesystem, and when its last process ends the
filesystem goes with it, a kill -9 of the CLI included. A host mount left by a CLI killed
during the start is removed by `stop` and `cleanup` (`stale_mounts`).

Two ways to mount it: as host root, a loop mount (the kernel's ext4; the loop device is
autoclear, so it is freed with the filesystem); as a user, fuse2fs (ext4 in a user-space
daemon of that user, through FUSE, where /dev/fuse is open to users as Debian's udev
leaves it). The daemon holds a lock on the image until it has written its last block and
exited, which it does once no mount of its filesystem is left. A FUSE mount is open to
its user only, unless mounted `allow_other`, which a docker engine (root) needs and which
users may ask for only where /etc/fuse.conf says `user_allow_other`. `unavailable()` says
why neither way works here. Shared code: no backend is named here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from claude_bottle.errors import ConfigError, LaunchError, MissingDependency
from claude_bottle.limits import Unapplied, format_size

IMAGE_NAME = "home.img"
MECHANISM = "the home: an ext4 image of that size (home.img in the state dir), {how}"
LOOP_MOUNTED = "loop-mounted"
FUSE_MOUNTED = "mounted with fuse2fs"
TOOLS = ("mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs")
FUSE_FIX = (
    "apt-get install fuse2fs fuse3, and let users open /dev/fuse (mode 0666, as Debian's udev "
    "sets it); or run claude-bottle as root"
)
MNT_DETACH = 2
RELEASE_WAIT = 15.0  # for a mount of the image an ending sandbox still holds
TOOL_TIMEOUT = 120.0  # a check or resize of a large image is the slowest step
# No reserved blocks (the bottle gets all of `disk`); inode tables and the journal are
# left unwritten (zeroed lazily), so a new image takes ~4 MiB of the host's disk, not 64.
# mkfs.ext4 keeps only the last -E it is given: every extended option goes in this one.
MKFS_OPTIONS = ("-q", "-F", "-m", "0")
MKFS_EXTENDED = "lazy_itable_init=1,lazy_journal_init=1,nodiscard"
# The journal is written all through as the bottle works: mkfs's default for a 10G image
# (64 MiB) would take that much of the host's disk for an empty home. Smaller images get
# mkfs's own (at most 16 MiB).
JOURNAL_MIB = 16
JOURNAL_CAP_FROM = 1 << 30
MOUNT_OPTIONS = "loop,nosuid,nodev,errors=remount-ro"
# fusermount adds nosuid and nodev for a user's mount whatever is asked; asked all the same.
FUSE_OPTIONS = "nosuid,nodev"
# For a reader of another uid (a docker engine binding it): the kernel then checks the
# files' modes itself, for the engine and the bottle alike.
FUSE_OPTIONS_FOR_ROOT = "nosuid,nodev,allow_other,default_permissions"
FUSE_CONF = Path("/etc/fuse.conf")
ALLOW_OTHER_FIX = (
    "add a line user_allow_other to /etc/fuse.conf (the mount stays in your 0700 state dir), "
    "run claude-bottle as root, or use --backend namespace"
)
FUSE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # fuse2fs execs fusermount from PATH
INIT_USER_NS_MAP = ["0", "0", "4294967295"]
SBIN = "/usr/sbin:/sbin"
E2FSCK_CORRECTED = 3  # e2fsck's exit status bits for "clean" and "errors corrected"


def unavailable(*, for_root: bool = False) -> str | None:
    """Why this host cannot keep a bottle's home in an image; None when it can.
    `for_root`: root (a docker engine) must open the mount too."""
    missing = [name for name in TOOLS if tool(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed (fix: apt-get install e2fsprogs)"
    if loop_mounted():
        if tool("mount") is None:
            return "mount is not installed (fix: apt-get install mount)"
        if not Path("/dev/loop-control").exists():
            return "no /dev/loop-control: this kernel or container offers no loop devices"
        return None
    if not _in_initial_user_namespace():
        # fusermount's mount is refused there (the mount namespace is the host's).
        return "in a user namespace of its own, where neither loop devices nor FUSE mount"
    if tool("fuse2fs") is None or _fusermount() is None:
        return "loop devices need host root, and fuse2fs or fusermount is not installed"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "loop devices need host root, and this user may not open /dev/fuse"
    if for_root and not _users_may_allow_others():
        return (
            "loop devices need host root, and a user's FUSE mount is closed to the docker "
            "engine (root) unless /etc/fuse.conf has user_allow_other"
        )
    return None


def _users_may_allow_others() -> bool:
    try:
        lines = FUSE_CONF.read_text().splitlines()
    except OSError:
        return False
    return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in lines)


def mounted_how() -> str:
    return LOOP_MOUNTED if loop_mounted() else FUSE_MOUNTED


def disk_mechanism(
    tmpfs: str, backend_problem: str | None = None, *, for_root: bool = False
) -> tuple[str, tuple[Unapplied, ...]]:
    """How `disk` applies with a backend's sized `tmpfs`, and, when the home cannot be
    bounded here (or the backend cannot use a host mount: `backend_problem`), why; `run`
    prints it and `require_limits` refuses to start."""
    reason = unavailable(for_root=for_root) or backend_problem
    if reason is None:
        return f"{tmpfs}; {MECHANISM.format(how=mounted_how())}", ()
    home = f"the bottle's home is a host directory, bounded by the host's disk only ({reason})"
    return f"{tmpfs}; the home: not bounded", (Unapplied("disk", home),)


def doctor_line(backend_problem: str | None = None, *, for_root: bool = False) -> str:
    reason = unavailable(for_root=for_root) or backend_problem
    if reason is None:
        if loop_mounted():
            return "disk bounds the bottle's home: an ext4 image, loop-mounted (root)"
        return "disk bounds the bottle's home: an ext4 image, mounted with fuse2fs (this user)"
    fix = ALLOW_OTHER_FIX if for_root and unavailable() is None else FUSE_FIX
    return f"disk cannot bound the bottle's home: {reason}; fix: {fix}"


def mount_for_start(mount_point: Path, size: int, stack: contextlib.ExitStack) -> None:
    """The home's image, prepared and mounted at `mount_point` on the host for the start
    (the seeding writes there, the sandbox takes its own mount of it); the caller detaches
    it once the sandbox runs, the teardown at the latest."""
    detach(mount_point)  # left by a start that was killed before it detached
    image = prepare(mount_point, size)
    stack.callback(detach, mount_point)
    mount(image, mount_point)


def tool(name: str) -> str | None:
    """An e2fsprogs or util-linux binary: on PATH, or in the sbin dirs a user's PATH may lack."""
    return shutil.which(name) or shutil.which(name, path=SBIN)


def _fusermount() -> str | None:
    return shutil.which("fusermount3", path=FUSE_ENV["PATH"]) or shutil.which(
        "fusermount", path=FUSE_ENV["PATH"]
    )


def loop_mounted() -> bool:
    """Whether this process mounts the image itself (host root: a loop device), else
    through fuse2fs."""
    return os.geteuid() == 0 and _in_initial_user_namespace()


def _in_initial_user_namespace() -> bool:
    try:
        return Path("/proc/self/uid_map").read_text().split() == INIT_USER_NS_MAP
    except OSError:
        return False


def image_of(mount_point: Path) -> Path:
    return mount_point.with_name(IMAGE_NAME)


def prepare(mount_point: Path, size: int) -> Path:
    """The image for `mount_point`, `size` bytes: created (from what the mount point holds,
    once, then emptied), or resized to `size`, and checked. Returns its path."""
    image = image_of(mount_point)
    if not image.exists():
        _create(image, mount_point, size)
        return image
    if not _released(image):
        # Never a second mount beside one that lives on: two loop devices (or daemons)
        # over one file are two filesystems writing the same blocks.
        raise _still_in_use(image)
    if image.stat().st_size != size:
        _fsck(image, force=True)
        _resize(image, size)
    _fsck(image, force=False)
    return image


def mount(image: Path, mount_point: Path, *, for_root: bool = False) -> None:
    """Mount `image` at `mount_point`; `for_root`: open to root too (a docker engine)."""
    if loop_mounted():
        _run(["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(mount_point)], "mount")
    else:
        _mount_with_fuse2fs(image, mount_point, FUSE_OPTIONS_FOR_ROOT if for_root else FUSE_OPTIONS)
    try:
        # The kernel makes a FUSE root owned by uid 0 until its attributes are first read,
        # and default_permissions checks a chmod against that: read them.
        os.stat(mount_point)
        os.chmod(mount_point, 0o700)
    except OSError:
        detach(mount_point)  # never a mount left that nobody will detach
        raise


def _mount_with_fuse2fs(image: Path, mount_point: Path, options: str) -> None:
    """fuse2fs the image at `mount_point` as this user. The daemon inherits a descriptor
    of the image this process has locked (flock), and so holds the lock until it exits:
    `in_use` reads it, and no second daemon is ever started over the same file."""
    fuse2fs = tool("fuse2fs")
    if fuse2fs is None:
        raise MissingDependency("fuse2fs is not installed", FUSE_FIX)
    lock = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _still_in_use(image) from None
        # It daemonizes once mounted (stdio to /dev/null), so this returns then.
        result = subprocess.run(
            [fuse2fs, str(image), str(mount_point), "-o", options],
            pass_fds=(lock,),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            env=FUSE_ENV,
            cwd="/",
            check=False,
        )
    finally:
        os.close(lock)
    if result.returncode != 0 or not is_mounted(mount_point):
        raise LaunchError(
            f"fuse2fs could not mount the bottle's home: {_last_line(result)}", FUSE_FIX
        )


def detach(mount_point: Path) -> None:
    """Detach the host's mount of the home, if it has one (lazily: a sandbox's own copy of
    the mount keeps the filesystem until the sandbox ends)."""
    if not is_mounted(mount_point):
        return
    if not loop_mounted():
        fusermount = _fusermount()
        if fusermount is None:
            raise MissingDependency("fusermount is not installed", FUSE_FIX)
        result = subprocess.run(
            [fusermount, "-u", "-z", "--", str(mount_point)],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            env=FUSE_ENV,
            check=False,
        )
        if result.returncode != 0:
            raise LaunchError(
                f"cannot detach the bottle's home at {mount_point}: {_last_line(result)}"
            )
        return
    import ctypes

    # umount2(MNT_DETACH) itself: the umount binary would add ~30 ms to every start.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(mount_point), MNT_DETACH) != 0:
        error = ctypes.get_errno()
        raise LaunchError(f"cannot detach the bottle's home at {mount_point}: {os.strerror(error)}")


def preload() -> None:
    """Import what `detach` needs (ctypes and libffi, ~5 ms), for a caller that has time
    to spare now and will detach on a critical path later (once the sandbox runs)."""
    import ctypes  # noqa: F401


def is_mounted(mount_point: Path) -> bool:
    return str(mount_point) in _mount_targets()


def mounted_in(pid: int, target: str, mount_point: Path) -> bool:
    """Whether process `pid` sees, at `target` in its own mount namespace, the filesystem
    mounted at `mount_point` in this one (same device: the image's loop device)."""
    if not is_mounted(mount_point):
        return False  # the mount point's own filesystem would compare equal
    try:
        device = os.stat(mount_point).st_dev
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return False
    seen = None
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == target:
            seen = fields[2]  # the last mount at a path is the one in view
    return seen == f"{os.major(device)}:{os.minor(device)}"


def stale_mounts(homes: list[Path]) -> list[Path]:
    """Those of `homes` that are mounted in this mount namespace."""
    targets = _mount_targets()
    return [home for home in homes if str(home) in targets]


def _still_in_use(image: Path) -> LaunchError:
    return LaunchError(
        f"the bottle's home image {image} is still in use by another mount",
        "stop the bottle that uses it (claude-bottle ls), then run again",
    )


def _released(image: Path) -> bool:
    """Whether no loop device holds `image`, waiting RELEASE_WAIT for one to go: the
    kernel lets go of it once the last process of the sandbox that mounted it is gone,
    which for a container the engine has just removed can take a moment."""
    deadline = time.monotonic() + RELEASE_WAIT
    while in_use(image):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def in_use(image: Path) -> bool:
    """Whether a mount of `image` lives somewhere: a loop device is attached to it, or a
    fuse2fs daemon still holds its lock."""
    wanted = str(image.resolve())
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip().removesuffix(" (deleted)") == wanted:
                return True
        except OSError:
            continue
    return _locked(image)


def _locked(image: Path) -> bool:
    try:
        probe = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released as it is closed
    except BlockingIOError:
        return True
    finally:
        os.close(probe)
    return False


def _mount_targets() -> set[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return set()
    # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
    return {_unescape(line.split()[4]) for line in lines if len(line.split()) > 4}


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _create(image: Path, mount_point: Path, size: int) -> None:
    """mkfs.ext4 the image, seeded (-d) from what an earlier, directory-backed home holds;
    that directory is emptied only once the image holding its files is on disk."""
    for stale in image.parent.glob(f".{image.name}.*"):  # of a start killed during mkfs
        stale.unlink(missing_ok=True)
    partial = image.with_name(f".{image.name}.{os.getpid()}")
    # Owned by whoever mounts it: root (the idmapped bind shows it as the bottle's uid) or
    # the user whose fuse2fs serves it.
    owner = f"root_owner={os.getuid()}:{os.getgid()}"
    argv = ["mkfs.ext4", *MKFS_OPTIONS, "-E", f"{MKFS_EXTENDED},{owner}"]  # resolved by _run
    if size >= JOURNAL_CAP_FROM:
        argv += ["-J", f"size={JOURNAL_MIB}"]
    seeded = mount_point.is_dir() and any(mount_point.iterdir())
    if seeded:
        argv += ["-d", str(mount_point)]
    try:
        with partial.open("wb") as handle:
            handle.truncate(size)
        _run([*argv, str(partial), f"{size // 1024}K"], "mkfs.ext4", size_key=size)
        with partial.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, image)
    finally:
        partial.unlink(missing_ok=True)
    os.chmod(image, 0o600)
    if seeded:
        for entry in list(mount_point.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)  # does not follow links (the bottle made them)
            else:
                entry.unlink()


def _fsck(image: Path, *, force: bool) -> None:
    """Preen the image before the kernel mounts it (fast when it is clean): it holds what
    the bottle wrote, so a crash-damaged filesystem is repaired or refused, never mounted."""
    result = _call(["e2fsck", "-p", *(["-f"] if force else []), str(image)])
    if result.returncode & ~E2FSCK_CORRECTED:
        raise LaunchError(
            f"the bottle's home image {image} has errors e2fsck -p cannot repair "
            f"({_last_line(result)})",
            f"check it by hand: e2fsck -f {image}",
        )


def _resize(image: Path, size: int) -> None:
    current = image.stat().st_size
    if size > current:
        with image.open("rb+") as handle:
            handle.truncate(size)
    result = _call(["resize2fs", str(image), f"{size // 1024}K"])
    if result.returncode != 0:
        if size > current:
            with image.open("rb+") as handle:
                handle.truncate(current)
        used = _used_bytes(image)
        if size < current:
            raise ConfigError(
                f"[bottle] disk = {format_size(size)} is less than the bottle's home already "
                f"holds (about {format_size(used)} in {image})",
                "raise bottle.disk, or remove files from the bottle's home first",
            )
        raise LaunchError(f"cannot resize {image}: {_last_line(result)}", f"see {image}")
    if size < current:
        with image.open("rb+") as handle:
            handle.truncate(size)


def _used_bytes(image: Path) -> int:
    result = _call(["dumpe2fs", "-h", str(image)])
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in result.stdout.splitlines())
    )
    try:
        blocks, free = int(fields["Block count"]), int(fields["Free blocks"])
        return (blocks - free) * int(fields["Block size"])
    except (KeyError, ValueError):
        return 0


def _call(argv: list[str]) -> subprocess.CompletedProcess[str]:
    path = tool(argv[0])
    if path is None:
        raise MissingDependency(f"{argv[0]} is not installed", "apt-get install e2fsprogs mount")
    return subprocess.run(
        [path, *argv[1:]], capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
    )


def _run(argv: list[str], what: str, *, size_key: int | None = None) -> None:
    result = _call(argv)
    if result.returncode != 0:
        detail = _last_line(result)
        if size_key is not None:  # too small for ext4, or for the earlier home it holds
            raise ConfigError(
                f"the bottle's home cannot be made in [bottle] disk = "
                f"{format_size(size_key)} ({what}: {detail})",
                "raise bottle.disk",
            )
        raise LaunchError(f"{what} of the bottle's home failed: {detail}")


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"
