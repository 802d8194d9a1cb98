"""workspace_guard on the host alone: real git, real files, hostile contents; no bottle.

The shadow git dir is changed here the way a bottle would change it (git run on it, or
files planted in it); `finish` must carry back only what is safe and never follow a link.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from claude_bottle import workspace_guard
from claude_bottle.config import load_config
from claude_bottle.errors import ConfigError
from claude_bottle.workspace_guard import git_shadow, host_files, safefs
from claude_bottle.workspace_guard.sweep import sweep


def git(repo: Path, *args: str, git_dir: Path | None = None) -> str:
    prefix = ["git", "-C", str(repo)]
    env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b"}
    env |= {"GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b"}
    if git_dir is not None:  # the bottle's view: its own git dir, the real objects bound in
        prefix += ["--git-dir", str(git_dir), "--work-tree", str(repo)]
        env["GIT_OBJECT_DIRECTORY"] = str(repo / ".git" / "objects")
    return subprocess.run(
        [*prefix, *args], capture_output=True, text=True, check=True, env=env
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    git(ws, "init", "-q", "-b", "main")
    git(ws, "config", "user.email", "user@host")
    (ws / "f").write_text("one\n")
    git(ws, "add", "f")
    git(ws, "commit", "-qm", "one")
    git(ws, "branch", "side")
    return ws


def launch(ws: Path, tmp_path: Path, mode: str = "warn") -> workspace_guard.GuardPlan:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    plan = workspace_guard.plan_guard(str(ws), str(state), mode)
    workspace_guard.prepare(plan)
    return plan


def lines(findings: list[workspace_guard.Finding]) -> list[str]:
    return [f.line() for f in findings]


def test_plan_mounts_the_shadow_then_the_shared_objects(repo: Path, tmp_path: Path) -> None:
    plan = workspace_guard.plan_guard(str(repo), str(tmp_path), "warn")
    git_dir = str(repo / ".git")
    assert plan.mounts[0] == workspace_guard.GitMount(plan.shadow, git_dir, False)
    assert workspace_guard.GitMount(f"{git_dir}/objects", f"{git_dir}/objects", False) in (
        plan.mounts
    )
    assert not any(m.source.endswith(("/config", "/hooks", "/refs")) for m in plan.mounts)


def test_our_own_dirs_inside_the_workspace_are_covered_last_and_read_only(
    repo: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    own = repo / ".local" / "state" / "claude-bottle"
    (repo / "cache").mkdir()
    link = repo / "cache-link"  # a root named through a symlink is covered where it is
    link.symlink_to(repo / "cache")
    plan = workspace_guard.plan_guard(
        str(repo), str(state), "warn", (str(own), str(tmp_path / "elsewhere"), str(link))
    )
    assert plan.covered == (str(own), str(repo / "cache"))
    cover = str(state / workspace_guard.COVER_DIR)
    assert plan.mounts[-2:] == (
        workspace_guard.GitMount(cover, str(own), True),
        workspace_guard.GitMount(cover, str(repo / "cache"), True),
    )
    assert ("hidden", f"{own}, {repo / 'cache'} (claude-bottle's own)") in plan.describe()
    workspace_guard.prepare(plan)
    assert os.listdir(cover) == [] and stat.S_IMODE(os.stat(cover).st_mode) == 0o700
    outside = workspace_guard.plan_guard(str(repo), str(state), "warn", (str(tmp_path / "x"),))
    assert outside.covered == () and not any(m.source == cover for m in outside.mounts)


def test_a_workspace_inside_our_own_dirs_is_refused(tmp_path: Path) -> None:
    ws = tmp_path / "state" / "bottles" / "ws"
    ws.mkdir(parents=True)
    with pytest.raises(ConfigError, match="inside claude-bottle's own directory") as refused:
        workspace_guard.plan_guard(str(ws), str(tmp_path / "s"), "warn", (str(tmp_path / "state"),))
    assert "CLAUDE_BOTTLE_STATE_DIR" in refused.value.hint


def test_a_symlinked_dot_git_is_refused(tmp_path: Path, repo: Path) -> None:
    ws = tmp_path / "other"
    ws.mkdir()
    (ws / ".git").symlink_to(repo / ".git")
    with pytest.raises(Exception, match="symlink"):
        workspace_guard.plan_guard(str(ws), str(tmp_path), "warn")


def test_refs_head_and_allowlisted_config_come_back(repo: Path, tmp_path: Path) -> None:
    plan = launch(repo, tmp_path)
    shadow = Path(plan.shadow)
    (repo / "f").write_text("two\n")
    git(repo, "commit", "-qam", "two", git_dir=shadow)
    git(repo, "checkout", "-qb", "agent", git_dir=shadow)
    git(repo, "branch", "-D", "side", git_dir=shadow)
    git(repo, "config", "user.email", "agent@bottle", git_dir=shadow)
    git(repo, "config", "branch.agent.remote", "origin", git_dir=shadow)
    git(repo, "config", "core.fsmonitor", "touch pwned", git_dir=shadow)
    git(repo, "config", "alias.st", "!touch pwned", git_dir=shadow)
    git(repo, "pack-refs", "--all", git_dir=shadow)
    new_main = git(repo, "rev-parse", "main", git_dir=shadow).strip()

    report = lines(workspace_guard.finish(plan.state_dir))

    assert git(repo, "rev-parse", "main").strip() == new_main
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/agent"
    assert "side" not in git(repo, "branch")
    assert git(repo, "status", "--porcelain").strip() == ""  # index follows the new HEAD
    config = git(repo, "config", "--local", "--list")
    assert "user.email=agent@bottle" in config and "branch.agent.remote=origin" in config
    assert "fsmonitor" not in config and "alias" not in config
    assert "git config core.fsmonitor: not applied (not an allowlisted key)" in report
    assert "git config alias.st: not applied (not an allowlisted key)" in report
    assert not shadow.exists()  # everything came back: nothing left to keep


def test_a_ref_the_host_moved_too_is_kept_not_overwritten(repo: Path, tmp_path: Path) -> None:
    plan = launch(repo, tmp_path)
    shadow = Path(plan.shadow)
    git(repo, "commit", "-q", "--allow-empty", "-m", "bottle", git_dir=shadow)
    git(repo, "commit", "-q", "--allow-empty", "-m", "host")
    host_main = git(repo, "rev-parse", "main").strip()
    report = lines(workspace_guard.finish(plan.state_dir))
    assert git(repo, "rev-parse", "main").strip() == host_main
    assert "git ref refs/heads/main: not applied (it also changed on the host)" in report
    assert shadow.is_dir()  # the bottle's commit is still named there


def test_hostile_shadow_files_are_not_followed(repo: Path, tmp_path: Path) -> None:
    plan = launch(repo, tmp_path)
    shadow = Path(plan.shadow)
    secret = tmp_path / "secret"
    secret.write_text("[user]\n\temail = leaked@secret\n")
    (shadow / "config").unlink()
    (shadow / "config").symlink_to(secret)
    (shadow / "refs" / "heads" / "main").unlink()
    (shadow / "refs" / "heads" / "main").symlink_to(secret)
    (shadow / "HEAD").unlink()
    os.mkfifo(shadow / "HEAD")  # a read that would block forever
    before = git(repo, "config", "--local", "--list")
    report = lines(workspace_guard.finish(plan.state_dir))
    assert git(repo, "config", "--local", "--list") == before
    assert "leaked" not in " ".join(report)
    assert "git config config: not applied (not a regular file any more)" in report


def test_hooks_and_info_changed_in_the_bottle_are_listed(repo: Path, tmp_path: Path) -> None:
    plan = launch(repo, tmp_path)
    hook = Path(plan.shadow) / "hooks" / "post-checkout"
    hook.write_text("#!/bin/sh\ntouch pwned\n")
    hook.chmod(0o755)
    (Path(plan.shadow) / "info" / "attributes").write_text("* filter=x\n")
    report = lines(workspace_guard.finish(plan.state_dir))
    assert "git hooks hooks/post-checkout: not applied (host-executed)" in report
    assert "git info info/attributes: not applied (host-executed)" in report
    assert not (repo / ".git" / "hooks" / "post-checkout").exists()


@pytest.mark.parametrize(
    ("path", "watched"),
    [
        (".envrc", True),
        ("sub/.envrc", True),
        (".vscode/tasks.json", True),
        (".claude/settings.local.json", True),
        ("a/.gitattributes", True),
        (".gitmodules", True),
        ("vendor/x/.git/config", True),
        ("vendor/x/.git/hooks/pre-commit", True),
        ("vendor/x/.git", True),
        ("vendor/x/.git/objects/ab/cdef", False),
        (".git/config", False),  # the guarded git dir: a mount covers it
        ("src/main.py", False),
        ("myhooks/pre-commit", True),  # the host's core.hooksPath points here
    ],
)
def test_watched_paths(path: str, watched: bool) -> None:
    assert host_files.Watch(".git", ("myhooks",)).watched(path) is watched


def test_sweep_clears_new_setuid_and_capabilities_and_follows_no_link(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    outside = tmp_path / "outside-setuid"
    outside.write_bytes(b"x")
    outside.chmod(0o4755)
    (ws / "link").symlink_to(outside)
    since = time.time_ns() - 1_000_000_000
    suid = ws / "d" / "suid"
    suid.parent.mkdir()
    suid.write_bytes(b"x")
    suid.chmod(0o6755)
    capped = ws / "capped"
    capped.write_bytes(b"x")
    blob = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)
    try:
        os.setxattr(capped, "security.capability", blob)
        has_caps = True
    except OSError:
        has_caps = False  # not root: only the bits are tested
    result = sweep(str(ws), since)
    assert not suid.stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert outside.stat().st_mode & stat.S_ISUID  # a link is never followed
    assert "d/suid" in result.cleared
    if has_caps:
        assert "capped" in result.cleared
        with pytest.raises(OSError):
            os.getxattr(capped, "security.capability")


def test_sweep_leaves_files_older_than_the_launch(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.write_bytes(b"x")
    own.chmod(0o4755)
    result = sweep(str(tmp_path), time.time_ns() + 10**9)
    assert result.cleared == [] and own.stat().st_mode & stat.S_ISUID


def test_revert_restores_through_no_symlink(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".vscode").mkdir(parents=True)
    (ws / ".vscode" / "settings.json").write_text("user\n")
    watch = host_files.Watch(None)
    saved = host_files.snapshot(str(ws), watch)
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / ".vscode" / "settings.json").unlink()
    (ws / ".vscode").rmdir()
    (ws / ".vscode").symlink_to(outside)  # the bottle swapped the directory for a link
    (ws / ".envrc").write_text("evil\n")
    _, failed = host_files.revert(str(ws), saved, [".vscode/settings.json", ".envrc", ".vscode"])
    assert not (outside / "settings.json").exists()
    assert ".vscode/settings.json" in failed
    assert not (ws / ".envrc").exists()


def test_safefs_reads_no_link_and_no_fifo(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "fifo")
    assert safefs.read_beneath(str(tmp_path), "real", 10) == b"x"
    assert safefs.read_beneath(str(tmp_path), "link", 10) is None
    assert safefs.read_beneath(str(tmp_path), "fifo", 10) is None
    assert safefs.read_beneath(str(tmp_path), "../etc/passwd", 10) is None


def test_unparsable_refs_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "refs" / "heads").mkdir(parents=True)
    (tmp_path / "refs" / "heads" / "ok").write_text("a" * 40 + "\n")
    (tmp_path / "refs" / "heads" / "bad").write_text("not a ref\n")
    (tmp_path / "packed-refs").write_text(f"# pack-refs\n{'b' * 40} refs/tags/t\n^{'c' * 40}\n")
    assert git_shadow.read_refs(str(tmp_path), "") == {
        "refs/heads/ok": "a" * 40,
        "refs/tags/t": "b" * 40,
    }


def test_host_tools_must_be_warn_or_revert(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"  # a --config file outside the workspace
    (tmp_path / "ws").mkdir()
    config.write_text('[bottle]\nhost_tools = "revert"\n')
    assert (
        load_config(
            workspace=tmp_path / "ws", extra_file=config, known_backends=("namespace",)
        ).bottle.host_tools
        == "revert"
    )
    config.write_text('[bottle]\nhost_tools = "off"\n')
    with pytest.raises(ConfigError, match=r"bottle\.host_tools"):
        load_config(workspace=tmp_path / "ws", extra_file=config, known_backends=("namespace",))


def test_carried_keys_take_only_harmless_values(repo: Path, tmp_path: Path) -> None:
    plan = launch(repo, tmp_path)
    shadow = Path(plan.shadow)
    git(repo, "config", "branch.main.remote", "ext::sh -c touch% pwned", git_dir=shadow)
    git(repo, "config", "branch.main.merge", "refs/heads/main", git_dir=shadow)
    git(repo, "config", "user.signingkey", "-oops", git_dir=shadow)
    report = lines(workspace_guard.finish(plan.state_dir))
    config = git(repo, "config", "--local", "--list")
    assert "branch.main.remote" not in config and "signingkey" not in config
    assert "branch.main.merge=refs/heads/main" in config
    assert "git config branch.main.remote: not applied (an unexpected value)" in report
    assert "git config user.signingkey: not applied (not an allowlisted key)" in report


def test_many_new_refs_come_back_in_one_transaction(repo: Path, tmp_path: Path) -> None:
    plan = launch(repo, tmp_path)
    shadow = Path(plan.shadow)
    head = git(repo, "rev-parse", "HEAD").strip()
    lines_in = "".join(f"create refs/tags/t{i} {head}\n" for i in range(300))
    subprocess.run(
        ["git", "--git-dir", str(shadow), "update-ref", "--stdin"],
        input=lines_in,
        text=True,
        check=True,
        env={**os.environ, "GIT_OBJECT_DIRECTORY": str(repo / ".git" / "objects")},
    )
    report = lines(workspace_guard.finish(plan.state_dir))
    assert len(git(repo, "tag").split()) == 300
    assert sum("applied" in line and "not" not in line for line in report) == 300


def test_revert_recreates_a_deleted_file(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".pre-commit-config.yaml").write_text("repos: []\n")
    plan = launch(ws, tmp_path, mode="revert")
    (ws / ".pre-commit-config.yaml").unlink()
    (ws / ".envrc").write_text("evil\n")
    report = lines(workspace_guard.finish(plan.state_dir))
    assert (ws / ".pre-commit-config.yaml").read_text() == "repos: []\n"
    assert not (ws / ".envrc").exists()
    assert "host-file .pre-commit-config.yaml: reverted" in report


def test_a_tree_too_deep_is_reported_not_silently_skipped(tmp_path: Path) -> None:
    fd = safefs.open_dir(str(tmp_path))
    try:
        for _ in range(safefs.MAX_DEPTH + 2):
            os.mkdir("d", dir_fd=fd)
            child = safefs.open_dir("d", fd)
            os.close(fd)
            fd = child
        suid = os.open("suid", os.O_CREAT | os.O_WRONLY, 0o755, dir_fd=fd)
        os.fchmod(suid, 0o4755)
        os.close(suid)
    finally:
        os.close(fd)
    result = sweep(str(tmp_path), 0)
    assert result.incomplete


@pytest.mark.parametrize("where", ["home", "above"])
def test_a_workspace_that_is_or_holds_the_home_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """$HOME is masked in every bottle (SPEC); a workspace that is the home, or holds it,
    would bind it back read-write, ~/.ssh and the Claude Code login with it."""
    from claude_bottle.backend.base import LaunchRequest, common_plan_fields
    from claude_bottle.config.model import BottleSection, Config
    from claude_bottle.limits import Limits, plan_with

    home = tmp_path / "home" / "user"
    (home / "project").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    workspace = home if where == "home" else tmp_path

    def fields(ws: Path) -> dict[str, object]:
        config = Config(bottle=BottleSection(git_identity=False))
        request = LaunchRequest("t", ws, config, ("true",))
        limits = plan_with(Limits(), "test", "test")
        return common_plan_fields(
            "x",
            request,
            state_dir=str(tmp_path / "s"),
            runtime_dir="r",
            env={},
            relay_port=1,
            limits=limits,
        )

    with pytest.raises(ConfigError, match="home directory") as refused:
        fields(workspace)
    assert refused.value.exit_code == 2 and "--workspace" in refused.value.hint
    assert fields(home / "project")["workspace"] == str(home / "project")
