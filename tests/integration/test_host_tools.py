"""Issue 18 rows 4 and 6: nothing the bottle writes runs on the host, no setuid file leaves it.

Each test runs a real bottle through the CLI and then the host's real git (or a look at
the files) the way the user would, during the run and after it. Every command the bottle
configures writes `uname -n` to a marker file, so a line with the host's name means the
host ran it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration.conftest import BottleEnv

pytestmark = pytest.mark.integration

HOST = os.uname().nodename


def git(repo: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GIT_PAGER": "cat", "GIT_EDITOR": "true"},
        stdin=subprocess.DEVNULL,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {done.stderr}")
    return done.stdout


def make_repo(ws: Path) -> None:
    git(ws, "init", "-q", "-b", "main")
    git(ws, "config", "user.email", "user@host")
    git(ws, "config", "user.name", "user")
    (ws / "f").write_text("one\n")
    git(ws, "add", "f")
    git(ws, "commit", "-qm", "one")
    git(ws, "branch", "old")
    git(ws, "pack-refs", "--all")  # so packed and loose refs both occur
    git(ws, "branch", "loose")
    git(ws, "init", "-q", "--bare", "remote.git")


def host_ran(marker: Path) -> list[str]:
    lines = marker.read_text().split() if marker.exists() else []
    return [line for line in lines if line == HOST]


POISON = """
set -e
cd "$WS"
M="$WS/marker"
run="uname -n >> $M #"
git config core.fsmonitor "$run"
git config core.hooksPath "$WS/myhooks"
git config core.sshCommand "$run"
git config core.pager "$run"
git config core.editor "$run"
git config alias.st "!$run"
git config filter.evil.clean "$run"
git config filter.evil.smudge "$run"
git config diff.evil.textconv "$run"
mkdir -p myhooks
for h in pre-commit commit-msg post-checkout post-commit reference-transaction; do
  printf '#!/bin/sh\\nuname -n >> %s\\n' "$M" > .git/hooks/$h
  cp .git/hooks/$h myhooks/$h
  chmod +x .git/hooks/$h myhooks/$h
done
echo '*.evil filter=evil diff=evil' > .git/info/attributes
"""

# Last: after it, git in the bottle no longer finds its own repository either.
REDIRECT = """
mkdir -p evil-common && cp .git/config evil-common/config
echo "$WS/evil-common" > .git/commondir
"""

EVERYDAY = """
cd "$WS"
git config user.email agent@bottle
echo two >> f
git commit -qam two
git checkout -qb agent
echo three > g
git add g
git commit -qm three
git branch -d old
git remote add origin "$WS/remote.git"
git push -q -u origin agent
git branch --set-upstream-to=origin/agent agent
git checkout -q main && echo four > h && git add h && git commit -qm four
git checkout -q agent && git rebase -q main
echo stash >> f && git stash -q && git stash pop -q && git checkout -q -- f
git pack-refs --all
git gc -q
git fsck --strict 2>&1
echo "inside-agent=$(git rev-parse agent)"
echo "inside-main=$(git rev-parse main)"
"""


def _host_looks(ws: Path) -> None:
    """What a user's shell prompt and a glance at the repository run on the host."""
    git(ws, "status", check=False)
    git(ws, "st", check=False)
    git(ws, "log", "-1", check=False)
    git(ws, "diff", "HEAD", check=False)
    git(ws, "add", "-A", "--dry-run", check=False)


def _host_works(ws: Path) -> None:
    """What the user does next: commit, switch branches."""
    _host_looks(ws)
    (ws / "h.evil").write_text("host\n")
    git(ws, "add", "h.evil", check=False)
    git(ws, "commit", "-qm", "host", check=False)
    git(ws, "checkout", "-q", "-b", "host-branch", check=False)
    git(ws, "checkout", "-q", "-", check=False)


