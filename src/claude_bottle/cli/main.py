"""Entry point: parse the command line; a BottleError becomes one clear message and an exit code."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from claude_bottle.backend import registry
from claude_bottle.errors import EXIT_USAGE, BottleError

_RUN_OPTIONS = [
    click.option("--backend", help=f"{' | '.join(registry.names())} (default from config)"),
    click.option(
        "--allow",
        "allow",
        multiple=True,
        metavar="HOST",
        help="add a host pattern to the egress allowlist (repeatable)",
    ),
    click.option("--name", help="bottle name (default: <workspace-basename>-<5 hex>)"),
    click.option(
        "--workspace",
        type=click.Path(file_okay=False, exists=True),
        help="default: current directory",
    ),
    click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), help="extra config file"
    ),
    click.option(
        "--docker-bundle",
        "docker_bundle",
        type=click.Choice(["auto", "host", "container"]),
        help="docker backend: run the bundle as a host process or in a container "
        "(default from config, else auto)",
    ),
]


def run_options(func: Any) -> Any:
    for option in reversed(_RUN_OPTIONS):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show tracebacks")
@click.version_option(package_name="claude-bottle")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Run a coding agent in a bottle whose only way out is a policy bundle."""
    ctx.obj = {"debug": debug}


@cli.command(context_settings={"allow_interspersed_args": False})
@run_options
@click.option("--detach", is_flag=True, help="leave it running; attach later with `resume`")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(command: Sequence[str], detach: bool, **options: Any) -> None:
    """Start a bottle in the workspace and run COMMAND (default: claude); exit with its status."""
    # `entry.main` may have prestarted the bundle; `commands.run` uses it or drops it.
    from claude_bottle.cli import commands

    sys.exit(commands.run(tuple(command), detach=detach, **options))


@cli.command()
@run_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def plan(command: Sequence[str], as_json: bool, **options: Any) -> None:
    """Print what `run` would do, and do nothing."""
    from claude_bottle.cli import commands

    commands.show_plan(tuple(command), as_json=as_json, **options)


@cli.command(name="ls")
@click.option("--json", "as_json", is_flag=True)
def list_bottles(as_json: bool) -> None:
    """Bottles, their state, backend and age."""
    from claude_bottle.cli import commands

    commands.list_bottles(as_json)


@cli.command()
@click.argument("name")
@click.option(
    "--replan",
    is_flag=True,
    help="start a stopped bottle with the config as it is now, even if it changed",
)
def resume(name: str, replan: bool) -> None:
    """Re-attach to a bottle (same name, same resources, same policy)."""
    from claude_bottle.cli import commands

    sys.exit(commands.resume(name, replan=replan))


@cli.command()
@click.argument("name", required=False)
@click.option("--all", "stop_all", is_flag=True, help="stop every running bottle")
def stop(name: str | None, stop_all: bool) -> None:
    """Stop a bottle (or all of them)."""
    from claude_bottle.cli import commands

    if bool(name) == stop_all:
        raise click.UsageError("give a bottle NAME or --all")
    commands.stop(name, stop_all)


@cli.command()
@click.option("--dry-run", is_flag=True, help="only list what would be removed")
@click.option(
    "--records", is_flag=True, help="also delete the records (plan, audit log) of finished bottles"
)
@click.option(
    "--images",
    is_flag=True,
    help="also delete claude-bottle's container images built from other inputs than this "
    "installation's (other versions or source trees) that no container uses",
)
def cleanup(dry_run: bool, records: bool, images: bool) -> None:
    """Remove leftovers of bottles that are not running."""
    from claude_bottle.cli import commands

    commands.cleanup(dry_run, records, images=images)


@cli.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="keep printing new events")
@click.option("--json", "as_json", is_flag=True, help="raw JSON lines")
@click.option(
    "--tool", "tool_use_id", metavar="ID", help="only what one Claude Code tool call did (advisory)"
)
def logs(name: str, follow: bool, as_json: bool, tool_use_id: str | None) -> None:
    """The bottle's audit events."""
    from claude_bottle.cli import commands

    commands.logs(name, follow, as_json, tool_use_id)


@cli.command()
@click.argument("name")
@click.argument("host")
@click.option("--always", is_flag=True, help="also add HOST to [egress] allow in your user config")
def allow(name: str, host: str, always: bool) -> None:
    """Approve HOST for a running bottle (and its held requests)."""
    from claude_bottle.cli import supervise_commands

    pattern = supervise_commands.allow(name, host, always=always)
    click.echo(f"claude-bottle: bottle {name} may now reach {pattern}", err=True)


