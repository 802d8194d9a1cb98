"""Per-method, per-path rules (`[[egress.rules]]`) and the built-in read-only rule sets.

A host with rules admits only requests that match one of them; every other request is
refused (`403`, rule `l7:<host>`) with a hint naming the `[[egress.rules]]` entry that
would allow it. Where rules come from, for one host:

1. the user's own `[[egress.rules]]` for it, whenever there are any (they replace the
   built-in set: the user has said what the host may do);
2. else, for a package registry (npm, PyPI and its file host, crates.io, the Go module
   proxy, RubyGems, Maven Central), the built-in set: what installing needs (reads, and
   the few POSTs clients make while installing), never a publish;
3. else, for a host that receives an injected credential with write rights (GitHub's
   REST, GraphQL and git hosts, GitLab), the built-in read-only set: such a credential
   would turn the API into a way around the rest of the policy;
4. else none: the host behaves as any allowed host.

Matching is on the normalised path (`policy.l7_paths`); an ambiguous path is refused on a
host with rules. Nothing here touches a socket.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from claude_bottle.bundle.refusal import Refusal
from claude_bottle.policy.l7_paths import AmbiguousPath, glob_matches, normalise_path

READS = ("GET", "HEAD")
MAX_HINT_PATH = 200


class EgressRule(NamedTuple):
    """One `[[egress.rules]]` entry (or a built-in one): `origin` says which."""

    host: str
    methods: tuple[str, ...]
    paths: tuple[str, ...]
    websocket: bool = False
    origin: str = "config"  # "config", or the built-in set's name
    graphql_read_only: bool = False  # the body must be a read-only GraphQL request

    def admits(self, method: str, path: str, websocket: bool) -> bool:
        if method not in self.methods and "*" not in self.methods:
            return False
        if websocket and not self.websocket:
            return False
        return any(glob_matches(glob, path) for glob in self.paths)


def _builtin(
    origin: str, hosts: Iterable[str], *extra: tuple[str, tuple[str, ...]]
) -> list[EgressRule]:
    rules = []
    for host in hosts:
        rules.append(EgressRule(host, READS, ("/**",), origin=origin))
        for method, paths in extra:
            rules.append(EgressRule(host, (method,), paths, origin=origin))
    return rules


# What installing needs, per registry; a publish (npm's PUT, twine's POST, cargo's PUT,
# gem push's POST, a Maven deploy's PUT) matches none of it.
REGISTRY_RULES: tuple[EgressRule, ...] = (
    *_builtin(
        "npm",
        ["registry.npmjs.org", "registry.yarnpkg.com"],
        (
            "POST",
            (
                "/-/npm/v1/security/audits",
                "/-/npm/v1/security/audits/quick",
                "/-/npm/v1/security/advisories/bulk",
            ),
        ),
    ),
    *_builtin(
        "pypi",
        ["pypi.org", "files.pythonhosted.org", "upload.pypi.org", "test.pypi.org"],
    ),
    *_builtin("crates.io", ["crates.io", "index.crates.io", "static.crates.io"]),
    *_builtin("go", ["proxy.golang.org", "sum.golang.org"]),
    *_builtin("rubygems", ["rubygems.org", "index.rubygems.org"]),
    *_builtin("maven", ["repo.maven.apache.org", "repo1.maven.org"]),
)

# Read-only, for hosts that receive an injected credential: the API reads, git's fetch
# (its one POST), and GraphQL queries (one POST endpoint for reads and writes alike: the
# body is held and checked to hold no mutation, `policy.graphql`).
WRITE_CAPABLE_RULES: tuple[EgressRule, ...] = (
    *_builtin("github", ["api.github.com", "uploads.github.com"]),
    EgressRule("api.github.com", ("POST",), ("/graphql",), False, "github", True),
    *_builtin("github", ["github.com"], ("POST", ("/**/git-upload-pack",))),
    *_builtin("gitlab", ["gitlab.com"], ("POST", ("/**/git-upload-pack",))),
    EgressRule("gitlab.com", ("POST",), ("/api/graphql",), False, "gitlab", True),
)


def _by_host(rules: Iterable[EgressRule]) -> dict[str, tuple[EgressRule, ...]]:
    grouped: dict[str, list[EgressRule]] = {}
    for rule in rules:
        grouped.setdefault(rule.host, []).append(rule)
    return {host: tuple(found) for host, found in grouped.items()}


_REGISTRIES = _by_host(REGISTRY_RULES)
_WRITE_CAPABLE = _by_host(WRITE_CAPABLE_RULES)


class RuleBook:
    """The rules in force for each host; hosts not in it have none."""

    def __init__(
        self, user_rules: Iterable[EgressRule] = (), injected_hosts: Iterable[str] = ()
    ) -> None:
        own = _by_host(user_rules)
        self.rules: dict[str, tuple[EgressRule, ...]] = {**_REGISTRIES}
        for host in injected_hosts:
            if host in _WRITE_CAPABLE:
                self.rules[host] = _WRITE_CAPABLE[host]
        self.rules.update(own)

    def __contains__(self, host: str) -> bool:
        return host in self.rules

    def in_force(self, hosts: Iterable[str]) -> Iterator[EgressRule]:
        """The rules for `hosts` (what `plan` shows for the hosts a bottle may reach)."""
        for host in dict.fromkeys(hosts):
            yield from self.rules.get(host, ())

    def check(
        self, host: str, method: str, target: str, websocket: bool = False
    ) -> EgressRule | None:
        """Refuse the request unless a rule for `host` admits it: the first that does, or
        None for a host without rules (no rules, no say)."""
        rules = self.rules.get(host)
        if rules is None:
            return None
        try:
            path = normalise_path(target)
        except AmbiguousPath as exc:
            raise Refusal(
                403, f"l7:{host}", f"{exc}; on a host with rules such a path is refused"
            ) from exc
        for rule in rules:
            if rule.admits(method, path, websocket):
                return rule
        raise Refusal(
            403,
            f"l7:{host}",
            f"{method} {path[:MAX_HINT_PATH]} matches no rule for {host}"
            + (f" (built-in {rules[0].origin} rules)" if rules[0].origin != "config" else ""),
            hint=rule_hint(host, method, path, websocket),
        )


def rule_hint(host: str, method: str, path: str, websocket: bool) -> str:
    """The `[[egress.rules]]` entry that would admit this request, as TOML on one line."""
    entry = (
        f"[[egress.rules]] host = {json.dumps(host)}, methods = [{json.dumps(method)}], "
        f"paths = [{json.dumps(path[:MAX_HINT_PATH])}]"
    )
    if websocket:
        entry += ", websocket = true"
    return f"add to your user config: {entry}"


def is_websocket(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(name == b"upgrade" and b"websocket" in value.lower() for name, value in headers)