def test_bottle_git_config_and_hooks_never_run_on_the_host(bottle_env: BottleEnv) -> None:
    ws = bottle_env.workspace
    make_repo(ws)
    go = ws / "go"
    script = (
        f"WS={ws}\n{POISON}\n{EVERYDAY}\n{REDIRECT}\n"
        f"touch {ws}/ready\n"
        f"i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
    )
    (ws / "agent.sh").write_text(script)
    proc = bottle_env.start(f"sh {ws}/agent.sh")
    try:
        deadline = time.monotonic() + 60
        while not (ws / "ready").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (ws / "ready").exists(), proc.stderr.read() if proc.stderr else ""
        # During the run: the user's prompt runs `git status` (and more) on the host.
        _host_looks(ws)
        assert host_ran(ws / "marker") == []
        assert git(ws, "config", "--local", "--get", "user.email").strip() == "user@host"
    finally:
        go.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    inside = dict(line.split("=", 1) for line in out.splitlines() if line.startswith("inside-"))

    # After the run: the bottle's refs, HEAD and tracking came back, its config did not.
    assert git(ws, "rev-parse", "agent").strip() == inside["inside-agent"]
    assert git(ws, "rev-parse", "main").strip() == inside["inside-main"]
    assert git(ws, "symbolic-ref", "HEAD").strip() == "refs/heads/agent"
    assert "old" not in git(ws, "branch", "--list", "old")
    assert git(ws, "rev-parse", "loose").strip()  # a loose ref outlived pack-refs and gc
    assert git(ws, "status", "--porcelain", "--untracked-files=no").strip() == ""
    local = git(ws, "config", "--local", "--list")
    assert "user.email=agent@bottle" in local
    assert "branch.agent.remote=origin" in local
    assert "branch.agent.merge=refs/heads/agent" in local
    for key in ("fsmonitor", "hookspath", "sshcommand", "pager", "editor", "alias", "filter"):
        assert key not in local.lower()
    assert "remote.origin.url" not in local
    assert not (ws / ".git" / "commondir").exists()
    assert not (ws / ".git" / "info" / "attributes").exists()
    assert not (ws / ".git" / "hooks" / "pre-commit").exists()
    for what in ("core.fsmonitor", "core.hookspath", "remote.origin.url", "hooks/pre-commit"):
        assert what in err, err
    git(ws, "fsck", "--strict")
    git(ws, "gc", "-q")
    git(ws, "fsck", "--strict")
    assert git(ws, "rev-parse", "agent").strip() == inside["inside-agent"]

    _host_works(ws)
    assert host_ran(ws / "marker") == []

    # The next bottle sees the host's repository as it is now, and git keeps working.
    again = bottle_env.sh(f"cd {ws} && git fsck --strict && git gc -q && git log --oneline -1")
    assert again.returncode == 0, again.stderr
    git(ws, "fsck", "--strict")
    events = [
        json.loads(x) for x in (bottle_env.state_dir() / "audit.jsonl").read_text().splitlines()
    ]
    workspace_events = [e for e in events if e["kind"] == "workspace"]
    assert {"applied", "not applied"} <= {e["decision"] for e in workspace_events}


def test_git_dir_cannot_be_moved_or_replaced_from_inside(bottle_env: BottleEnv) -> None:
    ws = bottle_env.workspace
    make_repo(ws)
    result = bottle_env.sh(
        f"cd {ws} && mkdir fake && cp -r .git/. fake/ && "
        "(mv .git moved 2>/dev/null && echo moved-git); "
        "(mv -T fake .git 2>/dev/null && echo replaced-git); "
        "(mv -T fake/objects .git/objects 2>/dev/null && echo replaced-objects); true"
    )
    assert result.returncode == 0, result.stderr
    assert "moved-git" not in result.stdout
    assert "replaced-git" not in result.stdout
    assert "replaced-objects" not in result.stdout
    assert not (ws / "moved").exists()
    git(ws, "fsck", "--strict")
    assert git(ws, "rev-parse", "old").strip()


def test_a_dot_git_file_is_read_only_inside(bottle_env: BottleEnv, tmp_path: Path) -> None:
    ws = bottle_env.workspace
    main = tmp_path / "main"
    main.mkdir()
    make_repo(main)
    git(main, "worktree", "add", "-q", str(ws), "-b", "wt")
    tree = ws
    before = (tree / ".git").read_bytes()
    result = bottle_env.sh(
        f"cd {tree} && (echo 'gitdir: {ws}/evil' > .git) 2>/dev/null; "
        "(mv .git x 2>/dev/null && echo moved); true"
    )
    assert result.returncode == 0, result.stderr
    assert (tree / ".git").read_bytes() == before
    assert "moved" not in result.stdout


