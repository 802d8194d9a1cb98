"""The bottle's own git directory: a private copy of `.git` that shares only the objects.

Inside the bottle, the workspace's `.git` is a bind mount of a bottle-private copy (the
*shadow*, under the bottle's state dir), and only the content-addressed object store
(`objects/`, and `lfs/`, `annex/` where present) is the real one, bound read-write on top.
Config, hooks, info, HEAD, index, refs, packed-refs, logs, worktrees and submodule
git dirs (`modules/*`, same recipe) are the shadow's. So:

- nothing the bottle writes reaches the host's `.git/config`, hooks, `info/`, `commondir`,
  `modules/*/config` or `worktrees/*`: the host's git never runs a hook, fsmonitor,
  sshCommand, pager, filter or alias the bottle configured, during the run or after it;
- every lock-and-rename git does (config.lock, HEAD.lock, index.lock, packed-refs.lock)
  happens inside one ordinary directory, so nothing hits a mount point (EBUSY), and refs
  and packed-refs live side by side, so `git pack-refs`/`gc` keep them consistent;
- `.git` itself is a mount point inside, so the agent cannot move it aside or replace it.

At exit, `carry_back` brings the bottle's ref and HEAD changes to the host's repository
(compare-and-swap against what the host had at launch), resets the host index when HEAD
moved, applies an allowlist of config keys (branch tracking, user name and email) and lists
everything else it changed. Commits made in the bottle are visible on the host as
uncommitted changes until then; their objects are already in the shared store.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from claude_bottle.errors import ConfigError, LaunchError
from claude_bottle.workspace_guard import safefs

SHARED_DIRS = ("objects", "lfs", "annex")  # content-addressed: safe to share read-write
MAX_COPY_BYTES = 1 << 30
MAX_ENTRIES = 500_000
MAX_REF_FILE = 4096
MAX_PACKED_REFS = 256 << 20
MAX_CONFIG = 4 << 20
MAX_REFS = 200_000
GIT_TIMEOUT = 60.0
MAX_SYMBOLIC = 100  # symbolic refs are carried one git call each

# Refs whose changes come back to the host; others (refs/bisect, refs/original, …) are listed.
CARRIED_REFS = ("refs/heads/", "refs/tags/", "refs/remotes/", "refs/notes/", "refs/stash")
# Config keys whose changes come back (lower-cased section and key, as `git config -l` says).
CARRIED_CONFIG = re.compile(
    r"branch\.[^\x00-\x1f]{1,255}\.(?:remote|merge|pushremote|rebase)|user\.(?:name|email)"
)
# What each carried key may hold: a remote's name (never a URL or an option), a ref.
_CARRIED_VALUE = {
    "remote": re.compile(r"\.|[A-Za-z0-9_][A-Za-z0-9._/-]{0,99}"),
    "pushremote": re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,99}"),
    "merge": re.compile(r"refs/[A-Za-z0-9._/-]{1,1000}"),
    "rebase": re.compile(r"true|false|merges|interactive|i|m|b|preserve"),
    "name": re.compile(r"[^\x00-\x1f\x7f]{0,256}"),
    "email": re.compile(r"[^\x00-\x1f\x7f]{0,256}"),
}
_OID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_REF_NAME = re.compile(r"refs/[\x21-\x7e]{1,1000}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
GUARDED_DIRS = ("hooks", "info")  # host-executed or host-honoured: changes are listed
REGENERATED = frozenset({"info/refs"})  # rewritten by every `git gc`; read by no tool


class GitMount(NamedTuple):
    """One mount a backend makes for the guard: host `source` at `target` inside."""

    source: str
    target: str
    read_only: bool


class RepoSnapshot(NamedTuple):
    """What one git dir (the workspace's, or a submodule's) held at launch."""

    rel: str  # inside the guarded git dir: "" or "modules/<name>"
    refs: dict[str, str]  # name -> oid, or "ref: <target>" for a symbolic ref
    head: str
    head_commit: str  # what HEAD resolved to ("" when unborn)
    config: str  # the config file's bytes, base64 (parsed only if the bottle changed it)
    guarded: dict[str, str]  # hooks/ and info/ files -> digest


class Change(NamedTuple):
    """One thing the bottle changed in its git dir, and what happened to it."""

    what: str  # "ref" | "HEAD" | "config" | "hooks" | "info" | "alternates"
    name: str
    action: str  # "applied" | "not applied"
    reason: str = ""


def find_git_dir(workspace: str) -> tuple[str | None, str | None]:
    """(git dir to guard, `.git` file to keep read-only) for the workspace.

    A `.git` directory is guarded; a `.git` file (a linked worktree or a submodule checked
    out as the workspace) is kept read-only, and the git dir it names is guarded when it
    lies inside the workspace (outside, it is read-only to the bottle anyway).
    """
    dotgit = os.path.join(workspace, ".git")
    try:
        st = os.lstat(dotgit)
    except FileNotFoundError:
        return None, None
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(
            f"{dotgit} is a symlink; the bottle could repoint it at a repository of its own",
            "replace the symlink with the directory (or a `gitdir:` file) it points to",
        )
    if stat.S_ISDIR(st.st_mode):
        if not os.path.exists(os.path.join(dotgit, "HEAD")):
            return None, None  # not a repository (git looks past it): e.g. an old mount point
        return dotgit, None
    if not stat.S_ISREG(st.st_mode):
        return None, None
    with open(dotgit, "rb") as handle:
        text = handle.read(MAX_REF_FILE).decode(errors="replace").strip()
    target = text.removeprefix("gitdir:").strip() if text.startswith("gitdir:") else ""
    resolved = os.path.realpath(os.path.join(workspace, target)) if target else ""
    inside = resolved.startswith(workspace.rstrip("/") + "/") and os.path.isdir(resolved)
    return (resolved if inside else None), dotgit


def nested_git_dirs(git_dir: str) -> list[str]:
    """The git dirs in `git_dir` (itself, as "", and `modules/…` submodule dirs), relative."""
    found = [""]
    modules = os.path.join(git_dir, "modules")
    stack = [("modules", modules)] if os.path.isdir(modules) else []
    while stack and len(found) < 1000:
        rel, path = stack.pop()
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if not entry.is_dir(follow_symlinks=False):
                continue
            sub_rel, sub = f"{rel}/{entry.name}", entry.path
            if os.path.isfile(os.path.join(sub, "HEAD")) and os.path.isdir(
                os.path.join(sub, "objects")
            ):
                found.append(sub_rel)
                if os.path.isdir(os.path.join(sub, "modules")):
                    stack.append((f"{sub_rel}/modules", os.path.join(sub, "modules")))
            else:  # a module named with a slash: modules/a/b
                stack.append((sub_rel, sub))
    return found


def mounts(git_dir: str, shadow: str, repos: Sequence[str]) -> list[GitMount]:
    """The shadow over the git dir, then the real shared stores on top of it, in order."""
    result = [GitMount(shadow, git_dir, False)]
    for rel in repos:
        for name in SHARED_DIRS:
            real = os.path.join(git_dir, rel, name)
            if os.path.isdir(real) and not os.path.islink(real):
                result.append(GitMount(real, real, False))
    return result


def build_shadow(git_dir: str, shadow: Path, repos: Sequence[str]) -> None:
    """Copy the git dir into `shadow`, all but the shared stores (left as empty mount points)."""
    shared = {"/".join(p for p in (rel, name) if p) for rel in repos for name in SHARED_DIRS}
    shadow.mkdir(mode=0o700)
    root = safefs.open_dir(git_dir)
    copied = 0
    try:
        for entry in safefs.walk(root, MAX_ENTRIES, skip=frozenset(shared)):
            target = shadow / entry.rel
            mode = entry.st.st_mode
            if stat.S_ISDIR(mode):
                target.mkdir(mode=stat.S_IMODE(mode) | 0o700)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(entry.name, dir_fd=entry.dir_fd), target)
            elif stat.S_ISREG(mode):
                copied += entry.st.st_size
                if copied > MAX_COPY_BYTES:
                    raise safefs.TooLarge(f"more than {MAX_COPY_BYTES >> 20} MiB outside objects/")
                data = safefs.read_at(entry.dir_fd, entry.name, MAX_COPY_BYTES)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(mode))
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.utime(target, ns=(entry.st.st_atime_ns, entry.st.st_mtime_ns))
            # sockets (fsmonitor daemon), FIFOs and devices stay out
    except (OSError, safefs.TooLarge) as exc:
        raise LaunchError(
            f"cannot prepare the bottle's copy of {git_dir}: {exc}",
            "check the repository (git fsck), or run the bottle on a smaller checkout",
        ) from exc
    finally:
        os.close(root)


# --- reading a git dir without trusting it ------------------------------------------------


def read_refs(root: str, rel: str) -> dict[str, str]:
    """Loose and packed refs of the git dir `root/rel`: name -> oid or "ref: target"."""
    base = f"{rel}/" if rel else ""
    refs: dict[str, str] = {}
    packed = safefs.read_beneath(root, f"{base}packed-refs", MAX_PACKED_REFS)
    for line in (packed or b"").decode(errors="replace").splitlines():
        oid, _, name = line.partition(" ")
        if _OID.fullmatch(oid) and _REF_NAME.fullmatch(name) and len(refs) < MAX_REFS:
            refs[name] = oid
    try:
        fd = safefs.open_dir_beneath(root, f"{base}refs")
    except (OSError, ValueError):
        return refs
    try:
        for entry in safefs.walk(fd, MAX_REFS):
            if not stat.S_ISREG(entry.st.st_mode) or entry.name.endswith(".lock"):
                continue
            value = _ref_value(safefs.read_at(entry.dir_fd, entry.name, MAX_REF_FILE))
            if value and _REF_NAME.fullmatch(f"refs/{entry.rel}"):
                refs[f"refs/{entry.rel}"] = value
    except (OSError, safefs.TooLarge):
        pass  # a hostile tree: what was read so far is all that is carried
    finally:
        os.close(fd)
    return refs


def _ref_value(raw: bytes) -> str:
    text = raw.decode(errors="replace").strip()
    if _OID.fullmatch(text):
        return text
    if text.startswith("ref: ") and _REF_NAME.fullmatch(text[5:]):
        return text
    return ""


def read_head(root: str, rel: str) -> str:
    raw = safefs.read_beneath(root, f"{rel}/HEAD" if rel else "HEAD", MAX_REF_FILE)
    return _ref_value(raw or b"")


def tree_digest(root: str, rel: str) -> dict[str, str]:
    """Files and links below `root/rel` -> a digest of each, read without following links."""
    result: dict[str, str] = {}
    try:
        fd = safefs.open_dir_beneath(root, rel)
    except (OSError, ValueError):
        return result
    try:
        for entry in safefs.walk(fd, 10_000):
            if stat.S_ISLNK(entry.st.st_mode):
                result[entry.rel] = "link:" + os.readlink(entry.name, dir_fd=entry.dir_fd)
            elif stat.S_ISREG(entry.st.st_mode):
                data = safefs.read_at(entry.dir_fd, entry.name, 64 << 20)
                mode = "x" if entry.st.st_mode & 0o111 else "-"
                result[entry.rel] = mode + hashlib.sha256(data).hexdigest()
            elif not stat.S_ISDIR(entry.st.st_mode):
                result[entry.rel] = "special"
    except (OSError, safefs.TooLarge):
        result["…"] = "unreadable"
    finally:
        os.close(fd)
    return result


def parse_config(raw: bytes) -> list[tuple[str, str]] | None:
    """A config file's entries, parsed by git from bytes read here (no includes, no links);
    None if git cannot parse it."""
    done = host_git(None, "config", "--file", "-", "--no-includes", "--null", "--list", stdin=raw)
    if done.returncode != 0:
        return None
    entries = []
    for item in done.stdout.split(b"\0"):
        if item:
            key, _, value = item.decode(errors="replace").partition("\n")
            entries.append((key, value))
    return entries


def snapshot(root: str, rel: str) -> RepoSnapshot:
    """The git dir at launch, read without running git (start-up time matters)."""
    base = f"{rel}/" if rel else ""
    refs = read_refs(root, rel)
    head = read_head(root, rel)
    config = safefs.read_beneath(root, f"{base}config", MAX_CONFIG) or b""
    return RepoSnapshot(
        rel=rel,
        refs=refs,
        head=head,
        head_commit=_resolve(head, refs),
        config=base64.b64encode(config).decode(),
        guarded={
            f"{name}/{path}": digest
            for name in GUARDED_DIRS
            for path, digest in tree_digest(root, f"{base}{name}").items()
        },
    )


def _resolve(head: str, refs: Mapping[str, str]) -> str:
    """The oid HEAD names through at most a few symbolic refs ("" when unborn)."""
    value = head
    for _ in range(5):
        if not value.startswith("ref: "):
            return value
        value = refs.get(value[5:], "")
    return ""


# --- carrying the bottle's changes back ---------------------------------------------------


def carry_back(real: str, shadow: str, start: RepoSnapshot) -> list[Change]:
    """Apply the bottle's ref, HEAD and allowlisted config changes to the host's git dir."""
    rel = start.rel
    real_git_dir = os.path.join(real, rel)
    base = f"{rel}/" if rel else ""
    changes: list[Change] = []
    end_refs, end_head = read_refs(shadow, rel), read_head(shadow, rel)
    if end_refs != start.refs or (end_head and end_head != start.head):
        changes += _carry_refs_and_head(real, start, real_git_dir, end_refs, end_head)
    changes += _carry_config(real_git_dir, shadow, start)
    end_guarded = {
        f"{name}/{path}": digest
        for name in GUARDED_DIRS
        for path, digest in tree_digest(shadow, f"{base}{name}").items()
    }
    for path in sorted(set(start.guarded) | set(end_guarded)):
        if path in REGENERATED:
            continue
        if start.guarded.get(path) != end_guarded.get(path):
            what = path.partition("/")[0]
            changes.append(Change(what, f"{base}{path}", "not applied", "host-executed"))
    return changes


def _empty_tree(git_dir: str) -> str:
    done = host_git(git_dir, "hash-object", "-t", "tree", "--stdin", stdin=b"")
    return done.stdout.decode().strip()


def _carry_refs_and_head(
    real: str, start: RepoSnapshot, git_dir: str, end_refs: Mapping[str, str], end_head: str
) -> list[Change]:
    # Whether the host's index holds nothing staged against the launch's HEAD: a user's
    # `git status` meanwhile rewrites the file, so its bytes cannot tell.
    base_tree = start.head_commit or _empty_tree(git_dir)
    unstaged = host_git(git_dir, "diff-index", "--cached", "--quiet", base_tree)
    changes = _carry_refs(real, start, git_dir, end_refs)
    changes += _carry_head(real, start, git_dir, end_head)
    after = host_git(git_dir, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    moved = after.returncode == 0 and after.stdout.decode().strip() != start.head_commit
    if moved and unstaged.returncode == 0:
        # The host's index still describes the old HEAD: make it describe the new one
        # (the working tree already has the bottle's files), or every carried commit
        # would show as staged in reverse. What the agent staged but did not commit stays
        # in the working tree, unstaged.
        host_git(git_dir, "read-tree", "HEAD")
    elif moved:
        changes.append(Change("index", "index", "not applied", "the host has staged changes"))
    return changes


def _carry_refs(
    real: str, start: RepoSnapshot, git_dir: str, end: Mapping[str, str]
) -> list[Change]:
    """All plain ref changes in one compare-and-swap transaction; symbolic ones one by one."""
    host = read_refs(real, start.rel)
    changes: list[Change] = []
    batch: list[tuple[str, bytes]] = []
    symbolic: list[tuple[str, str]] = []
    for name in sorted(set(start.refs) | set(end)):
        before, after = start.refs.get(name), end.get(name)
        if before == after:
            continue
        if not name.startswith(CARRIED_REFS):
            changes.append(Change("ref", name, "not applied", "not a branch, tag or remote ref"))
        elif host.get(name) != before:
            changes.append(Change("ref", name, "not applied", "it also changed on the host"))
        elif (before or "").startswith("ref: ") or (after is None and before is None):
            changes.append(Change("ref", name, "not applied", "a symbolic ref on the host"))
        elif after is None:
            batch.append((name, f"delete {name}\0{before}\0".encode()))
        elif after.startswith("ref: "):
            symbolic.append((name, after[5:]))
        else:
            old = before or "0" * len(after)
            batch.append((name, f"update {name}\0{after}\0{old}\0".encode()))
    if batch:
        stdin = b"".join(line for _, line in batch)
        done = host_git(git_dir, "update-ref", "--no-deref", "--stdin", "-z", stdin=stdin)
        changes += [_outcome("ref", name, done) for name, _ in batch]
    for name, target in symbolic[:MAX_SYMBOLIC]:
        changes.append(_outcome("ref", name, host_git(git_dir, "symbolic-ref", name, target)))
    changes += [
        Change("ref", n, "not applied", "too many symbolic refs")
        for n, _ in symbolic[MAX_SYMBOLIC:]
    ]
    return changes


def _carry_head(real: str, start: RepoSnapshot, git_dir: str, after: str) -> list[Change]:
    if not after or after == start.head:
        return []
    if read_head(real, start.rel) != start.head:
        return [Change("HEAD", "HEAD", "not applied", "it also changed on the host")]
    if after.startswith("ref: "):
        target = after[5:]
        if not target.startswith("refs/heads/"):
            return [Change("HEAD", "HEAD", "not applied", "points outside refs/heads/")]
        done = host_git(git_dir, "symbolic-ref", "HEAD", target)
    else:
        done = host_git(git_dir, "update-ref", "--no-deref", "HEAD", after)
    return [_outcome("HEAD", "HEAD", done)]


def _carry_config(git_dir: str, shadow: str, start: RepoSnapshot) -> list[Change]:
    rel = start.rel
    raw = safefs.read_beneath(shadow, f"{rel}/config" if rel else "config", MAX_CONFIG)
    before_raw = base64.b64decode(start.config)
    if raw == before_raw:
        return []
    if raw is None:
        return [Change("config", "config", "not applied", "not a regular file any more")]
    end, before = parse_config(raw), parse_config(before_raw)
    if end is None or before is None:
        return [Change("config", "config", "not applied", "git cannot parse it")]
    changed = sorted(_by_key(before).items() ^ _by_key(end).items())
    changes = []
    for key in sorted({key for key, _ in changed}):
        values = _by_key(end).get(key, ())
        if not CARRIED_CONFIG.fullmatch(key):
            changes.append(Change("config", key, "not applied", "not an allowlisted key"))
            continue
        allowed = _CARRIED_VALUE[key.rpartition(".")[2]]
        if not all(allowed.fullmatch(v) for v in values):
            changes.append(Change("config", key, "not applied", "an unexpected value"))
            continue
        config = os.path.join(git_dir, "config")
        host_git(None, "config", "--file", config, "--unset-all", key)
        results = [host_git(None, "config", "--file", config, "--add", key, v) for v in values]
        failed = next((r for r in results if r.returncode != 0), None)
        changes.append(_outcome("config", key, failed or _ok()))
    return changes


def _by_key(entries: Sequence[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    grouped: dict[str, list[str]] = {}
    for key, value in entries:
        grouped.setdefault(key, []).append(value)
    return {key: tuple(values) for key, values in grouped.items()}


def _outcome(what: str, name: str, done: subprocess.CompletedProcess[bytes]) -> Change:
    if done.returncode == 0:
        return Change(what, name, "applied")
    reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["git failed"]
    return Change(what, name, "not applied", _CONTROL.sub("?", reason[0])[:200])


def _ok() -> subprocess.CompletedProcess[bytes]:
    return subprocess.CompletedProcess((), 0, b"", b"")


def host_git(
    git_dir: str | None, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The host's git on the host's repository, with no hook and no fsmonitor of any origin.

    The host's own config is trusted (the bottle never writes it), but it may point a
    hook path or fsmonitor into the workspace, which the bottle does write.
    """
    argv = ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]
    if git_dir is not None:
        argv += ["--git-dir", git_dir]
    try:
        return subprocess.run(
            [*argv, *args],
            input=stdin,
            capture_output=True,
            env=_host_git_env(os.environ),
            cwd="/",  # never discover a repository the bottle made
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 1, b"", str(exc).encode())


def _host_git_env(environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if not k.startswith("GIT_")}
    env.update(LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0")
    return env


def snapshots_to_json(snapshots: Sequence[RepoSnapshot]) -> list[dict[str, object]]:
    return [s._asdict() for s in snapshots]


def snapshots_from_json(raw: Sequence[Mapping[str, object]]) -> Iterator[RepoSnapshot]:
    for item in raw:
        yield RepoSnapshot(
            rel=str(item["rel"]),
            refs=dict(item["refs"]),  # type: ignore[call-overload]
            head=str(item["head"]),
            head_commit=str(item["head_commit"]),
            config=str(item["config"]),
            guarded=dict(item["guarded"]),  # type: ignore[call-overload]
        )
