"""The real Anthropic credential: loaded host-side, refreshed host-side, never shown.

`[credentials] anthropic` names where it lives:

- `env:NAME`  — an environment variable of the launching shell;
- `file:PATH` — a file holding just the key (`~` expanded, surrounding whitespace ignored);
- `keychain`  — Claude Code's own host credential store: `$CLAUDE_CONFIG_DIR/.credentials.json`
  (default `~/.claude/.credentials.json`), shape
  `{"claudeAiOauth": {"accessToken", "refreshToken", "expiresAt" (ms epoch), "scopes", ...}}`;
  on macOS, when that file is absent, the login keychain item "Claude Code-credentials"
  (read-only: we never refresh a token we cannot write back, or the host would be logged out).

API keys (`sk-ant-api…`) become `x-api-key`; OAuth access tokens (from the store, or any
value starting `sk-ant-oat`, e.g. from `claude setup-token`) become `Authorization: Bearer`.

No function here puts a credential value into a message, a repr or a log line: errors
name *where* we looked and what to do, never what we found.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from claude_bottle import paths
from claude_bottle.errors import MissingDependency

if TYPE_CHECKING:
    import asyncio

CLAUDE_CODE_CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
"""The OAuth client id Claude Code uses (public; found in its bundle and in tools that refresh
its tokens)."""

DEFAULT_OAUTH_TOKEN_URL = "https://platform.claude.com/v1/oauth/token"
"""Where Claude Code ≥ 2.1.8x refreshes tokens; older releases used
`https://console.anthropic.com/v1/oauth/token`. Undocumented: override with
`[gateway] oauth_token_url`."""

REFRESH_MARGIN = 300.0
"""Refresh an OAuth token this many seconds before it expires."""

OAUTH_PREFIX = "sk-ant-oat"
MIN_TOKEN = 20
MAX_TOKEN = 8192
MACOS_KEYCHAIN_SERVICE = "Claude Code-credentials"
STORE_KEY = "claudeAiOauth"
_MAX_STORE_BYTES = 1024 * 1024

Refresher = Callable[[str], tuple[str, str, float]]
"""`refresher(refresh_token) -> (access_token, refresh_token, expires_at epoch seconds)`."""


@dataclass(frozen=True, repr=False)
class Credential:
    """One secret and where it came from. `value` and `refresh_token` never appear in repr/str."""

    kind: Literal["api-key", "oauth"]
    value: str
    source: str  # where it came from, safe to print: "env:ANTHROPIC_API_KEY", "keychain:/…"
    expires_at: float | None = None  # epoch seconds (OAuth only)
    refresh_token: str | None = None
    store: Path | None = None  # the credentials file to write refreshed tokens back to

    def __repr__(self) -> str:
        expiry = "" if self.expires_at is None else f", expires_at={self.expires_at:.0f}"
        refresh = ", refresh_token=<hidden>" if self.refresh_token else ""
        return (
            f"Credential(kind={self.kind!r}, source={self.source!r}, value=<hidden>"
            f"{expiry}{refresh})"
        )

    __str__ = __repr__

    def header(self) -> tuple[bytes, bytes]:
        """The request header that carries this credential upstream."""
        if self.kind == "oauth":
            return b"authorization", b"Bearer " + self.value.encode("ascii")
        return b"x-api-key", self.value.encode("ascii")

    def expiring(self, now: float, margin: float = REFRESH_MARGIN) -> bool:
        return self.expires_at is not None and self.expires_at - now <= margin


def _missing(where: str, problem: str, fix: str) -> MissingDependency:
    return MissingDependency(f"Anthropic credential from {where}: {problem}", fix)


_CONFIG_HINT = "or point [credentials] anthropic at env:NAME, file:PATH or keychain"


def check_token(token: object, where: str) -> str:
    """`token` if it looks like a credential (printable ASCII, no spaces, plausible length)."""
    if not isinstance(token, str) or not token:
        raise _missing(where, "malformed (not a non-empty string; value not shown)", _CONFIG_HINT)
    bad_char = any(not ("!" <= ch <= "~") for ch in token)
    if bad_char or not MIN_TOKEN <= len(token) <= MAX_TOKEN:
        problem = (
            "malformed (contains whitespace, control or non-ASCII characters; value not shown)"
            if bad_char
            else f"malformed (length {len(token)}, expected {MIN_TOKEN}-{MAX_TOKEN}; "
            "value not shown)"
        )
        raise _missing(where, problem, "store only the key itself, on one line")
    return token


def _kind_of(token: str) -> Literal["api-key", "oauth"]:
    return "oauth" if token.startswith(OAUTH_PREFIX) else "api-key"


def handed_credential(token: object) -> Credential:
    """The credential the CLI resolved on the host and handed to a bundle container."""
    where = "handed by the CLI"
    value = check_token(token, where)
    return Credential(_kind_of(value), value, where)


def load_credential(
    spec: str, env: Mapping[str, str], home: Path, *, platform: str = sys.platform
) -> Credential:
    """Load the credential `spec` names, or raise `MissingDependency` (exit 3) saying where
    it looked and what to do."""
    if spec == "keychain":
        return _load_store(env, home, platform)
    kind, _, rest = spec.partition(":")
    if kind == "env" and rest:
        where = f"env:{rest}"
        value = env.get(rest, "")
        if not value.strip():
            raise _missing(
                where,
                f"${rest} is not set" if rest not in env else f"${rest} is empty",
                f"export {rest}=<your key> before running claude-bottle, {_CONFIG_HINT}",
            )
        token = check_token(value.strip(), where)
        return Credential(_kind_of(token), token, where)
    if kind == "file" and rest:
        if rest == "~" or rest.startswith("~/"):
            path = home / rest[2:]
        else:
            path = Path(os.path.expanduser(rest))
        where = f"file:{path}"
        try:
            raw = _read_bounded(path)
        except FileNotFoundError:
            raise _missing(
                where, "file not found", f"write the key to {path}, {_CONFIG_HINT}"
            ) from None
        except OSError as exc:
            raise _missing(
                where, f"cannot read it ({exc.strerror})", f"check the permissions of {path}"
            ) from None
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise _missing(
                where, "malformed (not ASCII; value not shown)", "store only the key itself"
            ) from None
        if not text:
            raise _missing(where, "file is empty", f"write the key to {path}")
        token = check_token(text, where)
        return Credential(_kind_of(token), token, where)
    raise _missing(
        spec.partition(":")[0] or "-",
        "unknown credential source (expected env:NAME, file:PATH or keychain)",
        _CONFIG_HINT,
    )


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as fh:
        data = fh.read(_MAX_STORE_BYTES + 1)
    if len(data) > _MAX_STORE_BYTES:
        raise OSError(0, "file is implausibly large")
    return data


def store_path(env: Mapping[str, str], home: Path) -> Path:
    """Claude Code's credential file: `$CLAUDE_CONFIG_DIR/.credentials.json` or under ~/.claude."""
    config_dir = env.get("CLAUDE_CONFIG_DIR")
    base = Path(config_dir) if config_dir else home / ".claude"
    return base / ".credentials.json"


