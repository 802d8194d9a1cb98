"""The git gate's rules, without I/O: which requests it serves and which ref updates pass.

The gate (`git_gate`) serves each `[git.remotes.NAME]` to the bottle at `/<NAME>.git`
over git's smart HTTP protocol. Requests are routed here (`route`), and every ref update
of a push is judged here (`check_update`) with the facts git established on the host side
(is the new commit a descendant of the old one). A `Refusal` names the rule that said no
and the config line that would allow it; the push hook prints both as `remote:` lines.

`push_outside_gate` is the egress proxy's rule: git's push protocol never leaves the
bottle except through the gate.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

from claude_bottle.bundle.refusal import Refusal

ZERO_SHA = "0" * 40
UPLOAD = "git-upload-pack"
RECEIVE = "git-receive-pack"
_SHA = re.compile(r"[0-9a-f]{40}")
_REMOTE_PATH = re.compile(r"/([A-Za-z0-9][A-Za-z0-9._-]{0,62})\.git(/.*)")


class GateRemote(NamedTuple):  # not a dataclass: see bundle/settings.py
    """One `[git.remotes.NAME]` as the bundle serves it (the bundle ships without config/)."""

    name: str
    url: str
    push: tuple[str, ...] = ("bottle/*",)
    tags: bool = False
    force: bool = False
    delete: bool = False
    credential: str = "git"  # a source (git, env:VAR, file:PATH, command:...), never a value


class Route(NamedTuple):
    remote: GateRemote
    service: str  # UPLOAD or RECEIVE
    advertise: bool  # GET info/refs (refs advertisement) rather than the POSTed exchange
    path_info: str  # what `git http-backend` is given


class RefUpdate(NamedTuple):
    old: str
    new: str
    ref: str


def route(remotes: dict[str, GateRemote], method: str, target: str) -> Route:
    """The remote and git service a request from the bottle asks for; `Refusal` otherwise.

    Only git's smart protocol is served: the refs advertisement and the two services.
    """
    parts = urlsplit(target)
    found = _REMOTE_PATH.fullmatch(parts.path) if target.startswith("/") else None
    if found is None:
        raise Refusal(404, "git:unknown-path", "the git gate serves /<remote>.git only")
    name, rest = found.groups()
    remote = remotes.get(name)
    if remote is None:
        raise Refusal(
            404,
            "git:unknown-remote",
            f"no [git.remotes.{name}] is configured for this bottle",
            f"add [git.remotes.{name}] with its url to your user config",
        )
    if rest == "/info/refs" and method == "GET":
        services = parse_qs(parts.query).get("service", [])
        if services in ([UPLOAD], [RECEIVE]):
            return Route(remote, services[0], True, f"/{name}.git/info/refs")
    elif rest in (f"/{UPLOAD}", f"/{RECEIVE}") and method == "POST":
        return Route(remote, rest[1:], False, f"/{name}.git{rest}")
    raise Refusal(
        400, "git:unsupported-request", "only git's smart HTTP protocol is served (git >= 1.7)"
    )


def parse_updates(lines: str) -> list[RefUpdate]:
    """The pre-receive hook's input: one `old new ref` line per update."""
    updates = []
    for line in lines.splitlines():
        old, _, rest = line.partition(" ")
        new, _, ref = rest.partition(" ")
        if not (_SHA.fullmatch(old) and _SHA.fullmatch(new) and ref):
            raise Refusal(400, "git:bad-update", "malformed ref update from receive-pack")
        updates.append(RefUpdate(old, new, ref))
    return updates


def branch_matches(pattern: str, branch: str) -> bool:
    """`*` matches within one path component, `**` across them (as in git's wildmatch)."""
    regex = "".join(
        ".*" if piece == "**" else "[^/]*" if piece == "*" else re.escape(piece)
        for piece in re.split(r"(\*\*|\*)", pattern)
    )
    return re.fullmatch(regex, branch) is not None


def _key(remote: GateRemote, key: str) -> str:
    return f"[git.remotes.{remote.name}] {key}"


def check_update(remote: GateRemote, update: RefUpdate, fast_forward: bool) -> None:
    """Refuse one ref update of a push unless the remote's policy allows it.

    `fast_forward` is whether `update.new` descends from `update.old` (git established it;
    meaningless for a creation or deletion).
    """
    created, deleted = update.old == ZERO_SHA, update.new == ZERO_SHA
    if update.ref.startswith("refs/tags/"):
        if not created:
            raise Refusal(
                403,
                "git:tag-move",
                f"{update.ref}: tags may only be created, never moved or deleted",
            )
        if not remote.tags:
            raise Refusal(
                403,
                "git:tag",
                f"{update.ref}: this remote does not accept tags from the bottle",
                f"{_key(remote, 'tags')} = true",
            )
        return
    if not update.ref.startswith("refs/heads/"):
        raise Refusal(403, "git:ref-namespace", f"{update.ref}: only branches and tags are pushed")
    branch = update.ref[len("refs/heads/") :]
    if not any(branch_matches(pattern, branch) for pattern in remote.push):
        allowed = ", ".join(remote.push) or "(none)"
        raise Refusal(
            403,
            "git:branch",
            f"{update.ref}: branch {branch!r} matches none of the push patterns ({allowed})",
            f'{_key(remote, "push")} = [..., "{branch}"]',
        )
    if deleted and not remote.delete:
        raise Refusal(
            403,
            "git:delete",
            f"{update.ref}: branch deletion is not allowed",
            f"{_key(remote, 'delete')} = true",
        )
    if not (created or deleted or fast_forward or remote.force):
        raise Refusal(
            403,
            "git:force",
            f"{update.ref}: not a fast-forward (a force-push)",
            f"{_key(remote, 'force')} = true",
        )


def push_outside_gate(path: str) -> Refusal | None:
    """The proxy's answer to git's push protocol (smart HTTP) to any host: always no."""
    parts = urlsplit(path)
    pushing = parts.path.rstrip("/").endswith("/" + RECEIVE) or RECEIVE in parse_qs(
        parts.query
    ).get("service", [])
    if not pushing:
        return None
    return Refusal(
        403,
        "git-push-outside-gate",
        "git push goes only through the bottle's git gate",
        "configure the repository under [git.remotes.NAME] in your user config",
    )
