"""The git gate's judge of a push: what the pre-receive hook asks the gate to decide.

`git receive-pack` (run by `git http-backend` for the gate) has stored the pushed
objects in a quarantine and runs the gate's pre-receive hook (`git_prereceive.py`, a
stdlib-only client) before any ref of the gate's mirror moves. The hook hands its input
to the gate over a private socket, and the gate, in its own process (so the DLP engine is
the bundle's, built once, not rebuilt per push), does here, in order:

1. every ref update is checked against the remote's policy (`git_policy.check_update`;
   git's `merge-base --is-ancestor` says whether it is a fast-forward);
2. what the push adds (the objects reachable from the new tips and not from the mirror's
   refs, which are the upstream's) is scanned by the DLP engine: commit and tag objects
   whole (messages, identities), every new blob, every path and ref name;
3. the push goes upstream, atomically, each ref leased to the value that was checked, with
   the host-side credential (in the gate's environment, never the bottle's).

The upstream `git push` (https) starts with step 1, so its process start, the
credential, the TLS connection and the upstream's refs advertisement overlap the judging;
its pre-push hook then holds it, before git sends a single object or ref command, until
the verdict is "allow" (anything else, or the gate gone, and it sends nothing:
`UpstreamPush`).

Anything but success is a non-zero status: the hook exits with it, receive-pack then
discards the quarantine and moves no ref, and git prints the verdict's lines on the
bottle's terminal as `remote:` lines. Each ref's outcome becomes an audit record.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

from claude_bottle.bundle.git_policy import (
    ZERO_SHA,
    GateRemote,
    RefUpdate,
    check_update,
    parse_updates,
)
from claude_bottle.bundle.git_upstream import is_ssh, with_config
from claude_bottle.bundle.refusal import Refusal

if TYPE_CHECKING:
    from claude_bottle.policy.dlp import Scanner

# What receive-pack tells its hook about the quarantine; the only variables the hook
# passes on, and each must name a directory inside the mirror.
QUARANTINE_VARS = (
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
)
WHOLE_BLOB = 8 * 1024 * 1024  # blobs up to this are scanned whole, with line numbers
READ_SIZE = 1024 * 1024
PUSH_TIMEOUT = 600.0
# A pushed pack up to this size goes upstream in one request with its length, not chunked
# after a probe request (git's default buffer is 1 MiB): a round trip, and an upstream
# receive-pack run, less. It bounds the memory of one push's git-remote-https.
POST_BUFFER = 4 * 1024 * 1024
PREFIX = "claude-bottle git gate: "
# cat-file's header per object; %(rest) is the rest of rev-list's line: the object's path
LISTED_FORMAT = "%(objectname) %(objecttype) %(objectsize) %(rest)"
ALLOW = b"allow\n"
# The upstream push's pre-push hook: git runs it with the upstream's refs advertised and
# nothing sent yet, and sends nothing unless it exits 0. It reads git's ref lines (so git
# never blocks writing them), then waits for the gate's verdict on the pipe.
PRE_PUSH = """#!/bin/sh
while read -r _; do :; done
IFS= read -r verdict < {fifo} || exit 1
test "$verdict" = allow
"""


class Outcome(NamedTuple):
    ref: str
    old: str
    new: str
    commits: int
    decision: str  # allow | deny | error
    rule: str


class Verdict(NamedTuple):
    """The answer to the hook: its exit status, its `remote:` lines, one outcome per ref."""

    status: int
    lines: list[str]
    outcomes: list[Outcome]


class DlpHit(Exception):
    def __init__(self, rule: str, where: str, name: str = "", shown: str = "") -> None:
        super().__init__(where)
        self.rule = rule
        self.where = where
        self.name, self.shown = name, shown  # a name that held the secret, and as shown


class Repo(NamedTuple):
    """Where the judge's git runs: the mirror, with the push's quarantine in view."""

    path: Path
    env: Mapping[str, str]

    def git(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            check=False,
            env=dict(self.env),
            cwd=self.path,
            timeout=PUSH_TIMEOUT,
        )

    def is_ancestor(self, old: str, new: str) -> bool:
        return self.git("merge-base", "--is-ancestor", old, new).returncode == 0

    def new_commits(self, tip: str) -> int:
        found = self.git("rev-list", "--count", tip, "--not", "--all")
        return int(found.stdout or b"0") if found.returncode == 0 else 0


def quarantined(mirror: Path, base: Mapping[str, str], given: Mapping[str, str]) -> Repo:
    """The mirror seen with the push's quarantine (`given`, from the hook's environment,
    which receive-pack set; none when no pack came): each directory must lie inside the
    mirror, or the push is refused."""
    env = dict(base)
    root = mirror.resolve()
    env["GIT_DIR"] = str(root)
    if not any(given.get(name) for name in QUARANTINE_VARS):
        return Repo(root, env)  # no pack came (a deletion): nothing is quarantined
    for name in QUARANTINE_VARS:
        value = given.get(name)
        if not isinstance(value, str) or not value:
            raise Refusal(500, "git:quarantine", "the push's quarantine is missing")
        resolved = (root / value).resolve()
        if not resolved.is_relative_to(root):
            raise Refusal(500, "git:quarantine", "the push's quarantine is outside the mirror")
        env[name] = str(resolved)
    return Repo(root, env)


class ContentScan:
    """DLP over the objects a push adds, with the bundle's engine."""

    def __init__(self, scanner: Scanner, repo: Repo) -> None:
        self.scanner = scanner
        self.repo = repo

    def check(self, data: bytes, where: str) -> None:
        for finding in self.scanner.scan(data, where):
            if not finding.ignored:
                line = data.count(b"\n", 0, finding.start) + 1
                raise DlpHit(finding.pattern, f"{where}, line {line}")

    def check_name(self, name: str, what: str) -> None:
        """A path or ref name: the hit is named with the secret cut out of it."""
        data = name.encode()
        for finding in self.scanner.scan(data, what):
            if not finding.ignored:
                shown = (data[: finding.start] + b"[...]" + data[finding.end :]).decode(
                    errors="replace"
                )
                raise DlpHit(finding.pattern, f"{what} {shown!r}", name, shown)

    def scan_push(self, updates: list[RefUpdate]) -> int:
        """Scan what the push adds; the number of commits that is."""
        tips = [u.new for u in updates if u.new != ZERO_SHA]
        for update in updates:
            self.check_name(update.ref, "the ref")
        if not tips:
            return 0
        # One stream: rev-list names the added objects (with their paths) straight into
        # cat-file, which answers each with its header and content; no round trip through
        # the bundle per object, and no second walk to list them first.
        env, cwd = dict(self.repo.env), self.repo.path
        lister = subprocess.Popen(
            ["git", "rev-list", "--objects", *tips, "--not", "--all"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        assert lister.stdout is not None
        try:
            reader = subprocess.Popen(
                ["git", "cat-file", f"--batch={LISTED_FORMAT}", "--buffer"],
                stdin=lister.stdout,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        finally:
            lister.stdout.close()  # cat-file holds it now
        assert reader.stdout is not None
        try:
            commits = self._scan_objects(reader.stdout)
            listed = lister.wait(PUSH_TIMEOUT) == 0 and reader.wait(PUSH_TIMEOUT) == 0
        finally:
            for process in (lister, reader):
                _kill_group(process)
            reader.stdout.close()
        if not listed:
            raise Refusal(500, "git:scan", "could not list the pushed objects")
        return commits

    def _scan_objects(self, stream: IO[bytes]) -> int:
        commits = 0
        names: set[str] = set()  # a directory's name comes once per version of its tree
        while header := stream.readline():
            sha, kind, size, path = _object_header(header)
            if path and path not in names:
                names.add(path)
                self.check_name(path, "the path")
            if kind == "tree":  # binary; its names are scanned as paths
                _skip(stream, size + 1)
                continue
            commits += kind == "commit"
            where = f"the file {path!r}" if kind == "blob" else f"{kind} {sha[:12]}"
            self._scan_stream(stream, size, where)
            stream.read(1)  # the newline after the content
        return commits

    def _scan_stream(self, stream: IO[bytes], size: int, where: str) -> None:
        if size <= WHOLE_BLOB:
            self.check(stream.read(size), where)
            return
        scan = self.scanner.stream(where)
        left = size
        while left > 0:
            chunk = stream.read(min(READ_SIZE, left))
            if not chunk:
                break
            left -= len(chunk)
            for finding in scan.feed(chunk):
                if not finding.ignored:
                    raise DlpHit(finding.pattern, where)
        for finding in scan.finish():
            if not finding.ignored:
                raise DlpHit(finding.pattern, where)


def _object_header(line: bytes) -> tuple[str, str, int, str]:
    """cat-file's `sha type size path` (a missing object, or anything else, is refused)."""
    fields = line.rstrip(b"\n").split(b" ", 3)
    if len(fields) != 4 or fields[1] not in (b"commit", b"tree", b"blob", b"tag"):
        raise Refusal(500, "git:scan", "could not read a pushed object")
    sha, kind, size, path = (field.decode(errors="replace") for field in fields)
    return sha, kind, int(size), path


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _skip(stream: IO[bytes], size: int) -> None:
    while size > 0:
        size -= len(stream.read(min(READ_SIZE, size)) or b"x" * size)


class UpstreamPush:
    """`git push --atomic` of exactly these updates, each leased to its checked old value,
    started before the verdict and held by its pre-push hook until `release`.

    git runs pre-push after it has the upstream's refs advertisement and before it sends
    any ref command or object, and sends nothing unless the hook exits 0. The hook (one
    per push, in a private directory of the gate's cache) waits on a pipe only the gate
    writes: `release` writes "allow"; `close` without it, or the gate's end, is an empty
    read (the hook exits 1) and the push is killed besides.
    """

    def __init__(self, remote: GateRemote, updates: list[RefUpdate], repo: Repo) -> None:
        args = ["push", "--atomic", "--porcelain"]
        for update in updates:
            expected = "" if update.old == ZERO_SHA else update.old
            args.append(f"--force-with-lease={update.ref}:{expected}")
        args.append(remote.url)
        for update in updates:
            source = "" if update.new == ZERO_SHA else update.new
            args.append(f"{source}:{update.ref}")
        self.hooks = Path(tempfile.mkdtemp(prefix="upstream-push-", dir=repo.path.parent))
        self._verdict = -1
        self.process: subprocess.Popen[bytes] | None = None
        try:
            fifo = self.hooks / "verdict"
            os.mkfifo(fifo, 0o600)
            # Read-write: opening never blocks, and the hook's read waits for a line
            # instead of an end of file while the gate holds it.
            self._verdict = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
            hook = self.hooks / "pre-push"
            hook.write_text(PRE_PUSH.format(fifo=shlex.quote(str(fifo))))
            hook.chmod(0o700)
            env = with_config(
                dict(repo.env),
                [("core.hooksPath", str(self.hooks)), ("http.postBuffer", str(POST_BUFFER))],
            )
            self.process = subprocess.Popen(
                ["git", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=repo.path,
                start_new_session=True,
            )
        except BaseException:
            self.close()
            raise

    def release(self) -> tuple[int, bytes]:
        """Let the push go on (the judge allowed it); its status and git's words."""
        assert self.process is not None
        os.write(self._verdict, ALLOW)
        try:
            out, err = self.process.communicate(timeout=PUSH_TIMEOUT)
        finally:
            self.close()
        return self.process.returncode, err + out

    def close(self) -> None:
        """End it: a push not released sends nothing (its hook reads no verdict)."""
        if self._verdict >= 0:
            os.close(self._verdict)
            self._verdict = -1
        if self.process is not None:
            _kill_group(self.process)
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
        shutil.rmtree(self.hooks, ignore_errors=True)


def judge(
    remote: GateRemote, scanner: Scanner | None, updates: list[RefUpdate], repo: Repo
) -> int | None:
    """Raise `Refusal` (or `DlpHit`) unless every update may go upstream; the number of
    commits the scan found added (None without a scan)."""
    for update in updates:
        fast_forward = (
            update.old == ZERO_SHA
            or update.new == ZERO_SHA
            or repo.is_ancestor(update.old, update.new)
        )
        check_update(remote, update, fast_forward)
    if scanner is None:
        return None
    return ContentScan(scanner, repo).scan_push(updates)


def commit_counts(updates: list[RefUpdate], repo: Repo | None, scanned: int | None) -> list[int]:
    """Per ref, the commits it adds (for the audit): a one-ref push's is what the scan
    counted; otherwise git counts each ref (a refused or many-ref push, rarer)."""
    if repo is None:
        return [0] * len(updates)
    if scanned is not None and len(updates) == 1 and updates[0].new != ZERO_SHA:
        return [scanned]
    try:
        return [0 if u.new == ZERO_SHA else repo.new_commits(u.new) for u in updates]
    except (OSError, subprocess.SubprocessError):
        return [0] * len(updates)


def decide(
    remote: GateRemote,
    scanner: Scanner | None,
    mirror: Path,
    env: Mapping[str, str],
    hook_input: str,
    quarantine: Mapping[str, str],
) -> Verdict:
    """The whole push, judged and (when allowed) sent upstream. `hook_input` and the
    quarantine come from the hook: receive-pack's words about the bottle's push."""
    updates: list[RefUpdate] = []
    repo: Repo | None = None
    upstream: UpstreamPush | None = None
    scanned: int | None = None
    decision, rule, status = "deny", "", 1
    lines: list[str] = []
    try:
        repo = quarantined(mirror, env, quarantine)
        updates = parse_updates(hook_input)
        # Over https the hold is between two requests; an ssh session held open through
        # a long judging could be dropped by the upstream, so it starts after the verdict.
        if not is_ssh(remote.url):
            upstream = UpstreamPush(remote, updates, repo)  # held until the verdict
        scanned = judge(remote, scanner, updates, repo)
        upstream = upstream or UpstreamPush(remote, updates, repo)
        code, answer = upstream.release()
        lines += answer.decode(errors="replace").splitlines()  # the upstream's own words
        if code == 0:
            decision, rule, status = "allow", "git:push", 0
        else:
            decision, rule = "error", "git:upstream-refused"
            lines.append(
                PREFIX + f"push refused by the upstream of remote {remote.name} (see above)"
            )
    except Refusal as refusal:
        decision, rule = refusal.decision, refusal.rule
        lines.append(PREFIX + f"push refused, rule {refusal.rule}: {refusal.message}")
        if refusal.hint:
            lines.append(PREFIX + f"to allow it, in your user config: {refusal.hint}")
    except DlpHit as hit:
        rule = f"dlp:{hit.rule}"
        # The audit record names the ref: never with the secret in it.
        updates = [u._replace(ref=hit.shown) if u.ref == hit.name else u for u in updates]
        lines += [
            PREFIX + f"push refused, rule {rule}: a secret in {hit.where}",
            PREFIX + "remove it from the pushed commits (the whole push was refused); a false "
            "positive is silenced with [dlp] ignore_fingerprints",
        ]
    except Exception as exc:  # fail closed, and say so
        decision, rule = "error", "git:gate-error"
        lines.append(PREFIX + f"push refused: the gate failed ({type(exc).__name__})")
    finally:
        if upstream is not None:
            upstream.close()  # a push not released sends nothing
    counts = commit_counts(updates, repo, scanned)
    outcomes = [
        Outcome(u.ref, u.old, u.new, n, decision, rule)
        for u, n in zip(updates, counts, strict=True)
    ]
    return Verdict(status, lines, outcomes)
