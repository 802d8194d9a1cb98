"""The console script: for `run`, start the bottle's bundle first, then load the CLI.

A host bundle's interpreter start-up and imports are most of a bottle's time to ready.
Started before click, the config and the backends load (~100 ms of imports), all of
that overlaps with it. Only this module and what it imports run before the spawn.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` and `collections.abc` are not loaded before the fork
if TYPE_CHECKING:
    from collections.abc import Sequence

# `run` options that take a value, so the value is not taken for the command's start.
# tests/unit/test_entry.py checks this against the options click defines for `run`.
RUN_VALUE_OPTIONS = frozenset(
    {"--backend", "--allow", "--name", "--workspace", "--config", "--docker-bundle"}
)
_GLOBAL_FLAGS = frozenset({"--debug"})
_HELP = frozenset({"-h", "--help"})


class RunGuess:
    """What the raw arguments say about a `run`: the backend asked for, and `--detach`."""

    def __init__(self, backend: str | None, detach: bool, docker_bundle: str | None = None) -> None:
        self.backend = backend
        self.detach = detach
        self.docker_bundle = docker_bundle


def guess_run(args: Sequence[str]) -> RunGuess | None:
    """The `run` in `claude-bottle [--debug] run [OPTIONS] [--] [COMMAND...]`, or None.

    Read before click parses the arguments, so it only guesses; a wrong guess costs a
    bundle started for nothing (discarded once the real arguments and the config are
    known) or one started the ordinary way, a little later.
    """
    position = 0
    while position < len(args) and args[position] in _GLOBAL_FLAGS:
        position += 1
    if position >= len(args) or args[position] != "run":
        return None
    backend: str | None = None
    docker_bundle: str | None = None
    detach = False
    rest = iter(args[position + 1 :])
    for arg in rest:
        if arg == "--" or not arg.startswith("-"):
            break  # the command starts here: `run` does not take options after it
        name, has_value, value = arg.partition("=")
        if name in _HELP:
            return None
        if name == "--detach":
            detach = True
        elif name in RUN_VALUE_OPTIONS:
            if not has_value:
                value = next(rest, "")
            if name == "--backend":
                backend = value
            elif name == "--docker-bundle":
                docker_bundle = value
    return RunGuess(backend, detach, docker_bundle)


def _prestart_for(guess: RunGuess) -> None:
    from claude_bottle.backend import registry

    if registry.runs_host_bundle(guess.backend or registry.default_name(), guess.docker_bundle):
        from claude_bottle.bundle import prestart

        if not prestart.fork_bundle(die_with_parent=not guess.detach):
            from claude_bottle.bundle import launcher

            launcher.prestart_bundle(die_with_parent=not guess.detach)


def main() -> None:
    import sys

    guess = guess_run(sys.argv[1:])
    if guess is not None:
        from claude_bottle.cli import warm

        status = warm.run(sys.argv, guess.detach)
        if status is not None:
            warm.leave(status)
    run_cold()


def run_cold() -> None:
    """The CLI in this process (a warm process's child comes here with its caller's state)."""
    import sys

    guess = guess_run(sys.argv[1:])
    if guess is not None:
        _prestart_for(guess)
    from claude_bottle.cli.main import main as cli_main

    cli_main()
