"""`claude-bottle trust`: trust exactly the project config the user has just seen.

The agent can rewrite `.claude-bottle.toml` the moment the user's own review of it ends,
so nothing the user read before counts: the file is read once, from one open file
(never through a symbolic link), validated, printed in full, and the SHA-256 of those
very bytes is what gets recorded once the user says yes on a terminal. A change after
that is a changed file, which `run` ignores. While a bottle runs on the workspace the
agent is writing it right now, so `trust` refuses.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
from pathlib import Path

import click

from claude_bottle.backend import registry
from claude_bottle.cli.supervise_commands import running
from claude_bottle.config.load import PROJECT_FILE, check_project_file
from claude_bottle.config.trust import TrustStore, digest_of, display_path, read_config_file
from claude_bottle.errors import BottleError, ConfigError
from claude_bottle.safe_text import escape


def _say(message: str) -> None:
    click.echo(f"claude-bottle: {message}", err=True)


def bottles_writing(workspace: Path) -> list[str]:
    """Running bottles that can write `workspace`'s project file (theirs is it or a parent)."""
    names = []
    for record in running():
        recorded = record.bottle.workspace
        if workspace == Path(recorded) or workspace.is_relative_to(recorded):
            names.append(record.bottle.name)
    return names


def render(content: bytes) -> str:
    """The content as numbered lines, every unprintable character escaped, so what the
    user reads is every byte and a line cannot pose as claude-bottle's own output."""
    text = content.decode("utf-8")  # check_project_file has refused anything else
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
        ending = ""
    else:
        ending = "\n     (no newline at the end of the file)"
    width = len(str(len(lines)))
    body = "\n".join(f"{n:>{width}} | {escape(line)}" for n, line in enumerate(lines, 1))
    return (body or "(empty file)") + ending


def render_diff(before: bytes, after: bytes) -> str:
    """A unified diff of the trusted content and the new, every line escaped."""
    import difflib  # only when a trusted file changed

    diff = difflib.unified_diff(
        before.decode("utf-8", "replace").split("\n"),
        after.decode("utf-8").split("\n"),
        "trusted",
        "now",
        lineterm="",
    )
    return "\n".join(f"  {escape(line)}" for line in diff)


def trust(workspace: str | None, *, revoke: bool, yes: bool) -> None:
    directory = Path(workspace or os.getcwd()).resolve()
    file = directory / PROJECT_FILE
    shown = display_path(file)
    store = TrustStore()
    if revoke:
        if store.revoke(file):
            _say(f"{shown} is no longer trusted")
        else:
            _say(f"{shown} was not trusted; nothing changed")
        return
    running = bottles_writing(directory)
    if running:
        raise ConfigError(
            f"bottle {', '.join(running)} is running on {directory}: its agent can rewrite "
            f"{PROJECT_FILE} while you review it",
            f"stop it first (claude-bottle stop {running[0]}), then review and trust the file",
        )
    content = read_config_file(file, follow_symlinks=False)
    if content is None:
        raise ConfigError(f"{shown} does not exist", "nothing to trust")
    check_project_file(file, content, known_backends=registry.names())
    digest = digest_of(content)
    previously = store.status(file, content)
    click.echo(f"{shown}: {len(content)} bytes, sha256 {digest}")
    if previously == "trusted":
        click.echo("(already trusted with exactly this content)")
    elif previously == "changed":
        before = store.trusted_content(file)
        if before is None:
            click.echo("(changed since you last trusted it)")
        else:
            click.echo("changes since you last trusted it:")
            click.echo(render_diff(before, content))
            click.echo("the whole file:")
    click.echo(render(content))
    if not yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise ConfigError(
                "trust needs a terminal to show the file and ask whether you trust it",
                "run it in a terminal, or pass --yes to trust the content shown without asking",
            )
        # Keys typed before the content was shown are dropped (before the question, so an
        # answer to it is kept): the answer is one given after seeing the content.
        with contextlib.suppress(termios.error):
            termios.tcflush(sys.stdin.fileno(), termios.TCIFLUSH)
        click.echo(f"Trust exactly the {len(content)} bytes above? [y/N] ", nl=False)
        answer = sys.stdin.readline(64).strip().lower()
        if answer not in ("y", "yes"):
            raise BottleError(f"{shown} was not trusted; nothing changed")
    store.trust(file, content)
    _say(f"trusted {shown} (sha256 {digest}); any change to it must be trusted again")
