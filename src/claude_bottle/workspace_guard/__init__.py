"""Keep what the bottle writes in the workspace from running on the host (SPEC: Architecture).

The same for every backend: `plan_guard` says which mounts the bottle gets (typed
`GitMount` records the backends turn into their own mount syntax), `prepare` builds the
bottle's private git dir just before the bottle starts, and `finish`, once the bottle has
stopped, carries its git changes back, sweeps setuid/setgid files and file capabilities,
and lists (or reverts) the host-tool files it created or changed. See `git_shadow`,
`host_files` and `sweep` for each part.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from claude_bottle.workspace_guard import git_shadow, host_files
from claude_bottle.workspace_guard.git_shadow import Change, GitMount
from claude_bottle.workspace_guard.sweep import sweep

__all__ = [
    "Finding",
    "GitMount",
    "GuardPlan",
    "finish",
    "finish_and_report",
    "plan_guard",
    "prepare",
]

STATE_FILE = "workspace-guard.json"
SHADOW_DIR = "git-shadow"
COVER_DIR = "cover"  # an empty dir of the state dir, mounted over our own dirs inside
MAX_FINDINGS = 10_000  # audit records per exit
CTIME_SLACK_NS = 2_000_000_000  # clock granularity between the marker and other file systems


class GuardPlan(NamedTuple):
    """Which parts of the workspace are guarded, and how; computed without side effects."""

    workspace: str
    git_dir: str | None  # the git dir the bottle gets a private copy of (same path inside)
    fresh_git: bool  # no repository: the bottle's `git init` lands in its own empty .git
    dot_git_file: str | None  # a `.git` file, bound read-only
    repos: tuple[str, ...]  # git dirs inside git_dir: "" and modules/<name>
    shadow: str  # host dir of the private copy
    state_dir: str
    host_tools: str  # "warn" | "revert"
    extra_watched: tuple[str, ...]  # workspace paths the host's git config runs or includes
    mounts: tuple[GitMount, ...]  # what every backend mounts, in this order
    covered: tuple[str, ...] = ()  # claude-bottle's own dirs inside the workspace, hidden

    def describe(self) -> tuple[tuple[str, str], ...]:
        if self.fresh_git:
            git = (
                f"no repository: {self.workspace}/.git is the bottle's own (empty) "
                "directory; a repository the bottle makes is kept in its state dir"
            )
        elif self.git_dir:
            git = (
                f"{self.git_dir}: the bottle's own copy (objects shared); refs, HEAD, "
                "branch tracking and user.name/email carried back at exit, other config listed"
            )
        else:
            git = f"{self.dot_git_file} read-only"
        hidden = (("hidden", ", ".join(self.covered) + " (claude-bottle's own)"),)
        return (
            ("git", git),
            *(hidden if self.covered else ()),
            ("host tools", f"{self.host_tools} at exit (.envrc, .vscode/, hooks, …)"),
            ("setuid", "setuid/setgid bits and file capabilities cleared at exit"),
        )


class Finding(NamedTuple):
    """One line of the exit report, and one audit record."""

    kind: str  # "git" | "host-file" | "setuid" | "guard"
    name: str
    action: str  # "applied" | "not applied" | "changed" | "reverted" | "cleared" | "failed"
    reason: str = ""

    def line(self) -> str:
        return f"{self.kind} {self.name}: {self.action}" + (
            f" ({self.reason})" if self.reason else ""
        )


def plan_guard(
    workspace: str, state_dir: str, host_tools: str, own_dirs: tuple[str, ...] = ()
) -> GuardPlan:
    """`own_dirs`: claude-bottle's state, runtime and cache roots. Those inside the
    workspace (run from $HOME, say) hold the bottle's audit log, the CA keys minted ahead,
    the bundles' sockets and the compiled DLP databases the bundle loads: the bottle gets
    an empty, unwritable directory over each (a ConfigError when the workspace is inside
    one, where there is nothing to cover it with)."""
    covered = _own_dirs_inside(workspace, own_dirs)
    git_dir, dot_git_file = git_shadow.find_git_dir(workspace)
    repos = tuple(git_shadow.nested_git_dirs(git_dir)) if git_dir else ()
    shadow = os.path.join(state_dir, SHADOW_DIR)
    mounts = git_shadow.mounts(git_dir, shadow, repos) if git_dir else []
    if dot_git_file:
        mounts.append(GitMount(dot_git_file, dot_git_file, True))
    # Without a repository, a `.git` the bottle made would be honoured by the host's git
    # (the user's prompt runs `git status` here): the bottle gets an empty one of its own,
    # over an empty mount point that the host's git looks past.
    fresh_git = not git_dir and not dot_git_file
    if fresh_git:
        mounts.append(GitMount(shadow, os.path.join(workspace, ".git"), False))
    cover = os.path.join(state_dir, COVER_DIR)
    mounts += [GitMount(cover, path, True) for path in covered]  # last: over all else
    return GuardPlan(
        workspace=workspace,
        git_dir=git_dir,
        fresh_git=fresh_git,
        dot_git_file=dot_git_file,
        repos=repos,
        shadow=shadow,
        state_dir=state_dir,
        host_tools=host_tools,
        extra_watched=_host_config_paths(workspace, git_dir),
        mounts=tuple(mounts),
        covered=covered,
    )


def _own_dirs_inside(workspace: str, own_dirs: tuple[str, ...]) -> tuple[str, ...]:
    from claude_bottle.errors import ConfigError

    inside = workspace.rstrip("/") + "/"
    covered = []
    for own in own_dirs:
        real = os.path.realpath(own)
        if inside.startswith(real.rstrip("/") + "/"):
            raise ConfigError(
                f"the workspace {workspace} is inside claude-bottle's own directory {real}",
                "run from a project directory outside it, or move claude-bottle's state with "
                "CLAUDE_BOTTLE_STATE_DIR / CLAUDE_BOTTLE_RUNTIME_DIR / CLAUDE_BOTTLE_CACHE_DIR",
            )
        if real.startswith(inside) and real not in covered:
            covered.append(real)
    return tuple(covered)


def _host_config_paths(workspace: str, git_dir: str | None) -> tuple[str, ...]:
    """Workspace paths the host's own git config runs or reads: a hooks path, includes."""
    if not git_dir:
        return ()
    try:
        with open(os.path.join(git_dir, "config"), "rb") as handle:
            text = handle.read(git_shadow.MAX_CONFIG).lower()
    except OSError:
        return ()
    if b"include" not in text and b"hookspath" not in text:
        return ()  # the common case, without running git at every start
    found = git_shadow.host_git(
        git_dir, "config", "--local", "--includes", "--show-origin", "--null", "--list"
    )
    paths: set[str] = set()
    items = found.stdout.split(b"\0")
    for origin, entry in zip(items[::2], items[1::2], strict=False):
        key, _, value = entry.decode(errors="replace").partition("\n")
        name = origin.decode(errors="replace").removeprefix("file:")
        candidates = [name]
        if key == "core.hookspath":
            candidates.append(os.path.join(workspace, os.path.expanduser(value)))
        for candidate in candidates:
            real = os.path.realpath(os.path.join(git_dir, candidate))
            if real.startswith(workspace.rstrip("/") + "/") and not real.startswith(git_dir + "/"):
                paths.add(os.path.relpath(real, workspace))
    return tuple(sorted(paths))


