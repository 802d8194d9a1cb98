"""Secrets for `[[credentials.inject]]`: read host-side, and the placeholder that stands in.

`secret` names where a secret lives, never the secret itself:

- `env:NAME`     an environment variable of the launching shell;
- `file:PATH`    a file holding just the secret (`~` expanded, surrounding whitespace
                 ignored);
- `command:ARGV` a command (split like a shell would, run without one) that prints it,
                 such as `command:gh auth token`.

The placeholder the bottle holds has the secret's shape, so the tools that check one
accept the other: the same prefix word (`ghp_`, `github_pat_`, `npm_`, `glpat-`), then
random characters drawn from the alphabet the rest of the secret uses, to the same length
(at least MIN_PLACEHOLDER characters). It is chosen anew for every bottle.

A command runs once per process: the plan reads its secret for the placeholder's shape,
and the launch hands that same value to the bundle (`injected_secrets`).

No message here holds a secret value: errors name where we looked and what to do.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import string
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from claude_bottle.errors import MissingDependency

if TYPE_CHECKING:
    from claude_bottle.bundle.settings import InjectionSpec

MIN_PLACEHOLDER = 20
MAX_SECRET = 4096
COMMAND_TIMEOUT = 30.0
_PREFIX = re.compile(r"(?:[a-z]{2,12}[_-]){1,2}")
# A secret goes into a header: anything but visible ASCII would break the request head.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_ALPHABETS = (string.ascii_lowercase, string.ascii_uppercase, string.digits)
# What each `command:` printed, by its command line: a command may be slow, or ask the
# user (a keychain prompt), or give another token each time it runs.
_command_output: dict[str, str] = {}


def _missing(key: str, problem: str, fix: str) -> MissingDependency:
    return MissingDependency(f"{key}: {problem}", fix)


def _read_source(spec: str, env: Mapping[str, str], key: str) -> str:
    kind, _, rest = spec.partition(":")
    if kind == "env":
        value = env.get(rest)
        if not value:
            raise _missing(key, f"${rest} is not set", f"export {rest}, or change {key}")
        return value
    if kind == "file":
        path = Path(rest).expanduser()
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_SECRET + 1)
        except OSError as exc:
            raise _missing(
                key, f"cannot read {path}: {exc.strerror}", "create the file or fix the path"
            ) from None
        return data.decode("utf-8", "replace")
    if kind == "command":
        if rest not in _command_output:
            _command_output[rest] = _run_command(rest, key)
        return _command_output[rest]
    raise _missing(key, "expected env:NAME, file:PATH or command:ARGV", "fix the spec")


def _run_command(command: str, key: str) -> str:
    argv = shlex.split(command)
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _missing(
            key, f"cannot run {argv[0]!r}: {exc}", "install it or change the command"
        ) from None
    if done.returncode != 0:  # its output may hold the secret: not shown
        raise _missing(
            key,
            f"{argv[0]!r} exited with status {done.returncode}",
            "run the command yourself to see why",
        )
    return done.stdout[: MAX_SECRET + 1].decode("utf-8", "replace")


def load_secret(spec: str, env: Mapping[str, str] | None = None, key: str = "secret") -> str:
    """The secret `spec` names; MissingDependency (exit 3) when it cannot be had."""
    return check_secret(_read_source(spec, os.environ if env is None else env, key).strip(), key)


def check_secret(value: str, key: str) -> str:
    """`value` if it can go into a request head; MissingDependency naming `key` if not."""
    if not value:
        raise _missing(key, "the secret is empty", "check where it comes from")
    if len(value) > MAX_SECRET or not _HEADER_SAFE.fullmatch(value):
        raise _missing(
            key,
            f"the secret is not one token of visible ASCII of at most {MAX_SECRET} characters",
            "give a secret as HTTP sends it (a token, or a password)",
        )
    return value


def injected_secrets(
    injections: Iterable[InjectionSpec], env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Each injection's secret by the variable it is injected for: what the launch hands
    the bundle, so the bundle reads no source again."""
    return {
        injection.env: load_secret(injection.secret, env, injection_key(index, injection))
        for index, injection in enumerate(injections)
    }


def injection_key(index: int, injection: InjectionSpec) -> str:
    """How a message names an injection's secret: its config key and variable."""
    return f"credentials.inject[{index}].secret ({injection.env})"


def same_shape(placeholder: str, secret: str) -> bool:
    """Whether `placeholder` could have been made for `secret` by `placeholder_for` (so
    one kept from an earlier run of the bottle stays usable)."""
    if placeholder == secret or len(placeholder) != max(len(secret), MIN_PLACEHOLDER):
        return False
    match = _PREFIX.match(secret)
    prefix = match.group(0) if match else ""
    if not placeholder.startswith(prefix):
        return False
    rest = secret[len(prefix) :].ljust(len(placeholder) - len(prefix))
    pairs = zip(placeholder[len(prefix) :], rest, strict=True)
    return all(
        (p.isascii() and p.isalnum()) if (s.isascii() and s.isalnum()) or s == " " else p == s
        for p, s in pairs
    )


def placeholder_for(secret: str) -> str:
    """A random stand-in with the secret's prefix word, alphabet and length: each letter
    or digit drawn from the classes the secret uses, each separator kept in its place
    (`github_pat_…_…` keeps its second underscore)."""
    match = _PREFIX.match(secret)
    prefix = match.group(0) if match else ""
    rest = secret[len(prefix) :]
    alphabet = "".join(a for a in _ALPHABETS if any(c in a for c in rest))
    if len(alphabet) < 26:  # digits only, say: too few symbols to be random, widen
        alphabet = string.ascii_letters + string.digits
    rest = rest.ljust(MIN_PLACEHOLDER - len(prefix), "x")
    while True:
        candidate = prefix + "".join(
            secrets.choice(alphabet) if c.isascii() and c.isalnum() else c for c in rest
        )
        if candidate != secret:
            return candidate
