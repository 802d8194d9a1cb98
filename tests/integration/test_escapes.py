"""Escapes an attacker inside the bottle tried (issue 18), each one a test that must hold.

Every test runs the real CLI, a real sandbox and the real bundle, on every backend
available here, whoever runs the suite: scripts/test.sh runs it as root and again as an
unprivileged user. A probe that would change the host if the escape worked (a sysctl)
writes back the value it read, so a failure here leaves the machine as it was. No test
prints what it read from a host secret: failures say only that it was readable.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from claude_bottle.state import process_alive
from tests.integration.conftest import BottleEnv

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

SYSCALL_PROBE = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def call(*args):
    result = libc.syscall(*args)
    return "ok" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
"""


def _host_uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError(f"no Uid line for {pid}")


def test_mounts_cannot_be_changed_to_write_the_host(bottle_env: BottleEnv) -> None:
    probe = Path("/etc") / f"claude-bottle-escape-{os.getpid()}"
    result = bottle_env.sh(
        "umount -l /tmp 2>&1; mount -o remount,rw,bind / 2>&1; "
        f"touch {probe} 2>&1; umount /root 2>&1; echo done"
    )
    try:
        assert "done" in result.stdout, result.stderr
        assert not probe.exists(), "a host file outside the workspace was created from inside"
    finally:
        probe.unlink(missing_ok=True)


def test_host_secrets_cannot_be_read(bottle_env: BottleEnv) -> None:
    result = bottle_env.sh("cat /etc/shadow 2>/dev/null; ls -a /root 2>/dev/null; true")
    shadow = Path("/etc/shadow").read_text() if os.access("/etc/shadow", os.R_OK) else ""
    root_entries = set(os.listdir("/root")) if os.access("/root", os.R_OK) else set()
    leaked_shadow = bool(shadow) and shadow.strip() in result.stdout
    leaked_home = bool(root_entries - {".", ".."}) and root_entries <= set(result.stdout.split())
    assert not leaked_shadow, "the host's /etc/shadow was readable inside"
    assert not leaked_home, "the real /root was listable inside"


def test_sysctls_cannot_be_written(bottle_env: BottleEnv) -> None:
    # Writes back what it reads: harmless if it works, and on a failing backend it did.
    result = bottle_env.sh(
        "v=$(cat /proc/sys/kernel/core_pattern) && "
        'printf "%s\\n" "$v" > /proc/sys/kernel/core_pattern && echo WROTE || echo REFUSED'
    )
    assert "REFUSED" in result.stdout, (result.stdout, result.stderr)


def test_the_control_socket_is_out_of_reach(bottle_env: BottleEnv) -> None:
    control = Path(bottle_env.env["CLAUDE_BOTTLE_RUNTIME_DIR"]) / "t" / "control.sock"
    result = bottle_env.py(f"""
        import os, socket, subprocess
        subprocess.run(["umount", "-l", "/tmp"], capture_output=True)
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect({str(control)!r})
            s.sendall(b'{{"op": "allow", "host": "escape.test"}}\\n')
            print("REACHED", s.recv(4096))
        except OSError as exc:
            print("UNREACHABLE", exc.errno)
    """)
    assert "UNREACHABLE" in result.stdout, (result.stdout, result.stderr)
    audit = (bottle_env.state_dir() / "audit.jsonl").read_text()
    assert "escape.test" not in audit


