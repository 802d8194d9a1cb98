"""Start bubblewrap for a bottle launched by root, so that the bottle never runs as host uid 0.

Usage (run by root as ``python3 -I -S unprivileged_exec.py``; stdlib only)::

    unprivileged_exec.py --host-id ID [--wait-fd FD] [--idmap PATH ...] -- bwrap ARGS...

With ``--wait-fd``, it makes its user namespaces and then waits until it reads ``g``
from FD (the CLI makes the bottle's home meanwhile); anything else, or the CLI gone,
and it leaves (status 125) having staged nothing.

Without it, bubblewrap started by root maps the bottle's uid to host uid 0: the agent
reads /etc/shadow, and with its capabilities in the new user namespace it can unmount
what hides the host. Here, instead:

1. A user namespace that maps only ID to itself is made for the bottle; bubblewrap
   joins it (``--userns``) and switches to ID inside (``--uid``/``--gid`` on its
   command line), so every process of the bottle is host uid ID with no capabilities
   over anything the host owns.
2. Each ``--idmap`` path (the workspace, the bottle's home and exec dir, granted
   read-only paths) is covered, in a mount namespace of this process only, by an
   idmapped mount (``open_tree`` + ``mount_setattr(MOUNT_ATTR_IDMAP)`` + ``move_mount``)
   in which files of host uid/gid 0 appear as ID and files ID creates are written as 0:
   the workspace stays writable and the user's files keep their owner.
3. Supplementary groups are dropped and bubblewrap is executed; it resolves its bind
   sources as root in the new mount namespace, so it binds the idmapped mounts.

Exit status 3 with one line on stderr when this kernel or a filesystem cannot do it.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

# The new mount API has the same numbers on every architecture the bottle's seccomp filter
# is defined for (x86_64 and aarch64 use the unified table from 5.2 on).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOUNT_ATTR_IDMAP = 0x00100000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
AT_RECURSIVE = 0x8000
MS_PRIVATE = 0x40000
EXIT_UNSUPPORTED = 3
USAGE = (
    "unprivileged_exec.py --host-id ID [--wait-fd FD] --stage-root DIR "
    "[--stage KIND:PATH ...] -- bwrap ..."
)
EXIT_ABANDONED = 125  # the launch was given up before `go`
HOST_ROOT = 0  # the on-disk owner that the idmapped mounts show as the bottle's uid

_libc = ctypes.CDLL(None, use_errno=True)


class MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


class Unsupported(Exception):
    pass


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise Unsupported(f"{what}: {os.strerror(err)}")
    return result


def user_namespace(outer: int, inner: int) -> int:
    """An fd for a new user namespace whose uid and gid `inner` are host `outer`."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the namespace lives as long as one process is in it: this one, briefly
        os.close(ready_r)
        os.close(done_w)
        code = 0 if _libc.unshare(CLONE_NEWUSER) == 0 else 1
        os.write(ready_w, b"x")
        os.read(done_r, 1)
        os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        os.read(ready_r, 1)
        mapping = f"{inner} {outer} 1\n"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as handle:
                handle.write(mapping)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise Unsupported(f"cannot create a user namespace: {exc.strerror}") from None
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(done_w)


def cloned_tree(path: str, userns_fd: int | None) -> int:
    """A detached copy of the mount at `path` (idmapped through `userns_fd` if given)."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC
    if userns_fd is None:
        flags |= AT_RECURSIVE  # like bubblewrap's own binds
    tree = _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), flags), f"open_tree {path}")
    if userns_fd is not None:
        attr = MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _check(
            _libc.syscall(
                SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)
            ),
            f"idmapped mount of {path} (mount_setattr MOUNT_ATTR_IDMAP)",
        )
    return tree


def stage(trees: list[tuple[str, int]], root: str) -> None:
    """Mount a tmpfs over `root` in a mount namespace of our own, and the i-th (path, tree)
    at root/i/path."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _check(
        _libc.mount(b"tmpfs", root.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755"),
        f"tmpfs on {root}",
    )
    for index, (path, tree) in enumerate(trees):
        target = f"{root}/{index}{path}"
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        if stat.S_ISDIR(os.fstat(tree).st_mode):
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        _check(
            _libc.syscall(
                SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH
            ),
            f"move_mount onto {target}",
        )
        os.close(tree)


def _go(fd: int) -> bool:
    """Whether the CLI says go (`g`) on `fd`; EOF (it gave up, or died) or an error: no."""
    try:
        word = os.read(fd, 1)
    except OSError:
        word = b""
    finally:
        os.close(fd)
    return word == b"g"


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    options, command = argv[:split], argv[split + 1 :]
    host_id = 0
    wait_fd = -1
    stage_root = ""
    sources: list[tuple[str, str]] = []
    pairs = iter(options)
    for name in pairs:
        value = next(pairs, "")
        if name == "--host-id" and value.isdigit():
            host_id = int(value)
        elif name == "--wait-fd" and value.isdigit():
            wait_fd = int(value)
        elif name == "--stage-root":
            stage_root = value
        elif name == "--stage" and value.partition(":")[0] in ("idmap", "plain"):
            kind, _, path = value.partition(":")
            sources.append((kind, path))
        else:
            print(f"usage: {USAGE}", file=sys.stderr)
            return 2
    if not host_id or not stage_root or not command:
        print(f"usage: {USAGE} (a host id other than 0)", file=sys.stderr)
        return 2
    try:
        bottle_ns = user_namespace(host_id, host_id)
        disk_ns = user_namespace(host_id, HOST_ROOT)
        if wait_fd >= 0 and not _go(wait_fd):
            return EXIT_ABANDONED
        trees = [
            (path, cloned_tree(path, disk_ns if kind == "idmap" else None))
            for kind, path in sources
        ]
        os.close(disk_ns)
        stage(trees, stage_root)
    except Unsupported as exc:
        print(
            f"claude-bottle: cannot run the bottle as an unprivileged uid: {exc} "
            "(needs Linux 5.12+ and idmapped mount support in that filesystem)",
            file=sys.stderr,
        )
        return EXIT_UNSUPPORTED
    os.setgroups([])
    os.set_inheritable(bottle_ns, True)
    os.execvp(command[0], [command[0], "--userns", str(bottle_ns), *command[1:]])
    return 127  # not reached: execvp raises on failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
