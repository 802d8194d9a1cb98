"""Trust records for project config files (direnv-style).

The agent can write `.claude-bottle.toml` in its workspace, so that file is
honoured only once the user has trusted its exact bytes. The store maps the
path of each trusted file to the SHA-256 of its content and lives in the
user data directory, outside every workspace, where the agent cannot reach.

A file is keyed by its directory (resolved) plus its own name, not by the
target of a symlink: a link the agent swaps in does not inherit the trust
of whatever it points at.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from claude_bottle import paths
from claude_bottle.errors import ConfigError

TrustStatus = Literal["trusted", "untrusted", "changed"]

MAX_CONFIG_BYTES = 1 << 20
_STORE_VERSION = 1
_DIGEST = re.compile(r"[0-9a-f]{64}")


def display_path(path: Path) -> str:
    """`path` as the user would type it: under the home directory it starts with `~/`."""
    text = str(path)
    try:
        home = str(Path.home())
    except RuntimeError:
        return text
    if home not in ("", "/") and text.startswith(home + os.sep):
        return "~" + text[len(home) :]
    return text


def read_config_file(path: Path, *, follow_symlinks: bool = True) -> bytes | None:
    """The bytes of a config file, or None if there is none; read once, from one open file.

    Refuses anything but a regular file of at most `MAX_CONFIG_BYTES`: the
    project file is agent-writable, and a FIFO or a huge file there must not
    hang or exhaust the launcher. Without `follow_symlinks`, a symbolic link
    in the last component is refused too (the agent may swap one in).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise ConfigError(
                f"{display_path(path)}: is a symbolic link",
                "only a regular file can be trusted; replace the link by the file itself",
            ) from None
        raise ConfigError(
            f"{display_path(path)}: cannot be read ({exc.strerror})",
            "check the file's permissions",
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                f"{display_path(path)}: not a regular file", "replace it with a TOML file"
            )
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{display_path(path)}: larger than {MAX_CONFIG_BYTES} bytes",
                "a config file this large is not plausible; check what wrote it",
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"{display_path(path)}: cannot be read ({exc.strerror})",
            "check the file's permissions",
        ) from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{display_path(path)}: larger than {MAX_CONFIG_BYTES} bytes",
            "a config file this large is not plausible; check what wrote it",
        )
    return data


def digest_of(content: bytes) -> str:
    import hashlib  # only for project config files, which most workspaces lack

    return hashlib.sha256(content).hexdigest()


def _key(file: Path) -> str:
    absolute = file.absolute()
    return str(absolute.parent.resolve() / absolute.name)


def _default_store_path() -> Path:
    import platformdirs

    return platformdirs.user_data_path("claude-bottle") / "trusted.json"


class TrustStore:
    """Records which project config files the user trusts, by path and content hash."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else _default_store_path()

    def status(self, file: Path, content: bytes | None = None) -> TrustStatus:
        """Whether `file` (or `content`, the bytes already read from it) is trusted.

        Pass `content` to judge exactly the bytes you are about to use.
        """
        if content is None:
            content = self._read_subject(file)
        recorded = self._load().get(_key(file))
        if recorded is None:
            return "untrusted"
        return "trusted" if recorded == digest_of(content) else "changed"

    def trust(self, file: Path, content: bytes | None = None) -> str:
        """Record `content` (the bytes already read from `file` and shown to the user; else
        its current content) as trusted; returns its SHA-256 (hex).

        A copy of the content is kept beside the store, so that the next `trust` of a
        changed file can show what changed.
        """
        if content is None:
            content = self._read_subject(file)
        digest = digest_of(content)
        with self._locked():
            entries = self._load()
            self._write_private(self._copy_path(digest), content)
            previous = entries.get(_key(file))
            entries[_key(file)] = digest
            self._save(entries)
            self._drop_copy_unless_used(previous, entries)
        return digest

    def revoke(self, file: Path) -> bool:
        """Forget `file`; True if it had been trusted (whatever its content)."""
        with self._locked():
            entries = self._load()
            previous = entries.pop(_key(file), None)
            if previous is None:
                return False
            self._save(entries)
            self._drop_copy_unless_used(previous, entries)
        return True

    def trusted_content(self, file: Path) -> bytes | None:
        """The content `file` was last trusted with, if its copy is kept and intact."""
        digest = self._load().get(_key(file))
        if digest is None:
            return None
        try:
            content = read_config_file(self._copy_path(digest), follow_symlinks=False)
        except ConfigError:
            return None
        return content if content is not None and digest_of(content) == digest else None

    def trusted_files(self) -> dict[str, str]:
        """Every recorded path and the hash it was trusted with."""
        return dict(self._load())

    # -- storage ---------------------------------------------------------

    def _read_subject(self, file: Path) -> bytes:
        content = read_config_file(file, follow_symlinks=False)
        if content is None:
            raise ConfigError(
                f"{display_path(file)}: no such file", "check the path of the project config"
            )
        return content

    def _corrupt(self, problem: str) -> ConfigError:
        shown = display_path(self.path)
        return ConfigError(
            f"{shown}: trust store is corrupt ({problem})",
            f"delete {shown}, then run `claude-bottle trust` again in each project you trust",
        )

    def _load(self) -> dict[str, str]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(
                f"{display_path(self.path)}: trust store cannot be read ({exc.strerror})",
                "check the file's permissions",
            ) from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._corrupt(f"not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != _STORE_VERSION:
            raise self._corrupt(f"expected a JSON object with version {_STORE_VERSION}")
        files = data.get("files")
        if not isinstance(files, dict):
            raise self._corrupt('"files" is not a JSON object')
        for key, value in files.items():
            if not isinstance(value, str) or not _DIGEST.fullmatch(value):
                raise self._corrupt(f"the entry for {key} is not a SHA-256 hex digest")
        return dict(files)

    def _copy_path(self, digest: str) -> Path:
        return self.path.parent / "trusted-content" / digest

    def _drop_copy_unless_used(self, digest: str | None, entries: dict[str, str]) -> None:
        if digest is not None and digest not in entries.values():
            with contextlib.suppress(OSError):
                self._copy_path(digest).unlink()

    def _save(self, entries: dict[str, str]) -> None:
        body = json.dumps(
            {"version": _STORE_VERSION, "files": dict(sorted(entries.items()))}, indent=2
        )
        self._write_private(self.path, (body + "\n").encode())

    def _write_private(self, path: Path, data: bytes) -> None:
        """Write `path` whole or not at all, readable by the user alone."""
        self._ensure_dir(path.parent)
        paths.write_atomically(path, data)

    @staticmethod
    def _ensure_dir(directory: Path) -> None:
        if directory.is_dir():
            return
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write cycles of concurrent `trust`/`revoke` calls."""
        import fcntl

        self._ensure_dir(self.path.parent)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
