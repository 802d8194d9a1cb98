"""`policy suggest NAME`: turn what a bottle reached (in `audit` or `ask` mode) into the
smallest `[egress] allow` list that covers it.

The audit log's hash chain is verified first: a suggestion built from a log someone
edited would allow what they chose. Every host in the log came from the bottle, so
each one must be a pattern the allowlist accepts (normalised) or it is left out, and
nothing of it reaches the output but the normalised name and a count. More than
COLLAPSE_OVER hosts under one registrable domain become `*.domain` (plus the domain
itself when it was reached: a wildcard never covers its bare suffix).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from claude_bottle import paths
from claude_bottle.errors import BottleError, ConfigError
from claude_bottle.policy.allowlist import validate_pattern

COLLAPSE_OVER = 3
WENT_THROUGH = frozenset({"allow", "audit-allow", "pending"})  # pending: held in ask mode


def counts(log: Path) -> tuple[Counter[str], int]:
    """Requests per host that went through (or were held), and hosts left out as
    invalid; BottleError when the chain does not verify."""
    from claude_bottle.bundle.audit_chain import iter_records, verify

    result = verify(log)
    if not result.ok:
        raise BottleError(
            f"{log}: line {result.bad_line}: {result.problem}; not suggesting a policy from it",
            "the audit log was changed or cut; see `claude-bottle audit verify`",
        )
    seen: Counter[str] = Counter()
    skipped = 0
    for record in iter_records(log):
        if record.get("kind") != "egress" or record.get("decision") not in WENT_THROUGH:
            continue
        host = record.get("host")
        try:
            seen[validate_pattern(str(host))] += 1
        except ValueError:
            skipped += 1
    return seen, skipped


def suggest(seen: Counter[str]) -> list[tuple[str, int]]:
    """(pattern, requests) covering every host in `seen`."""
    from claude_bottle.tui.text import registrable_domain

    by_domain: dict[str, list[str]] = defaultdict(list)
    for host in seen:
        by_domain[registrable_domain(host)].append(host)
    entries: dict[str, int] = {}
    for domain, hosts in by_domain.items():
        below = [h for h in hosts if h != domain and h.endswith("." + domain)]
        if len(below) > COLLAPSE_OVER:
            entries[f"*.{domain}"] = sum(seen[h] for h in below)
            hosts = [h for h in hosts if h not in below]
        for host in hosts:
            entries[host] = seen[host]
    # Grouped by domain (labels right to left), a domain before its wildcard.
    return sorted(
        entries.items(),
        key=lambda item: (item[0].removeprefix("*.").split(".")[::-1], item[0][0] == "*"),
    )


def render(name: str, entries: list[tuple[str, int]], records_checked: str) -> str:
    lines = [
        f"# claude-bottle policy suggest {name}: what this bottle reached ({records_checked})",
        "[egress]",
        "allow = [",
    ]
    for pattern, requests in entries:
        plural = "" if requests == 1 else "s"
        # json.dumps of a validated (ASCII, punycode) pattern is a valid TOML string
        lines.append(f"    {json.dumps(pattern)},  # {requests} request{plural}")
    lines.append("]")
    return "\n".join(lines) + "\n"


def policy_suggest(name: str) -> str:
    log = paths.state_dir(paths.validate_name(name)) / "audit.jsonl"
    if not log.is_file():
        raise ConfigError(f"bottle {name} has no audit log ({log})", "see `claude-bottle ls`")
    seen, skipped = counts(log)
    note = "audit chain verified"
    if skipped:
        note += f"; {skipped} records with invalid host names left out"
    return render(name, suggest(seen), note)