def _load_store(env: Mapping[str, str], home: Path, platform: str) -> Credential:
    path = store_path(env, home)
    try:
        raw = _read_bounded(path)
    except FileNotFoundError:
        if platform == "darwin":
            return _load_macos_keychain(env, path)
        raise _missing(
            f"keychain ({path})",
            "Claude Code's credential file is not there",
            f"log in on the host with `claude` (then /login), {_CONFIG_HINT}",
        ) from None
    except OSError as exc:
        raise _missing(
            f"keychain ({path})", f"cannot read it ({exc.strerror})", f"check permissions of {path}"
        ) from None
    return parse_store(raw, f"keychain:{path}", store=path)


def parse_store(raw: bytes, source: str, store: Path | None) -> Credential:
    """A Credential from the JSON of Claude Code's credential store (never echoes its content)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _missing(
            source, "malformed (not JSON; content not shown)", "log in again on the host: claude"
        ) from None
    oauth = data.get(STORE_KEY) if isinstance(data, dict) else None
    if not isinstance(oauth, dict):
        raise _missing(
            source,
            f"malformed (no {STORE_KEY} object; content not shown)",
            "log in on the host with `claude` using a Claude.ai account, or use an API key: "
            '[credentials] anthropic = "env:ANTHROPIC_API_KEY"',
        )
    access = check_token(oauth.get("accessToken"), f"{source} ({STORE_KEY}.accessToken)")
    refresh = oauth.get("refreshToken")
    if refresh is not None:
        refresh = check_token(refresh, f"{source} ({STORE_KEY}.refreshToken)")
    expires_ms = oauth.get("expiresAt")
    expires_at: float | None = None
    if expires_ms is not None:
        if isinstance(expires_ms, bool) or not isinstance(expires_ms, int | float):
            raise _missing(
                source, f"malformed ({STORE_KEY}.expiresAt is not a number)", "log in again"
            )
        expires_at = float(expires_ms) / 1000.0
    return Credential("oauth", access, source, expires_at, refresh, store)


def _load_macos_keychain(env: Mapping[str, str], file_path: Path) -> Credential:
    import shutil
    import subprocess

    where = f"keychain (macOS item {MACOS_KEYCHAIN_SERVICE!r}, or {file_path})"
    security = shutil.which("security", path=env.get("PATH") or os.defpath)
    if security is None:
        raise _missing(where, "neither is available", "log in on the host with `claude`")
    try:
        result = subprocess.run(
            [security, "find-generic-password", "-s", MACOS_KEYCHAIN_SERVICE, "-w"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        raise _missing(where, "the keychain did not answer", "unlock it and retry") from None
    if result.returncode != 0 or not result.stdout.strip():
        raise _missing(where, "no Claude Code login found", "log in on the host with `claude`")
    # No write-back target: this credential is never refreshed by us (see module doc).
    return parse_store(result.stdout.strip(), f"keychain:macos:{MACOS_KEYCHAIN_SERVICE}", None)


# --- refresh -------------------------------------------------------------------


def refresh_if_needed(
    cred: Credential, now: float, refresher: Refresher, margin: float = REFRESH_MARGIN
) -> Credential:
    """`cred`, or a fresh one if it is an OAuth token expiring within `margin` seconds.

    Only credentials with a refresh token *and* a file to write back to are refreshed:
    refresh tokens rotate, so a refresh we could not persist would log the host out.
    Before refreshing, the file is re-read in case the host's Claude Code already did it.
    The new tokens are written back atomically with mode 0600, other fields kept.
    """
    store = cred.store
    if cred.kind != "oauth" or not cred.expiring(now, margin) or store is None:
        return cred
    with contextlib.suppress(MissingDependency, OSError):
        on_disk = parse_store(_read_bounded(store), cred.source, store)
        if on_disk.value != cred.value and not on_disk.expiring(now, margin):
            return on_disk
        if on_disk.refresh_token:
            cred = on_disk  # the freshest refresh token we know of
    if not cred.refresh_token:
        return cred
    try:
        access, refresh, expires_at = refresher(cred.refresh_token)
    except MissingDependency:
        raise
    except Exception as exc:
        raise _missing(
            cred.source,
            f"the OAuth token expires soon and refreshing it failed ({type(exc).__name__}: "
            f"{_safe_reason(exc, cred)})",
            "log in again on the host: claude, then /login",
        ) from None
    access = check_token(access, f"{cred.source} (refreshed access token)")
    refresh = check_token(refresh or cred.refresh_token, f"{cred.source} (refreshed token)")
    fresh = dataclasses.replace(cred, value=access, refresh_token=refresh, expires_at=expires_at)
    write_store(store, fresh)
    return fresh


def _safe_reason(exc: Exception, cred: Credential) -> str:
    text = str(exc)[:200]
    for secret in (cred.value, cred.refresh_token):
        if secret:
            text = text.replace(secret, "<hidden>")
    return text


def write_store(path: Path, cred: Credential) -> None:
    """Write `cred`'s tokens into Claude Code's credential file atomically (0600), keeping
    every other field (scopes, subscriptionType, …) as it was."""
    try:
        data: Any = json.loads(_read_bounded(path))
    except (OSError, ValueError, UnicodeDecodeError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    oauth = data.get(STORE_KEY)
    if not isinstance(oauth, dict):
        oauth = {}
    oauth["accessToken"] = cred.value
    oauth["refreshToken"] = cred.refresh_token
    if cred.expires_at is not None:
        oauth["expiresAt"] = int(cred.expires_at * 1000)
    data[STORE_KEY] = oauth
    paths.write_atomically(path, json.dumps(data, indent=2).encode())


def http_refresher(
    token_url: str = DEFAULT_OAUTH_TOKEN_URL,
    *,
    client_id: str = CLAUDE_CODE_CLIENT_ID,
    user_agent: str = "claude-cli/2.0.0 (external, cli)",
    timeout: float = 30.0,
    ca_file: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Refresher:
    """The real refresher: POST a JSON refresh_token grant to `token_url` (host-side).

    The endpoint takes JSON (not form-encoded) and rotates the refresh token; the answer
    carries `access_token`, `refresh_token` (maybe absent: keep the old one) and `expires_in`.
    Errors name the HTTP status only, never a token.
    """

    def refresh(refresh_token: str) -> tuple[str, str, float]:
        import ssl
        import urllib.error
        import urllib.request

        body = json.dumps(
            {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
        ).encode()
        request = urllib.request.Request(
            token_url,
            data=body,
            method="POST",
            headers={
                "content-type": "application/json",
                "accept": "application/json",
                "user-agent": user_agent,
            },
        )
        context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        started = clock()
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                answer = json.loads(response.read(_MAX_STORE_BYTES))
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{token_url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RuntimeError(f"cannot reach {token_url}: {reason}") from None
        except ValueError:
            raise RuntimeError(f"{token_url} did not answer JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
            raise RuntimeError(f"{token_url} answered without an access_token")
        expires_in = answer.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            expires_in = 3600
        new_refresh = answer.get("refresh_token")
        return (
            answer["access_token"],
            new_refresh if isinstance(new_refresh, str) else refresh_token,
            started + float(expires_in),
        )

    return refresh


class CredentialProvider:
    """The gateway's view of the credential: `await provider()` returns a current one.

    An expiring OAuth token is refreshed in a worker thread (one refresh at a time); if the
    refresh fails the old token is kept, `on_error` is told why (no secrets in the message)
    and no retry happens for `retry_after` seconds.
    """

    def __init__(
        self,
        credential: Credential,
        refresher: Refresher | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_error: Callable[[str], None] | None = None,
        retry_after: float = 60.0,
    ) -> None:
        self.credential = credential
        self.refresher = refresher
        self.clock = clock
        self.on_error = on_error
        self.retry_after = retry_after
        self._lock: asyncio.Lock | None = None
        self._quiet_until = 0.0

    async def __call__(self) -> Credential:
        import asyncio

        now = self.clock()
        cred = self.credential
        if self.refresher is None or not cred.expiring(now) or now < self._quiet_until:
            return cred
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            cred = self.credential
            if not cred.expiring(self.clock()):
                return cred
            try:
                self.credential = await asyncio.to_thread(
                    refresh_if_needed, cred, self.clock(), self.refresher
                )
            except MissingDependency as exc:
                self._quiet_until = self.clock() + self.retry_after
                if self.on_error is not None:
                    self.on_error(exc.message)
            return self.credential