def test_claude_bottles_own_dirs_in_the_workspace_are_hidden(bottle_env: BottleEnv) -> None:
    """Run from $HOME, the default state and cache dirs are inside the workspace. Before
    the guard covered them, the bottle read its audit log (and other bottles'), its home
    image and the CA keys minted ahead, appended to its audit log, and could have left
    a compiled DLP database for its next bundle to load."""
    state = bottle_env.workspace / ".local" / "state" / "claude-bottle"
    cache = bottle_env.workspace / ".cache" / "claude-bottle"
    bottle_env.env["CLAUDE_BOTTLE_STATE_DIR"] = str(state)
    bottle_env.env["CLAUDE_BOTTLE_CACHE_DIR"] = str(cache)
    result = bottle_env.sh(
        f"(cd {state} && ls -A; cd {cache} && ls -A); cat {state}/bottles/t/audit.jsonl; "
        f"echo x >> {state}/bottles/t/audit.jsonl; touch {state}/x {cache}/x; echo ran"
    )
    assert result.returncode == 0 and "ran" in result.stdout, result.stderr
    audit = state / "bottles" / "t" / "audit.jsonl"
    assert "bundle-start" in audit.read_text()  # the host wrote it where the bottle ran
    assert result.stdout.split() == ["ran"], result.stdout  # nothing listed, nothing read
    assert not (state / "x").exists() and not (cache / "x").exists()
    assert not audit.read_text().endswith("x\n")
    verified = bottle_env.cli("audit", "verify", str(audit))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_no_capability_and_never_host_root(bottle_env: BottleEnv) -> None:
    proc = bottle_env.start("grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status; sleep 60")
    try:
        assert proc.stdout is not None
        caps = dict(proc.stdout.readline().split() for _ in range(5))
        assert set(caps.values()) == {"0000000000000000"}, caps
        record = json.loads((bottle_env.state_dir() / "bottle.json").read_text())
        relay = record["processes"].get("bottle")
        if bottle_env.backend == "namespace":
            assert _host_uid_of(int(relay["pid"])) != 0, "the bottle runs as host uid 0"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe's syscall numbers")
def test_seccomp_denies_what_the_bottle_never_needs(bottle_env: BottleEnv) -> None:
    result = bottle_env.py(
        SYSCALL_PROBE
        + """
import fcntl, termios
print("unshare", call(272, 0x10000000))          # unshare(CLONE_NEWUSER)
print("open_tree", call(428, -100, b"/", 0))      # open_tree(AT_FDCWD, "/", 0)
print("io_uring", call(425, 1, 0))                # io_uring_setup(1, NULL)
print("keyctl", call(250, 0, -3, 0))              # keyctl(GET_KEYRING_ID, session)
print("setxattr", call(188, b".", b"security.capability", b"x", 1, 0))
fd = os.open(os.devnull, os.O_RDONLY)
try:
    fcntl.ioctl(fd, termios.TIOCSTI, b"x")
    print("tiocsti ok")
except OSError as exc:
    print("tiocsti", errno.errorcode[exc.errno])
"""
    )
    lines = dict(line.split() for line in result.stdout.splitlines())
    assert lines == {
        "unshare": "EPERM",
        "open_tree": "ENOSYS",
        "io_uring": "EPERM",
        "keyctl": "EPERM",
        "setxattr": "ENOTSUP",  # file capabilities: the filter cannot read the name
        "tiocsti": "EPERM",  # ENOTTY without the filter: /dev/null is no terminal
    }, (result.stdout, result.stderr)


def test_nested_sandbox_allows_user_namespaces_when_asked(bottle_env: BottleEnv) -> None:
    if bottle_env.backend != "namespace":
        pytest.skip("the engine decides about user namespaces in a container")
    bottle_env.write_config(bottle_env.config.read_text() + "\n[bottle]\nnested_sandbox = true\n")
    result = bottle_env.sh("unshare -U true && echo NESTED")
    assert "NESTED" in result.stdout, result.stderr
    plan = bottle_env.cli("plan", "--backend", bottle_env.backend, "--name", "t")
    assert "nested sandbox" in plan.stdout and "ON" in plan.stdout, plan.stdout