def prepare(plan: GuardPlan) -> None:
    """Build the private git dir and record what `finish` compares against. Run just
    before the bottle starts, by every backend's launch."""
    state = Path(plan.state_dir)
    marker = state / "launched"
    marker.unlink(missing_ok=True)
    marker.touch(mode=0o600)
    since_ns = os.stat(marker).st_ctime_ns - CTIME_SLACK_NS
    shutil.rmtree(plan.shadow, ignore_errors=True)  # an earlier run's: never reused
    snapshots: list[git_shadow.RepoSnapshot] = []
    if plan.fresh_git:
        Path(plan.shadow).mkdir(mode=0o700)
    if plan.covered:  # empty, and no bottle's to fill: it is mounted read-only
        cover = state / COVER_DIR
        shutil.rmtree(cover, ignore_errors=True)
        cover.mkdir(mode=0o700)
    if plan.git_dir:
        git_shadow.build_shadow(plan.git_dir, Path(plan.shadow), plan.repos)
        snapshots = [git_shadow.snapshot(plan.git_dir, rel) for rel in plan.repos]
    watch = _watch(plan)
    saved = host_files.snapshot(plan.workspace, watch) if plan.host_tools == "revert" else {}
    record = {
        "plan": plan._asdict(),
        "since_ns": since_ns,
        "repos": git_shadow.snapshots_to_json(snapshots),
        "saved": host_files.saved_to_json(saved),
    }
    path = state / STATE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)


def _watch(plan: GuardPlan) -> host_files.Watch:
    guarded = os.path.relpath(plan.git_dir, plan.workspace) if plan.git_dir else None
    if plan.fresh_git:
        guarded = ".git"
    return host_files.Watch(guarded, plan.extra_watched)