@cli.command()
@click.argument("name")
@click.argument("host")
def deny(name: str, host: str) -> None:
    """Refuse HOST for a running bottle: its held requests now, later ones for its life."""
    from claude_bottle.cli import supervise_commands

    denied, answered = supervise_commands.deny(name, host)
    click.echo(
        f"claude-bottle: bottle {name}: {denied} denied ({answered} held requests refused)",
        err=True,
    )


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def pending(name: str | None, as_json: bool) -> None:
    """Requests held for a decision (mode = "ask"), one per bottle and host."""
    from claude_bottle.cli import supervise_commands

    supervise_commands.pending(name, as_json)


@cli.command()
@click.argument("names", nargs=-1)
def supervise(names: Sequence[str]) -> None:
    """Full-screen live view of the running bottles: events, held requests, decisions."""
    from claude_bottle.tui.app import supervise as run_view

    run_view(tuple(names))


@cli.group()
def policy() -> None:
    """Egress policy tools."""


@policy.command(name="suggest")
@click.argument("name")
def policy_suggest(name: str) -> None:
    """Print the smallest [egress] allow covering what bottle NAME reached."""
    from claude_bottle.cli.policy_suggest import policy_suggest as suggest

    click.echo(suggest(name), nl=False)


@cli.group()
def audit() -> None:
    """Audit log tools."""


@audit.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
def verify(file: str) -> None:
    """Check an audit log's hash chain."""
    from claude_bottle.cli import commands

    sys.exit(commands.audit_verify(file))


@cli.command()
@click.option("--workspace", type=click.Path(file_okay=False, exists=True))
@click.option("--revoke", is_flag=True, help="stop trusting it")
@click.option(
    "--yes",
    is_flag=True,
    help="trust the content shown without asking (for scripts; needed without a terminal)",
)
def trust(workspace: str | None, revoke: bool, yes: bool) -> None:
    """Show the workspace's .claude-bottle.toml and, once you confirm, trust exactly that."""
    from claude_bottle.cli import trust_command

    trust_command.trust(workspace, revoke=revoke, yes=yes)


@cli.group()
def image() -> None:
    """Container images the bottles run."""


@image.command(name="build")
@click.option(
    "--rebuild", is_flag=True, help="build without the cache: newest packages and Claude Code"
)
def image_build(rebuild: bool) -> None:
    """Build the agent and bundle images (`run` also builds them when missing); the agent
    image on `[docker] base_image` when the configuration here names one."""
    from pathlib import Path

    from claude_bottle.config import load_config

    config = load_config(workspace=Path(os.getcwd()), known_backends=registry.names())
    for tag in registry.images().build(rebuild=rebuild, base_ref=config.docker.base_image):
        click.echo(tag)


@cli.group()
def dlp() -> None:
    """Secret detection tools."""


@dlp.command(name="scan")
@click.argument("file", default="-", type=click.Path(dir_okay=False, exists=True, allow_dash=True))
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="extra config file")
def dlp_scan(file: str, config_file: str | None) -> None:
    """Print the secrets the proxy would refuse in FILE (or stdin): rule, offset, redacted.

    Uses the built-in rules plus the [dlp] patterns and ignore lists of the
    configuration for the current directory. Exits 1 if anything would be refused.
    """
    from claude_bottle.cli.dlp_scan import dlp_scan as scan

    sys.exit(scan(file, config_file))


@cli.command()
def doctor() -> None:
    """Preflight every backend: say what is missing and how to install it."""
    from claude_bottle.cli import commands

    sys.exit(commands.doctor())


def main(argv: Sequence[str] | None = None) -> None:
    """The console entry point: run the command, then leave at once.

    Every command has finished its work (and its teardown) when `_main` returns;
    freeing every imported module on the way out would only add ~50 ms.
    """
    try:
        _main(argv)
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            code = 1
        else:
            code = exc.code or 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            code = code or 1
    os._exit(code)


def _main(argv: Sequence[str] | None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="claude-bottle",
            standalone_mode=False,
        )
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
    except BottleError as exc:
        if debug:
            import traceback  # ~10 ms, for --debug only

            traceback.print_exc()
        print(f"claude-bottle: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  fix: {exc.hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        if debug or os.environ.get("CLAUDE_BOTTLE_DEBUG"):
            raise
        print(
            f"claude-bottle: internal error: {sys.exc_info()[1]!r}\n  run again with --debug "
            "for the traceback",
            file=sys.stderr,
        )
        sys.exit(1)
