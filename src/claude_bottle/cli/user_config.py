"""`allow --always`: add a host to the user's own config, keeping everything else in it.

Only the user config (`~/.config/claude-bottle/config.toml`, or `$CLAUDE_BOTTLE_CONFIG`)
is written, never the workspace's `.claude-bottle.toml`: the agent can write that one.
tomlkit edits the document in place, so the user's comments, order and formatting stay;
the new entry carries a comment saying when and from which bottle it came. The file is
replaced atomically, and checked to still parse before it is.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

from claude_bottle import paths
from claude_bottle.config.load import user_config_path
from claude_bottle.errors import ConfigError
from claude_bottle.policy.allowlist import validate_allow_entry


def append_allow(pattern: str, *, bottle: str, path: Path | None = None) -> Path:
    """Append `pattern` to `[egress] allow` of the user config (created if missing);
    nothing changes when it is listed already. Returns the file's path."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    pattern = validate_allow_entry(pattern)  # never write what the allowlist would refuse
    path = path or user_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(
            f"{path}: not valid TOML ({exc}); not changed",
            f"fix it, then add {pattern!r} to [egress] allow yourself",
        ) from exc
    egress = document.get("egress")
    if egress is None:
        egress = tomlkit.table()
        document["egress"] = egress
    if not isinstance(egress, dict):
        raise ConfigError(f"{path}: egress is not a table; not changed")
    allow = egress.get("allow")
    if allow is None:
        allow = tomlkit.array()
        egress["allow"] = allow
    if not isinstance(allow, list):
        raise ConfigError(f"{path}: egress.allow is not a list; not changed")
    if pattern in allow:
        return path
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    comment = f"added {when} by `claude-bottle allow --always` from bottle {bottle}"
    if isinstance(allow, tomlkit.items.Array):
        allow.add_line(pattern, comment=comment)
        if not allow.as_string()[:-1].rstrip(" ").endswith("\n"):
            allow.add_line(indent="")  # the closing bracket on a line of its own
    else:  # pragma: no cover - tomlkit always gives an Array for a TOML array
        allow.append(pattern)
    new_text = tomlkit.dumps(document)
    tomllib.loads(new_text)  # what we write must load
    _replace(path, new_text)
    return path


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    paths.write_atomically(path, text.encode(), mode)
