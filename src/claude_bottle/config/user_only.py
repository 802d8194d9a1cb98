"""Keys only the user's own config may set (SPEC: Policy and configuration).

The agent writes the workspace's `.claude-bottle.toml` as easily as the user does, and
a review before `claude-bottle trust` is a person reading TOML: one line there that sends
the API key to another upstream, switches secret scanning off or grants a host path is
easy to miss. So a workspace file may not set anything that points the bundle somewhere
or weakens it, trusted or not; those keys come only from the user config
(`~/.config/claude-bottle/config.toml`, or `$CLAUDE_BOTTLE_CONFIG`) or a `--config` file,
and only when that file is outside the workspace.

This is the one list of them. A new key that points the bundle somewhere or weakens it
joins it here; a listed table covers every key in it, present and future.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from claude_bottle.errors import ConfigError

USER_ONLY_KEYS: Final = (
    "credentials",  # credential sources, and the injections [[credentials.inject]]
    "gateway",  # the API upstream and OAuth URLs the real key goes to, their CA, the budget
    "git",  # remotes: where the host's git credentials are used, what may be pushed
    "egress.mode",  # audit lets every host through
    "egress.rules",  # a rule implies its host is allowed, and can open a registry's writes
    "egress.resolve",  # pins a host name to an address of the file's choosing
    "egress.intercept",  # off: HTTPS bodies are no longer scanned
    "egress.intercept_exclude",
    "egress.upstream_ca_file",  # a CA the bundle trusts for every upstream
    "dlp.enabled",
    "dlp.block",
    "dlp.ignore",  # silences a rule
    "dlp.ignore_fingerprints",  # silences a value
    "bottle.read_only",  # host paths the bottle may read
    "bottle.env",  # host environment variables passed in
    "bottle.nested_sandbox",  # the kernel's namespace and mount code becomes reachable
    "bottle.audit_max",  # a larger budget lets the bottle fill the disk with audit records
    "bottle.audit_rate",
    "bottle.host_tools",  # "warn" where the user chose "revert"
    "bottle.memory",  # limits: raised, a runaway bottle reaches the host
    "bottle.pids",
    "bottle.cpus",
    "bottle.disk",
    "bottle.require_limits",
    "docker",  # base_image: the image the agent image is built on; bundle: where the
    # bundle runs (a container on a bridge network, or a host process)
)


def user_only_key_in(data: Mapping[str, object]) -> str | None:
    """The first user-only key set in `data` (a parsed config file), dotted; None if none.

    For a listed table the key named is the first one set in it, so the message points at
    the line to move.
    """
    for dotted in USER_ONLY_KEYS:
        node: object = data
        found: list[str] = []
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            found.append(part)
            node = node[part]
        else:
            if isinstance(node, Mapping) and node:
                found.append(_first_key(node))
            return ".".join(found)
    return None


def refuse_user_only(data: Mapping[str, object], where: str) -> None:
    """Raise the ConfigError (exit 2) naming `where` and the key if a workspace file,
    parsed into `data`, sets a user-only key."""
    key = user_only_key_in(data)
    if key is not None:
        raise ConfigError(
            f"{where}: {key}: may be set only in your user config or a --config file outside "
            "the workspace: the agent can write this file, and this key points the bundle "
            "somewhere or weakens it",
            "move it to ~/.config/claude-bottle/config.toml (or a file outside the workspace "
            "that you pass with --config)",
        )


def _first_key(table: Mapping[str, object]) -> str:
    name, value = next(iter(table.items()))
    if isinstance(value, Mapping) and value:
        return f"{_bare(name)}.{_first_key(value)}"
    return _bare(name)


def _bare(name: str) -> str:
    import json

    return (
        name
        if name.replace("_", "").replace("-", "").isalnum() and name.isascii()
        else json.dumps(name)
    )
