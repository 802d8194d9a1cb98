"""The rules for config values (host patterns, pins, credentials, git URLs, paths, sizes,
limits, …), and typed access to values the schema check has already vetted."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

# SECRET_NAME: the same rule the bottle environment builder applies as a last line of defence.
from claude_bottle.bottle_env import SECRET_NAME
from claude_bottle.config.model import (
    DlpPattern,
    ResolvePin,
)
from claude_bottle.config.schema import _quote, _Source
from claude_bottle.limits import (
    MAX_CPUS,
    MAX_PIDS,
    MIN_DISK,
    MIN_MEMORY,
    MIN_PIDS,
    Limits,
    format_size,
    parse_size,
)

# -- value rules -------------------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DLP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SCP_URL = re.compile(r"(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+:(?!//).+")
_URL_SCHEMES = ("https", "ssh")  # the git gate's hardened git speaks only these
_BAD_BRANCH_CHARS = frozenset("~^:\\")
_PATTERN_HINT = "fix the pattern or remove it"


# -- typed access to values _check has already vetted ---------------------------------


def _str(value: object) -> str:
    assert isinstance(value, str)
    return value


def _bool(value: object) -> bool:
    assert isinstance(value, bool)
    return value


def _strs(value: object) -> list[str]:
    if value is None:
        return []
    assert isinstance(value, list)
    return [_str(item) for item in value]


def _table(value: object) -> Mapping[str, object]:
    if value is None:
        return {}
    assert isinstance(value, dict)
    return value


def _tables(value: object) -> list[Mapping[str, object]]:
    if value is None:
        return []
    assert isinstance(value, list)
    return [_table(item) for item in value]


# -- per-value rules --------------------------------------------------------------------


def _one_of(value: object, choices: tuple[str, ...], key: str, hint: str, src: _Source) -> str:
    """A string that must be one of `choices` (a mode such as egress.mode)."""
    choice = _str(value)
    if choice not in choices:
        raise src.error(key, f"expected one of {', '.join(choices)}, got {_quote(choice)}", hint)
    return choice


def _host_pattern(pattern: str, key: str, src: _Source) -> str:
    from claude_bottle.policy.allowlist import validate_pattern

    try:
        return validate_pattern(pattern)
    except ValueError as exc:
        raise src.error(key, str(exc), _PATTERN_HINT) from None


def _allow_entry(entry: str, key: str, src: _Source) -> str:
    """An `[egress] allow` entry: a host pattern, or HOST:PORT for exactly one endpoint."""
    from claude_bottle.policy.allowlist import validate_allow_entry

    try:
        return validate_allow_entry(entry)
    except ValueError as exc:
        raise src.error(key, str(exc), _PATTERN_HINT) from None


def _resolve_pin(host: str, target: str, key: str, src: _Source) -> ResolvePin:
    import ipaddress  # only when pins are configured

    hint = 'write it as "ADDRESS[:PORT]", e.g. "api.test" = "127.0.0.1:8443" or "[::1]:8443"'
    normalised = _host_pattern(host, key, src)
    is_ip = True
    try:
        ipaddress.ip_address(normalised.strip("[]"))
    except ValueError:
        is_ip = False
    if normalised.startswith("*.") or "/" in normalised or is_ip:
        raise src.error(key, "expected a host name, not a wildcard or an IP address", hint)
    address, port_text = _split_address(target)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise src.error(
            key, f"expected an IP address with an optional port, got {_quote(target)}", hint
        ) from None
    if ip.version == 6 and port_text is not None and not target.startswith("["):
        raise src.error(key, "an IPv6 address with a port must be in brackets", hint)
    port: int | None = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise src.error(key, f"port {_quote(port_text)} is not a number from 1 to 65535", hint)
        port = int(port_text)
    return ResolvePin(host=normalised, address=str(ip), port=port)


def _split_address(target: str) -> tuple[str, str | None]:
    if target.startswith("["):
        end = target.find("]")
        if end < 0:
            return target, None
        rest = target[end + 1 :]
        if not rest:
            return target[1:end], None
        if rest.startswith(":"):
            return target[1:end], rest[1:]
        return target, None
    if target.count(":") == 1:
        address, port = target.split(":")
        return address, port
    return target, None


def _dlp_pattern(name: str, regex: str, key: str, src: _Source) -> DlpPattern:
    if not _DLP_NAME.fullmatch(name):
        raise src.error(
            f"{key}.name",
            f"{_quote(name)} is not a valid pattern name",
            "use 1-64 letters, digits, '.', '_' or '-' (it appears in audit records)",
        )
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise src.error(
            f"{key}.regex", f"not a valid regular expression: {exc}", "fix the regex (Python re)"
        ) from None
    except (RecursionError, OverflowError):
        raise src.error(
            f"{key}.regex", "regular expression is too complex", "simplify the regex"
        ) from None
    if compiled.search("") is not None:
        raise src.error(
            f"{key}.regex",
            "matches the empty string, so it would flag every request",
            "make the pattern require at least one character",
        )
    return DlpPattern(name=name, regex=regex)


def _check_credential(spec: str, key: str, src: _Source) -> str:
    # The value is never echoed: a user may have pasted the key itself here.
    hint = "use env:NAME (an environment variable), file:PATH (absolute or ~/…) or keychain"
    if spec == "keychain":
        return spec
    kind, sep, rest = spec.partition(":")
    if sep and kind == "env" and _ENV_NAME.fullmatch(rest):
        return spec
    if sep and kind == "file" and (rest.startswith("/") or rest.startswith("~/")):
        return spec
    if sep and kind in ("env", "file"):
        problem = (
            "env: needs a variable name like ANTHROPIC_API_KEY"
            if kind == "env"
            else "file: needs an absolute path or one starting with ~/"
        )
        raise src.error(key, problem, hint)
    raise src.error(key, "expected env:NAME, file:PATH or keychain (value not shown)", hint)


def _git_credential(spec: str, key: str, src: _Source) -> str:
    # The value is never echoed: a user may have pasted the token itself here.
    hint = (
        'use "git" (the host\'s git credential fill), env:NAME, file:PATH (absolute or ~/…) '
        'or "command:PROGRAM ARGS" (its first line of output)'
    )
    kind, sep, rest = spec.partition(":")
    if spec == "git" or (sep and kind == "command" and rest.strip()):
        return spec
    if sep and kind == "env" and _ENV_NAME.fullmatch(rest):
        if rest not in os.environ:
            raise src.error(key, f"the variable {rest} is not set", f"export {rest}, or {hint}")
        return spec
    if sep and kind == "file" and rest.startswith(("/", "~/")):
        if not Path(rest).expanduser().is_file():
            raise src.error(key, "names a file that does not exist", hint)
        return spec
    raise src.error(key, "expected git, env:NAME, file:PATH or command:… (value not shown)", hint)


def _check_git_url(url: str, key: str, src: _Source) -> str:
    # URLs are not echoed: they may embed a token.
    hint = "use https://host/owner/repo.git, ssh://host/path or git@host:owner/repo.git"
    if not url or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise src.error(key, "must be a non-empty URL without spaces or control characters", hint)
    if "://" in url:
        try:
            parts = urlsplit(url)
            hostname, password, username = parts.hostname, parts.password, parts.username
        except ValueError:
            raise src.error(key, "is not a valid URL (value not shown)", hint) from None
        scheme = parts.scheme.lower()
        if scheme not in _URL_SCHEMES:
            raise src.error(
                key,
                f"unsupported scheme {_quote(scheme)}; use one of {', '.join(_URL_SCHEMES)}",
                hint,
            )
        if password is not None or (username is not None and scheme in ("http", "https")):
            raise src.error(
                key,
                "embeds credentials (value not shown); they would appear in plans and logs",
                "remove them from the URL; the git gate uses the host's git credentials",
            )
        if not hostname:
            raise src.error(key, "has no host name (value not shown)", hint)
        return url
    if _SCP_URL.fullmatch(url):
        return url
    raise src.error(key, "is not an https:// or ssh:// URL nor an scp-style address", hint)


def _http_url(url: str) -> bool:
    """Whether `url` is an http(s) URL with a host name and no user information."""
    try:
        parts = urlsplit(url)  # raises on a malformed IPv6 host such as "https://[::1/"
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.username


def _ca_file(raw: str, key: str, src: _Source) -> str:
    """The absolute path of a CA bundle file that exists."""
    hint = "point it at a PEM file of CA certificates, or remove the key"
    try:
        ca_file = Path(raw).expanduser()
        if ca_file.is_file():
            return str(ca_file.resolve())
    except RuntimeError:  # ~user of an unknown user
        raise src.error(key, f"{_quote(raw)}: no such user's home directory", hint) from None
    except OSError as exc:  # a name too long, a loop: anything but "not there"
        raise src.error(key, f"{_quote(raw)} cannot be read: {exc.strerror}", hint) from None
    raise src.error(key, f"{ca_file} is not a file", hint)


def _branch_pattern(pattern: str, key: str, src: _Source) -> str:
    if (
        not pattern
        or pattern.startswith(("-", "/"))
        or ".." in pattern
        or "@{" in pattern
        or any(ch.isspace() or not ch.isprintable() or ch in _BAD_BRANCH_CHARS for ch in pattern)
    ):
        raise src.error(
            key,
            f"{_quote(pattern)} is not a valid branch pattern",
            'use branch names with * wildcards, e.g. push = ["claude/*"]',
        )
    return pattern


def _byte_size(raw: str, key: str, src: _Source) -> int:
    """A size such as "1G", "64M" or "65536" (binary units), at least 64 KiB."""
    try:
        size = parse_size(raw.strip())
    except ValueError:
        size = 0
    if size < 64 << 10:
        name = key.rpartition(".")[2]
        raise src.error(key, f"{raw!r} is not a size of at least 64K", f'e.g. {name} = "1G"')
    return size


def _read_only_path(raw: str, key: str, src: _Source) -> str:
    if not (raw.startswith("/") or raw == "~" or raw.startswith("~/")):
        raise src.error(
            key,
            f"{_quote(raw)} must be an absolute path or start with ~/",
            "relative paths are ambiguous; write the full path",
        )
    return raw


# A docker image reference: [registry[:port]/]path[:tag][@digest], lowercase path components.
_IMAGE_REFERENCE = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[0-9a-f]{64})?"
)


def _image_reference(raw: str, src: _Source) -> str | None:
    """`[docker] base_image`: empty means the built-in Debian image."""
    if not raw:
        return None
    if not _IMAGE_REFERENCE.fullmatch(raw):
        raise src.error(
            "docker.base_image",
            f"{_quote(raw)} is not a docker image reference",
            'e.g. base_image = "ghcr.io/acme/dev:2024" (or "" for the built-in image)',
        )
    return raw


def _limits(current: Limits, bottle: Mapping[str, object], src: _Source) -> Limits:
    """`current` with the resource limits this layer sets, each checked against its bounds."""
    if "memory" in bottle:
        current = current._replace(memory=_size(_str(bottle["memory"]), "bottle.memory", src))
    if "disk" in bottle:
        current = current._replace(disk=_size(_str(bottle["disk"]), "bottle.disk", src))
    if "pids" in bottle:
        pids = bottle["pids"]
        assert isinstance(pids, int)
        if not MIN_PIDS <= pids <= MAX_PIDS:
            raise src.error(
                "bottle.pids",
                f"expected {MIN_PIDS} to {MAX_PIDS} processes, got {pids}",
                "e.g. pids = 4096",
            )
        current = current._replace(pids=pids)
    if "cpus" in bottle:
        cpus = bottle["cpus"]
        assert isinstance(cpus, int | float)
        if not 0.01 <= cpus <= MAX_CPUS:
            raise src.error(
                "bottle.cpus",
                f"expected a number of CPUs from 0.01 to {MAX_CPUS:g}, got {cpus}",
                "e.g. cpus = 2.0",
            )
        current = current._replace(cpus=float(cpus))
    if "require_limits" in bottle:
        current = current._replace(require=_bool(bottle["require_limits"]))
    return current


def _size(text: str, key: str, src: _Source) -> int:
    try:
        size = parse_size(text)
    except ValueError:
        raise src.error(
            key, f'expected a size such as "8G" or "512M", got {_quote(text)}', 'e.g. "8G"'
        ) from None
    least = MIN_MEMORY if key == "bottle.memory" else MIN_DISK
    if size < least:
        raise src.error(
            key, f"{_quote(text)} is too small (at least {format_size(least)})", 'e.g. "8G"'
        )
    return size


def _env_name(name: str, key: str, src: _Source) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise src.error(
            key,
            f"{_quote(name)} is not an environment variable name",
            "use letters, digits and '_', not starting with a digit",
        )
    found = SECRET_NAME.search(name)
    if found is not None:
        raise src.error(
            key,
            f"{_quote(name)} looks like a secret (its name contains "
            f"{found.group(0).upper()}); the bottle never receives credentials",
            "remove it: credentials stay host-side, where the api gateway and git gate "
            "use them for the agent",
        )
    return name