def test_host_tool_files_are_listed_at_exit_and_audited(bottle_env: BottleEnv) -> None:
    ws = bottle_env.workspace
    nested = ws / "vendor" / "lib"
    nested.mkdir(parents=True)
    make_repo(nested)
    result = bottle_env.sh(
        f"cd {ws} && echo 'echo hi' > .envrc && mkdir -p .vscode .claude && "
        "echo '{}' > .vscode/tasks.json && echo '{}' > .claude/settings.json && "
        "echo '* filter=x' > .gitattributes && echo 'x' > untracked-harmless.txt && "
        "git -C vendor/lib config core.fsmonitor 'uname -n >> marker #' && "
        "printf '#!/bin/sh\\n' > vendor/lib/.git/hooks/pre-commit"
    )
    assert result.returncode == 0, result.stderr
    for path in (
        ".envrc",
        ".vscode/tasks.json",
        ".claude/settings.json",
        ".gitattributes",
        "vendor/lib/.git/config",
        "vendor/lib/.git/hooks/pre-commit",
    ):
        assert f"host-file {path}: changed" in result.stderr, result.stderr
    assert "untracked-harmless" not in result.stderr
    events = [
        json.loads(x) for x in (bottle_env.state_dir() / "audit.jsonl").read_text().splitlines()
    ]
    listed = {e["path"] for e in events if e["rule"] == "workspace:host-file"}
    assert ".envrc" in listed
    assert "vendor/lib/.git/config" in listed


def test_host_tools_revert_puts_files_back(bottle_env: BottleEnv) -> None:
    ws = bottle_env.workspace
    bottle_env.write_config(bottle_env.config.read_text() + '\n[bottle]\nhost_tools = "revert"\n')
    (ws / ".vscode").mkdir()
    (ws / ".vscode" / "settings.json").write_text('{"user": true}\n')
    nested = ws / "sub"
    nested.mkdir()
    make_repo(nested)
    config_before = (nested / ".git" / "config").read_bytes()
    result = bottle_env.sh(
        f"cd {ws} && echo 'echo evil' > .envrc && "
        "echo '{\"evil\": true}' > .vscode/settings.json && "
        "git -C sub config core.fsmonitor 'uname -n >> marker #' && "
        "rm .vscode/settings.json && ln -s /etc/shadow .vscode/settings.json"
    )
    assert result.returncode == 0, result.stderr
    assert not (ws / ".envrc").exists()
    settings = ws / ".vscode" / "settings.json"
    assert not settings.is_symlink()
    assert settings.read_text() == '{"user": true}\n'
    assert (nested / ".git" / "config").read_bytes() == config_before
    assert "reverted" in result.stderr


def test_bad_host_tools_value_exits_2(bottle_env: BottleEnv) -> None:
    bottle_env.write_config(bottle_env.config.read_text() + '\n[bottle]\nhost_tools = "ignore"\n')
    result = bottle_env.sh("true")
    assert result.returncode == 2
    assert "bottle.host_tools" in result.stderr


SETUID = textwrap.dedent(
    """
    import os, shutil
    ws = os.environ.get("WS") or os.getcwd()
    for name, bits in (("suid", 0o4755), ("sgid", 0o2755)):
        path = os.path.join(ws, name)
        shutil.copy("/bin/true", path)
        try:
            os.chmod(path, bits)
            print("set", name)
        except OSError as exc:
            print("refused", name, exc.errno)
    cap = os.path.join(ws, "capped")
    shutil.copy("/bin/true", cap)
    # VFS_CAP_REVISION_2 with CAP_NET_RAW permitted+effective
    blob = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)
    try:
        os.setxattr(cap, "security.capability", blob)
        print("set capped")
    except OSError as exc:
        print("refused capped", exc.errno)
    """
)


