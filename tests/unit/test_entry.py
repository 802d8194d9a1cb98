"""The console script's guess, from raw arguments, of whether `run` will need a bundle."""

from __future__ import annotations

import click
import pytest

from claude_bottle.cli.entry import RUN_VALUE_OPTIONS, guess_run
from claude_bottle.cli.main import cli


@pytest.mark.parametrize(
    ("args", "backend", "detach"),
    [
        (["run"], None, False),
        (["run", "--", "true"], None, False),
        (["--debug", "run", "true"], None, False),
        (["run", "--backend", "docker", "--", "true"], "docker", False),
        (["run", "--backend=smolmachines", "true"], "smolmachines", False),
        (["run", "--name", "--backend", "--detach", "sh"], None, True),
        (["run", "--allow", "x.test", "--detach", "--", "--backend", "docker"], None, True),
        (["run", "sh", "-c", "--backend docker"], None, False),
    ],
)
def test_run_is_recognised_with_its_backend_and_detach(
    args: list[str], backend: str | None, detach: bool
) -> None:
    guess = guess_run(args)
    assert guess is not None
    assert (guess.backend, guess.detach) == (backend, detach)


@pytest.mark.parametrize(
    "args",
    [[], ["plan"], ["ls"], ["--version"], ["run", "--help"], ["run", "-h"], ["plan", "run"]],
)
def test_other_commands_and_help_start_no_bundle(args: list[str]) -> None:
    assert guess_run(args) is None


def test_value_options_are_the_ones_click_defines_for_run() -> None:
    run = cli.commands["run"]
    defined = {
        name
        for param in run.params
        if isinstance(param, click.Option) and not param.is_flag
        for name in param.opts
    }
    assert defined == RUN_VALUE_OPTIONS


@pytest.mark.parametrize(
    ("args", "prestart"),
    [
        (["run", "--backend", "docker", "--", "true"], True),  # auto: usually a host bundle
        (["run", "--backend", "docker", "--docker-bundle", "host", "true"], True),
        (["run", "--backend", "docker", "--docker-bundle=container", "true"], False),
        (["run", "--docker-bundle", "container", "--backend", "namespace", "true"], True),
    ],
)
def test_a_bundle_is_prestarted_unless_it_will_run_in_a_container(
    args: list[str], prestart: bool
) -> None:
    from claude_bottle.backend import registry

    guess = guess_run(args)
    assert guess is not None
    backend = guess.backend or registry.default_name()
    assert registry.runs_host_bundle(backend, guess.docker_bundle) is prestart
