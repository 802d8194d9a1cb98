"""The git gate's pre-receive hook: judge a push from the bottle, then send it upstream.

`git receive-pack` (run by `git http-backend` for the gate) has stored the pushed
objects in a quarantine and runs this hook before any ref of the gate's mirror moves.
Here, in order:

1. every ref update is checked against the remote's policy (`git_policy.check_update`;
   git's `merge-base --is-ancestor` says whether it is a fast-forward);
2. what the push adds (the objects reachable from the new tips and not from the mirror's
   refs, which are the upstream's) is scanned by the DLP engine: commit and tag objects
   whole (messages, identities), every new blob, every path and ref name;
3. the push goes upstream, atomically, each ref leased to the value that was checked, with
   the host-side credential (in this process's environment, never the bottle's).

Anything but success exits non-zero: receive-pack then discards the quarantine and moves
no ref, and git prints this hook's stderr on the bottle's terminal as `remote:` lines.
The outcome of each ref goes to a report file the gate turns into audit records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, NamedTuple

from claude_bottle.bundle.git_policy import (
    ZERO_SHA,
    GateRemote,
    RefUpdate,
    check_update,
    parse_updates,
)
from claude_bottle.bundle.git_upstream import with_config
from claude_bottle.bundle.refusal import Refusal

REMOTE_VAR = "CLAUDE_BOTTLE_GIT_REMOTE"  # the remote's policy, JSON
DLP_VAR = "CLAUDE_BOTTLE_GIT_DLP"  # the DLP settings, JSON
REPORT_VAR = "CLAUDE_BOTTLE_GIT_REPORT"  # where the outcome goes, for the audit log
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


class DlpHit(Exception):
    def __init__(self, rule: str, where: str, name: str = "", shown: str = "") -> None:
        super().__init__(where)
        self.rule = rule
        self.where = where
        self.name, self.shown = name, shown  # a name that held the secret, and as shown


def _git(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", *args], input=stdin, capture_output=True, check=False, timeout=PUSH_TIMEOUT
    )


def is_ancestor(old: str, new: str) -> bool:
    return _git("merge-base", "--is-ancestor", old, new).returncode == 0


def new_commits(tip: str) -> int:
    found = _git("rev-list", "--count", tip, "--not", "--all")
    return int(found.stdout or b"0") if found.returncode == 0 else 0


class ContentScan:
    """DLP over the objects a push adds."""

    def __init__(self, settings: dict[str, object]) -> None:
        from claude_bottle.bundle.scanning import DirectoryCache, host_secrets
        from claude_bottle.paths import cache_root
        from claude_bottle.policy.dlp import Scanner

        ignore = settings.get("ignore", [])
        fingerprints = settings.get("ignore_fingerprints", [])
        patterns = settings.get("patterns", [])
        assert isinstance(ignore, list) and isinstance(fingerprints, list)
        assert isinstance(patterns, list)
        self.scanner = Scanner(
            tuple((str(name), str(regex)) for name, regex in patterns),
            host_secrets(os.environ),
            cache=DirectoryCache(cache_root() / "dlp"),
            ignore_rules=ignore,
            ignore_fingerprints=fingerprints,
        )

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
        listed = _git("rev-list", "--objects", *tips, "--not", "--all")
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
            ["git", "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            for sha, path in paths.items():
                process.stdin.write(sha.encode() + b"\n")
                process.stdin.flush()
                kind, size = _object_header(process.stdout)
                if kind == "tree":  # binary; its names were scanned as paths
                    _skip(process.stdout, size + 1)
                    continue
                where = f"the file {path!r}" if kind == "blob" else f"{kind} {sha[:12]}"
                self._scan_stream(process.stdout, size, where)
                process.stdout.read(1)  # the newline after the content
        finally:
            process.stdin.close()
            process.kill()
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


def _object_header(stream: IO[bytes]) -> tuple[str, int]:
    header = stream.readline().decode(errors="replace").split()
    if len(header) != 3:
        raise Refusal(500, "git:scan", "could not read a pushed object")
    return header[1], int(header[2])


def _skip(stream: IO[bytes], size: int) -> None:
    while size > 0:
        size -= len(stream.read(min(READ_SIZE, size)) or b"x" * size)


def push_upstream(remote: GateRemote, updates: list[RefUpdate]) -> tuple[int, bytes]:
    """`git push --atomic` of exactly these updates, each leased to its checked old value."""
    args = ["push", "--atomic", "--porcelain", "--no-verify"]
    for update in updates:
        expected = "" if update.old == ZERO_SHA else update.old
        args.append(f"--force-with-lease={update.ref}:{expected}")
    args.append(remote.url)
    for update in updates:
        source = "" if update.new == ZERO_SHA else update.new
        args.append(f"{source}:{update.ref}")
    env = with_config(dict(os.environ), [("core.hooksPath", "/dev/null")])
    found = subprocess.run(
        ["git", *args], capture_output=True, check=False, env=env, timeout=PUSH_TIMEOUT
    )
    return found.returncode, found.stderr + found.stdout


def say(lines: list[str]) -> None:
    for line in lines:
        print(PREFIX + line, file=sys.stderr)
    sys.stderr.flush()


def judge(remote: GateRemote, dlp: dict[str, object] | None, updates: list[RefUpdate]) -> None:
    """Raise `Refusal` (or `DlpHit`) unless every update may go upstream."""
    for update in updates:
        fast_forward = (
            update.old == ZERO_SHA or update.new == ZERO_SHA or is_ancestor(update.old, update.new)
        )
        check_update(remote, update, fast_forward)
    if dlp is not None:
        ContentScan(dlp).scan_push(updates)


def main() -> int:
    remote = GateRemote(**json.loads(os.environ[REMOTE_VAR]))
    remote = remote._replace(push=tuple(remote.push))
    dlp_text = os.environ.get(DLP_VAR)
    dlp = json.loads(dlp_text) if dlp_text else None
    report = Path(os.environ[REPORT_VAR])
    updates: list[RefUpdate] = []
    counts: list[int] = []
    decision, rule, status = "deny", "", 1
    try:
        updates = parse_updates(sys.stdin.read(1024 * 1024))
        counts = [0 if u.new == ZERO_SHA else new_commits(u.new) for u in updates]
        judge(remote, dlp, updates)
        code, answer = push_upstream(remote, updates)
        for line in answer.decode(errors="replace").splitlines():
            print(line, file=sys.stderr)  # the upstream's own words
        if code == 0:
            decision, rule, status = "allow", "git:push", 0
        else:
            decision, rule = "error", "git:upstream-refused"
            say([f"push refused by the upstream of remote {remote.name} (see above)"])
    except Refusal as refusal:
        decision, rule = refusal.decision, refusal.rule
        lines = [f"push refused, rule {refusal.rule}: {refusal.message}"]
        if refusal.hint:
            lines.append(f"to allow it, in your user config: {refusal.hint}")
        say(lines)
    except DlpHit as hit:
        rule = f"dlp:{hit.rule}"
        # The audit record names the ref: never with the secret in it.
        updates = [u._replace(ref=hit.shown) if u.ref == hit.name else u for u in updates]
        say(
            [
                f"push refused, rule {rule}: a secret in {hit.where}",
                "remove it from the pushed commits (the whole push was refused); a false "
                "positive is silenced with [dlp] ignore_fingerprints",
            ]
        )
    except Exception as exc:  # fail closed, and say so
        decision, rule = "error", "git:gate-error"
        say([f"push refused: the gate failed ({type(exc).__name__})"])
    outcomes = [
        Outcome(u.ref, u.old, u.new, n, decision, rule)._asdict()
        for u, n in zip(updates, counts or [0] * len(updates), strict=True)
    ]
    report.write_text(json.dumps(outcomes))
    return status


if __name__ == "__main__":
    sys.exit(main())
