"""Load, validate and merge claude-bottle configuration (SPEC: Policy and configuration).

Layers, later wins for scalars:

1. built-in defaults (`claude_bottle.config.model`);
2. the user config (`$CLAUDE_BOTTLE_CONFIG`, else
   `<user config dir>/claude-bottle/config.toml`; a missing default file is fine);
3. the workspace's `.claude-bottle.toml`, only if the user trusted its exact bytes;
4. `extra_file` (`--config`), which must exist;
5. command-line flags (`--allow`, `--backend`).

`egress.allow`, `egress.deny`, `egress.resolve`, `dlp.patterns`,
`dlp.ignore`, `dlp.ignore_fingerprints`, `bottle.read_only` and `bottle.env`
accumulate across layers (duplicates dropped, first position kept; a pin or
DLP pattern redefined under the same host or name takes the later value).
`git.remotes` merge by remote name, key by key. `egress.rules` and `credentials.inject`
(user-only, `config.edge`) accumulate too; two injections may not name one variable.

Every problem is a `ConfigError` whose message reads
`<file>: <dotted.key>: <problem>`. Values that could be secrets (the
credential reference, git URLs) are never echoed back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

from claude_bottle.config.merge import _Merged
from claude_bottle.config.model import Config
from claude_bottle.config.schema import _Source
from claude_bottle.config.trust import TrustStore, display_path, read_config_file
from claude_bottle.config.values import _allow_entry
from claude_bottle.errors import ConfigError

PROJECT_FILE: Final = ".claude-bottle.toml"
CONFIG_ENV: Final = "CLAUDE_BOTTLE_CONFIG"


def print_to_stderr(message: str) -> None:
    print(f"claude-bottle: warning: {message}", file=sys.stderr)


def _default_user_config() -> tuple[Path, bool]:
    """The user config path and whether the user named it explicitly (then it must exist)."""
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser(), True
    import platformdirs

    return platformdirs.user_config_path("claude-bottle") / "config.toml", False


def user_config_path() -> Path:
    """Where the user config is (`$CLAUDE_BOTTLE_CONFIG`, else the platform's default)."""
    return _default_user_config()[0]


def _inside(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory.resolve())
    except OSError:
        return False


# -- entry point ---------------------------------------------------------------------------


def check_project_file(path: Path, content: bytes, *, known_backends: Iterable[str]) -> None:
    """Raise the ConfigError `load_config` would raise for this project file's `content`."""
    merged = _Merged(known_backends=tuple(known_backends))
    merged.apply_file(path, content, _Source(display_path(path)), workspace_file=True)
    merged.build()


def load_config(
    *,
    workspace: Path,
    extra_file: Path | None = None,
    allow: Sequence[str] = (),
    backend: str | None = None,
    docker_bundle: str | None = None,
    known_backends: Iterable[str],
    user_config: Path | None = None,
    trust_store: TrustStore | None = None,
    warn: Callable[[str], None] = print_to_stderr,
) -> Config:
    """The configuration for a bottle on `workspace`; ConfigError on any problem."""
    merged = _Merged(known_backends=tuple(known_backends))
    workspace = workspace.absolute()

    if user_config is not None:
        user_path, must_exist = user_config, False
    else:
        user_path, must_exist = _default_user_config()
    user_path = user_path.absolute()
    content = read_config_file(user_path)
    if content is None and must_exist:
        raise ConfigError(
            f"{display_path(user_path)}: no such file (named by ${CONFIG_ENV})",
            f"create it, or unset {CONFIG_ENV} to use the default user config",
        )
    if content is not None:
        in_workspace = _warn_if_in_workspace(user_path, workspace, "user config", warn)
        merged.apply_file(
            user_path, content, _Source(display_path(user_path)), workspace_file=in_workspace
        )

    project = workspace / PROJECT_FILE
    shown = display_path(project)
    if project.is_symlink():
        warn(f"{shown} is ignored: it is a symbolic link (only a regular file can be trusted).")
        content = None
    else:
        content = read_config_file(project, follow_symlinks=False)
    if content is not None:
        store = trust_store if trust_store is not None else TrustStore()
        status = store.status(project, content)
        if status == "trusted":
            merged.apply_file(project, content, _Source(shown), workspace_file=True)
        elif status == "changed":
            warn(
                f"{shown} is ignored: it changed since you trusted it. "
                "Review it, then run `claude-bottle trust` again."
            )
        else:
            warn(
                f"{shown} is ignored: it is not trusted. Review it, then run `claude-bottle trust`."
            )

    if extra_file is not None:
        extra = extra_file.absolute()
        content = read_config_file(extra)
        if content is None:
            raise ConfigError(
                f"{display_path(extra)}: no such file (given with --config)",
                "check the path passed to --config",
            )
        in_workspace = _warn_if_in_workspace(extra, workspace, "--config file", warn)
        merged.apply_file(extra, content, _Source(display_path(extra)), workspace_file=in_workspace)

    for pattern in allow:
        merged.allow.setdefault(_allow_entry(pattern, "", _Source("--allow")))
    if backend is not None:
        merged.backend = merged.check_backend(backend, "", _Source("--backend"))
    if docker_bundle is not None:
        merged.docker_bundle = merged.check_docker_bundle(
            docker_bundle, "", _Source("--docker-bundle")
        )
    return merged.build()


def _warn_if_in_workspace(
    path: Path, workspace: Path, what: str, warn: Callable[[str], None]
) -> bool:
    """Whether `path` is inside the workspace; then it is a workspace file (no user-only
    keys) and the user is told that policy files belong outside."""
    if not _inside(path, workspace):
        return False
    warn(
        f"{display_path(path)} ({what}) is inside the workspace, where the agent can edit "
        "it; it is honoured, but policy files belong outside the workspace."
    )
    return True