def test_no_setuid_file_can_be_made_in_the_workspace(bottle_env: BottleEnv) -> None:
    result = bottle_env.py(
        SYSCALL_PROBE
        + """
import shutil
shutil.copy("/bin/sh", "x")
for how, act in (
    ("chmod", lambda: os.chmod("x", 0o4755)),
    ("setgid", lambda: os.chmod("x", 0o2755)),
    ("open", lambda: os.close(os.open("y", os.O_CREAT | os.O_WRONLY, 0o4755))),
):
    try:
        act()
        print(how, "ok")
    except OSError as exc:
        print(how, errno.errorcode[exc.errno])
"""
    )
    assert result.stdout.split() == ["chmod", "EPERM", "setgid", "EPERM", "open", "EPERM"], (
        result.stdout,
        result.stderr,
    )
    for name in ("x", "y"):
        path = bottle_env.workspace / name
        if path.exists():
            assert not path.stat().st_mode & (stat.S_ISUID | stat.S_ISGID), name


def test_process_one_cannot_be_traced(bottle_env: BottleEnv) -> None:
    result = bottle_env.py(
        SYSCALL_PROBE
        + """
print("attach", call(101, 16, 1, 0, 0))  # ptrace(PTRACE_ATTACH, 1)
os.kill(1, 19)  # SIGSTOP: the kernel drops it for process 1 of a pid namespace
try:
    os.close(os.open("/proc/1/mem", os.O_RDONLY))
    print("mem ok")
except OSError as exc:
    print("mem", "refused" if exc.errno in (errno.EACCES, errno.EPERM) else exc.errno)
"""
    )
    assert result.stdout.split() == ["attach", "EPERM", "mem", "refused"], (
        result.stdout,
        result.stderr,
    )
    assert result.returncode == 0  # the relay still answered after the SIGSTOP


def test_run_stops_on_the_second_sigterm_whatever_the_command_does(bottle_env: BottleEnv) -> None:
    proc = bottle_env.start("trap '' INT TERM HUP; echo started; while :; do sleep 1; done")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    record = json.loads((bottle_env.state_dir() / "bottle.json").read_text())
    # The first is forwarded and ignored. Two signals sent at once may arrive as one (they do
    # not queue), so the request is repeated until run answers, a bounded number of times.
    status = None
    for _ in range(60):
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(1)
            break
        except subprocess.TimeoutExpired:
            continue
    if status is None:
        proc.kill()
        raise AssertionError("run ignored repeated SIGTERMs")
    assert status == 128 + signal.SIGTERM, proc.stderr.read() if proc.stderr else ""
    deadline = time.monotonic() + 30
    while any(process_alive(ref) for ref in record["processes"].values()):
        assert time.monotonic() < deadline, "the bottle outlived run"
        time.sleep(0.1)


def _warm_sockets(directory: Path, timeout: float = 30.0) -> list[Path]:
    """The sockets of the warm processes (src/claude_bottle/cli/warm.py) in `directory`,
    once the run before has started one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(directory.glob("*.sock"))
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no warm process made a socket in {directory}")


def test_the_warm_process_serves_no_bottle(bottle_env: BottleEnv) -> None:
    """A bottle that reached the warm process could have it start a bottle with any policy.
    Its directory is in the host's /tmp or runtime dir, which no bottle sees; here it is
    put where a namespace bottle's read-only view of / shows it, so that a connection can
    be tried: the caller is in other namespaces, and it is refused."""
    runtime = Path(tempfile.mkdtemp(prefix=".test-runtime-", dir=ROOT))
    bottle_env.env["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        assert bottle_env.sh("true").returncode == 0  # a warm process exists after this run
        sockets = [str(path) for path in _warm_sockets(runtime / "claude-bottle-warm")]
        probe = bottle_env.root / "warm-escape"
        result = bottle_env.py(f"""
            import os, socket
            for path in {sockets!r}:
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(path)
                    request = b"\\0".join([b"claude-bottle-warm-1", b"", b"18", b"", b"3",
                        b"claude-bottle", b"run", b"touch {probe}"])
                    s.sendall(len(request).to_bytes(4, "big") + request)
                    print("ANSWER", s.recv(4096))
                except OSError as exc:
                    print("UNREACHABLE", exc.errno)
        """)
        assert result.returncode == 0, result.stderr
        assert "pid" not in result.stdout, result.stdout
        assert not probe.exists()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)  # its warm process leaves with it