def finish(state_dir: str) -> list[Finding]:
    """After the bottle stopped: carry git changes back, sweep, list or revert. Runs once
    per launch (the state file is consumed); [] when there is nothing to do."""
    path = Path(state_dir) / STATE_FILE
    claimed = path.with_name(f"{STATE_FILE}.{os.getpid()}")
    try:
        os.rename(path, claimed)  # `stop` and the `run` it stops may both get here: one wins
    except OSError:
        return []
    try:
        fd = os.open(claimed, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return [Finding("guard", str(path), "failed", "unreadable launch record")]
    finally:
        claimed.unlink(missing_ok=True)
    plan = GuardPlan(**record["plan"])
    since_ns = int(record["since_ns"])
    findings: list[Finding] = []
    keep_shadow = False
    if plan.git_dir:
        for start in git_shadow.snapshots_from_json(record["repos"]):
            changes = git_shadow.carry_back(plan.git_dir, plan.shadow, start)
            keep_shadow |= any(c.what in ("ref", "HEAD") and c.action != "applied" for c in changes)
            findings += [_git_finding(plan, start.rel, c) for c in changes]
    if plan.fresh_git:
        keep_shadow = _finish_fresh_git(plan, findings)
    watch = _watch(plan)
    result = sweep(plan.workspace, since_ns, watch.watched)
    if plan.host_tools == "revert":
        saved = host_files.saved_from_json(record["saved"])
        # Saved paths too: a watched file the bottle deleted has no change time to show.
        candidates = sorted(set(result.changed) | set(saved))
        reverted, failed = host_files.revert(plan.workspace, saved, candidates)
        findings += [Finding("host-file", rel, "reverted") for rel in reverted]
        findings += [Finding("host-file", rel, "failed", "could not restore") for rel in failed]
    else:
        findings += [
            Finding("host-file", rel, "changed", "a host tool may run it; review before use")
            for rel in result.changed
        ]
    others = [os.path.join(state_dir, "home")]
    if keep_shadow:
        others.append(plan.shadow)  # the only place the bottle's commits are named: keep it
        if not plan.fresh_git:
            findings.append(Finding("git", plan.shadow, "kept", "the bottle's refs are there"))
    else:
        shutil.rmtree(plan.shadow, ignore_errors=True)
    results = [result, *(sweep(root, since_ns) for root in others if os.path.isdir(root))]
    for swept in results:
        findings += [Finding("setuid", rel, "cleared") for rel in swept.cleared]
        findings += [Finding("setuid", rel, "failed") for rel in swept.failed]
        if swept.incomplete:
            findings.append(Finding("guard", "sweep", "failed", swept.incomplete[:200]))
    if len(findings) > MAX_FINDINGS:
        dropped = len(findings) - MAX_FINDINGS
        findings = findings[:MAX_FINDINGS]
        findings.append(Finding("guard", "report", "failed", f"{dropped} more findings dropped"))
    return findings


def _finish_fresh_git(plan: GuardPlan, findings: list[Finding]) -> bool:
    """Take away the empty mount point; keep a repository the bottle made, and say where."""
    with contextlib.suppress(OSError):
        os.rmdir(os.path.join(plan.workspace, ".git"))  # only if empty; never follows a link
    try:
        made = bool(os.listdir(plan.shadow))
    except OSError:
        return False
    if made:
        findings.append(
            Finding("git", ".git", "not applied", f"the bottle made a repository: {plan.shadow}")
        )
    return made


def _git_finding(plan: GuardPlan, rel: str, change: Change) -> Finding:
    where = f"{rel}: " if rel else ""
    return Finding("git", f"{where}{change.what} {change.name}", change.action, change.reason)


MAX_REPORTED = 40  # lines at the terminal; the audit log has them all


def finish_and_report(name: str, state_dir: str, say: Callable[[str], None]) -> list[Finding]:
    """`finish`, then tell the user and append one audit record per finding."""
    try:
        findings = finish(state_dir)
    except Exception as exc:  # the bottle is gone: say what was not checked, never crash here
        findings = [Finding("guard", "exit check", "failed", f"{type(exc).__name__}: {exc}")]
    if not findings:
        return findings
    for finding in findings[:MAX_REPORTED]:
        prefix = "" if finding.action in ("applied", "reverted", "cleared") else "warning: "
        say(f"{prefix}workspace: {_printable(finding.line())}")
    if len(findings) > MAX_REPORTED:
        say(f"workspace: … and {len(findings) - MAX_REPORTED} more in the audit log")
    _audit(name, Path(state_dir) / "audit.jsonl", findings, say)
    return findings


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:300]


def _audit(name: str, log: Path, findings: list[Finding], say: Callable[[str], None]) -> None:
    from claude_bottle.bundle.audit import AuditError, AuditLog

    try:
        with AuditLog(log, name) as audit:
            for finding in findings:
                audit.record(
                    "workspace",
                    finding.action,
                    rule=f"workspace:{finding.kind}",
                    path=finding.name,
                    detail={"reason": finding.reason} if finding.reason else None,
                )
    except AuditError as exc:
        say(f"warning: the workspace report is not in the audit log: {exc.message}")
