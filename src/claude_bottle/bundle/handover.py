"""A bundle container's secrets, handed by the CLI over the control socket (`secrets` op).

A bundle in a container cannot read the host's sources (its environment, `command:`,
files, helpers), and none of its secrets may go into what the engine keeps and shows of
the container: environment, argv, mounts, image. So the CLI resolves them on the host at
start and sends them here once the bundle answers; the bundle keeps them in memory and
serves nothing that needs them before (`settings.handed_secrets`).

The handover is taken once: the first attempt uses it up, valid or not (an invalid one
stops the bundle: it cannot serve without its secrets), and every later one is refused
and audited. The bottle cannot reach the control socket (its directory is bound into
the bundle container alone); the one shot is so that whoever did could not swap a
secret for one of their own. Messages name keys, never values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from claude_bottle.bundle.settings import BundleSettings
from claude_bottle.errors import BottleError

HANDED = "handed"
"""The source a bundle container's settings name for a secret the CLI hands over."""
MAX_HOST_SECRETS = 256
MAX_PROBLEM = 1000


class Handover(NamedTuple):
    injected: dict[str, str]  # each injection's secret, by the variable it stands for
    host_secrets: dict[str, str]  # the user's own secret-named variables, for DLP
    anthropic: str | None  # the Anthropic credential, when its source is `handed`
    anthropic_problem: str = ""  # why the CLI could not read it (no value), if it could not


def _strings(value: object, field: str, limit: int) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > limit:
        raise ValueError(f"secrets: {field} is not a map of at most {limit} entries")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"secrets: {field} maps names to strings only")
    return dict(value)


def parse(request: Mapping[str, Any], settings: BundleSettings) -> Handover:
    """The handover in `request`, checked against what `settings` expect; ValueError
    saying what is wrong (by name) if it is not exactly that."""
    from claude_bottle.bundle.credentials import handed_credential
    from claude_bottle.bundle.secret_sources import check_secret

    injected = _strings(request.get("injected"), "injected", len(settings.injections))
    expected = sorted(spec.env for spec in settings.injections)
    if sorted(injected) != expected:
        raise ValueError(
            f"secrets: injected holds {sorted(injected)}, the injections are {expected}"
        )
    host = _strings(request.get("host_secrets"), "host_secrets", MAX_HOST_SECRETS)
    anthropic, problem = request.get("anthropic"), request.get("anthropic_problem", "")
    if not isinstance(problem, str) or len(problem) > MAX_PROBLEM:
        raise ValueError(f"secrets: anthropic_problem is not a string of at most {MAX_PROBLEM}")
    try:
        for name, value in injected.items():
            check_secret(value, f"injected {name}")
        if anthropic is not None and settings.anthropic_credential != HANDED:
            raise ValueError("secrets: this bundle reads its Anthropic credential itself")
        if anthropic is not None or (settings.anthropic_credential == HANDED and not problem):
            handed_credential(anthropic)  # a missing one comes with the reason
    except BottleError as exc:
        raise ValueError(f"secrets: {exc.message}") from None
    return Handover(injected, host, anthropic if isinstance(anthropic, str) else None, problem)
