"""The secrets a bundle container needs, resolved on the host and handed over its control
socket ([docker] bundle = "container"; the bundle's side is `bundle/handover.py`).

Each injection's secret (`env:`, `file:`, `command:` run here, once), the user's own
secret-named variables (for DLP) and the Anthropic credential when it comes from `env:`
or `file:` are read by the CLI at start, before any container runs, and kept in memory
until the bundle answers; then they go over the control socket, a host directory bound
into the bundle container alone. None goes through an environment variable, a file, a
mount, argv or an image: `docker inspect` of the bundle shows none. `keychain` stays a
bind of Claude Code's credential directory: a refreshed OAuth token must be written back
there, or the host's Claude Code would be logged out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from claude_bottle.bottle_env import host_secrets
from claude_bottle.bundle.control import MAX_LINE
from claude_bottle.bundle.handover import HANDED, MAX_PROBLEM, Handover
from claude_bottle.bundle.settings import InjectionSpec
from claude_bottle.errors import LaunchError


def handed_source(spec: str) -> bool:
    """Whether the bundle container gets the Anthropic credential `spec` names handed."""
    kind, _, rest = spec.partition(":")
    return kind in ("env", "file") and bool(rest)


def resolve(
    injections: tuple[InjectionSpec, ...],
    anthropic_credential: str,
    host_env: Mapping[str, str],
    home: Path,
) -> Handover:
    """Every secret the bundle container needs, read here on the host; MissingDependency
    (exit 3) naming the source when one cannot be had."""
    injected: dict[str, str] = {}
    if injections:  # a `command:` ran for the plan already: its output is reused
        from claude_bottle.bundle.secret_sources import injected_secrets

        injected = injected_secrets(injections, host_env)
    anthropic, problem = None, ""
    if handed_source(anthropic_credential):
        from claude_bottle.bundle.credentials import load_credential
        from claude_bottle.errors import BottleError

        try:
            anthropic = load_credential(anthropic_credential, host_env, home).value
        except BottleError as exc:  # the gateway says so when asked, as a host bundle would
            problem = exc.message[:MAX_PROBLEM]
    return Handover(injected, host_secrets(host_env), anthropic, problem)


def hand_secrets(handover: Handover, control_socket: Path) -> None:
    """Hand the secrets to the bundle; LaunchError (naming no value) if it does not take
    them. Called once the bundle answers, before the bottle's command runs."""
    from claude_bottle.bundle import control

    size = len(json.dumps({"op": "secrets", **handover._asdict()})) + 1
    if size > MAX_LINE:
        raise LaunchError(
            f"the secrets to hand the bundle container are too large ({size // 1024} KiB, "
            f"at most {MAX_LINE // 1024} KiB): {len(handover.host_secrets)} secret-named "
            "variables",
            "unset the secret-named variables the bottle does not need, "
            'or use [docker] bundle = "host"',
        )
    answer = control.call(control_socket, "secrets", **handover._asdict())
    if not answer.get("ok"):
        raise LaunchError(
            f"the bundle container did not take its secrets: {str(answer.get('error'))[:200]}"
        )


__all__ = ["HANDED", "Handover", "hand_secrets", "handed_source", "resolve"]