def test_no_setuid_file_or_capability_leaves_the_bottle(bottle_env: BottleEnv) -> None:
    ws = bottle_env.workspace
    keep = ws / "users-own-setuid"
    keep.write_bytes(b"#!/bin/sh\n")
    keep.chmod(0o4755)
    past = time.time() - 3600
    os.utime(keep, (past, past))
    time.sleep(3)  # its change time stays before the launch, however coarse the clock
    result = bottle_env.py(SETUID)
    assert result.returncode == 0, result.stderr
    for name in ("suid", "sgid", "capped"):
        st = os.lstat(ws / name)
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), (name, result.stdout)
        with pytest.raises(OSError):
            os.getxattr(ws / name, "security.capability")
    for name in ("suid", "sgid"):
        if f"set {name}" in result.stdout:
            assert f"setuid {name}: cleared" in result.stderr, result.stderr
    assert keep.stat().st_mode & stat.S_ISUID  # the user's own file is left alone


def test_submodule_git_dirs_are_guarded_too(bottle_env: BottleEnv, tmp_path: Path) -> None:
    ws = bottle_env.workspace
    upstream = tmp_path / "lib"
    upstream.mkdir()
    make_repo(upstream)
    make_repo(ws)
    git(ws, "-c", "protocol.file.allow=always", "submodule", "-q", "add", str(upstream), "lib")
    git(ws, "commit", "-qm", "add lib")
    assert (ws / ".git" / "modules" / "lib" / "config").is_file()
    result = bottle_env.sh(
        f"cd {ws}/lib && git config core.fsmonitor 'uname -n >> {ws}/marker #' && "
        f"printf '#!/bin/sh\\nuname -n >> {ws}/marker\\n' > $(git rev-parse --git-dir)/hooks/"
        "post-checkout && chmod +x $(git rev-parse --git-dir)/hooks/post-checkout && "
        "git config user.email a@b && git config user.name a && "
        "echo sub >> f && git commit -qam sub && git checkout -qb subbranch && "
        "echo sub-head=$(git rev-parse HEAD)"
    )
    assert result.returncode == 0, result.stderr
    sub_head = result.stdout.split("sub-head=")[1].strip()
    git(ws, "status")  # recurses into the submodule: its config and hooks are the host's
    git(ws / "lib", "status")
    git(ws / "lib", "checkout", "-q", "main", check=False)
    assert host_ran(ws / "marker") == []
    sub_config = (ws / ".git" / "modules" / "lib" / "config").read_text()
    assert "fsmonitor" not in sub_config
    assert git(ws / "lib", "rev-parse", "subbranch").strip() == sub_head
    git(ws / "lib", "fsck", "--strict")


def test_a_repository_the_bottle_creates_is_not_the_hosts(bottle_env: BottleEnv) -> None:
    ws = bottle_env.workspace
    go = ws / "go"
    proc = bottle_env.start(
        f"cd {ws} && git init -q && git config core.fsmonitor 'uname -n >> {ws}/marker #' && "
        f"printf '#!/bin/sh\\nuname -n >> {ws}/marker\\n' > .git/hooks/post-checkout && "
        "chmod +x .git/hooks/post-checkout && git status >/dev/null && touch ready && "
        f"i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"
    )
    try:
        deadline = time.monotonic() + 60
        while not (ws / "ready").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (ws / "ready").exists(), proc.stderr.read() if proc.stderr else ""
        status = subprocess.run(
            ["git", "status"], cwd=ws, capture_output=True, text=True, timeout=30
        )
        assert status.returncode != 0  # no repository here for the host
        assert host_ran(ws / "marker") == []
    finally:
        go.touch()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not (ws / ".git").exists()
    assert "the bottle made a repository" in err


def test_a_detached_bottle_is_reported_when_stopped(bottle_env: BottleEnv) -> None:
    ws = bottle_env.workspace
    make_repo(ws)
    started = bottle_env.cli(
        "run",
        "--backend",
        bottle_env.backend,
        "--name",
        "t",
        "--detach",
        "--",
        "/bin/sh",
        "-c",
        f"cd {ws} && git config core.fsmonitor 'uname -n >> {ws}/marker #' && "
        "git checkout -qb detached && touch ready && sleep 120",
    )
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 60
    while not (ws / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (ws / "ready").exists()
    git(ws, "status")
    assert host_ran(ws / "marker") == []
    stopped = bottle_env.cli("stop", "t")
    assert stopped.returncode == 0, stopped.stderr
    assert "git config core.fsmonitor: not applied" in stopped.stderr
    assert git(ws, "symbolic-ref", "HEAD").strip() == "refs/heads/detached"
    assert "fsmonitor" not in git(ws, "config", "--local", "--list")
