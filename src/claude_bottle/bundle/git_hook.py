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

Anything but success is a non-zero status: the hook exits with it, receive-pack then
discards the quarantine and moves no ref, and git prints the verdict's lines on the
bottle's terminal as `remote:` lines. Each ref's outcome becomes an audit record.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

from claude_bottle.bundle.git_policy import (
    ZERO_SHA,
    GateRemote,
    RefUpdate,
    check_update,
    parse_updates,
)
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
PREFIX = "claude-bottle git gate: "


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

    def scan_push(self, updates: list[RefUpdate]) -> None:
        tips = [u.new for u in updates if u.new != ZERO_SHA]
        for update in updates:
            self.check_name(update.ref, "the ref")
        if not tips:
            return
        listed = self.repo.git("rev-list", "--objects", *tips, "--not", "--all")
        if listed.returncode != 0:
            raise Refusal(500, "git:scan", "could not list the pushed objects")
        paths: dict[str, str] = {}
        for line in listed.stdout.decode(errors="replace").splitlines():
            sha, _, path = line.partition(" ")
            paths[sha] = path
            if path:
                self.check_name(path, "the path")
        self._scan_objects(paths)

    def _scan_objects(self, paths: dict[str, str]) -> None:
        process = subprocess.Popen(
            ["git", "cat-file", "--batch", "--buffer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(self.repo.env),
            cwd=self.repo.path,
        )
        assert process.stdin is not None and process.stdout is not None
        # The names go in from a thread while the objects are read here: one round trip
        # per object would cost more than the scan of a small one.
        feeder = threading.Thread(target=_feed_names, args=(process.stdin, iter(paths)))
        feeder.start()
        try:
            for sha, path in paths.items():
                kind, size = _object_header(process.stdout, sha)
                if kind == "tree":  # binary; its names were scanned as paths
                    _skip(process.stdout, size + 1)
                    continue
                where = f"the file {path!r}" if kind == "blob" else f"{kind} {sha[:12]}"
                self._scan_stream(process.stdout, size, where)
                process.stdout.read(1)  # the newline after the content
        finally:
            process.kill()
            process.stdout.close()
            feeder.join()
            process.wait()

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


def _feed_names(stdin: IO[bytes], names: Iterator[str]) -> None:
    try:
        for name in names:
            stdin.write(name.encode() + b"\n")
        stdin.flush()
    except (BrokenPipeError, ValueError):
        pass  # cat-file was stopped: a hit, or a failure the reader reports
    finally:
        with contextlib.suppress(BrokenPipeError, ValueError):
            stdin.close()


def _object_header(stream: IO[bytes], sha: str) -> tuple[str, int]:
    header = stream.readline().decode(errors="replace").split()
    if len(header) != 3 or header[0] != sha:
        raise Refusal(500, "git:scan", "could not read a pushed object")
    return header[1], int(header[2])


def _skip(stream: IO[bytes], size: int) -> None:
    while size > 0:
        size -= len(stream.read(min(READ_SIZE, size)) or b"x" * size)


def push_upstream(remote: GateRemote, updates: list[RefUpdate], repo: Repo) -> tuple[int, bytes]:
    """`git push --atomic` of exactly these updates, each leased to its checked old value."""
    args = ["push", "--atomic", "--porcelain", "--no-verify"]
    for update in updates:
        expected = "" if update.old == ZERO_SHA else update.old
        args.append(f"--force-with-lease={update.ref}:{expected}")
    args.append(remote.url)
    for update in updates:
        source = "" if update.new == ZERO_SHA else update.new
        args.append(f"{source}:{update.ref}")
    found = repo.git(*args)
    return found.returncode, found.stderr + found.stdout


def judge(
    remote: GateRemote, scanner: Scanner | None, updates: list[RefUpdate], repo: Repo
) -> None:
    """Raise `Refusal` (or `DlpHit`) unless every update may go upstream."""
    for update in updates:
        fast_forward = (
            update.old == ZERO_SHA
            or update.new == ZERO_SHA
            or repo.is_ancestor(update.old, update.new)
        )
        check_update(remote, update, fast_forward)
    if scanner is not None:
        ContentScan(scanner, repo).scan_push(updates)


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
    counts: list[int] = []
    decision, rule, status = "deny", "", 1
    lines: list[str] = []
    try:
        repo = quarantined(mirror, env, quarantine)
        updates = parse_updates(hook_input)
        counts = [0 if u.new == ZERO_SHA else repo.new_commits(u.new) for u in updates]
        judge(remote, scanner, updates, repo)
        code, answer = push_upstream(remote, updates, repo)
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
    outcomes = [
        Outcome(u.ref, u.old, u.new, n, decision, rule)
        for u, n in zip(updates, counts or [0] * len(updates), strict=True)
    ]
    return Verdict(status, lines, outcomes)
