"""`claude-bottle dlp scan`: what the proxy would refuse in a file or stdin."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from claude_bottle.backend import registry
from claude_bottle.config import load_config
from claude_bottle.errors import ConfigError

DLP_SCAN_LIMIT = 64 << 20  # bytes read from FILE or stdin


def dlp_scan(file: str, config_file: str | None) -> int:
    """`claude-bottle dlp scan`: 1 if a finding would be refused, else 0."""
    from claude_bottle.bottle_env import host_secrets  # the user's own secrets too
    from claude_bottle.policy.dlp import Scanner
    from claude_bottle.policy.dlp_report import report

    config = load_config(
        workspace=Path(os.getcwd()).resolve(),
        extra_file=Path(config_file) if config_file else None,
        allow=(),
        backend=None,
        known_backends=registry.names(),
        warn=lambda message: click.echo(message, err=True),
    )
    if file == "-":
        data = sys.stdin.buffer.read(DLP_SCAN_LIMIT + 1)
    else:
        with open(file, "rb") as handle:
            data = handle.read(DLP_SCAN_LIMIT + 1)
    if len(data) > DLP_SCAN_LIMIT:
        raise ConfigError(f"{file}: larger than {DLP_SCAN_LIMIT >> 20} MiB; scan it in parts")
    scanner = Scanner(
        tuple((p.name, p.regex) for p in config.dlp.patterns),
        host_secrets(os.environ),
        ignore_rules=config.dlp.ignore,
        ignore_fingerprints=config.dlp.ignore_fingerprints,
    )
    lines = report(scanner, data)
    for line in lines:
        click.echo(line.render())
    refused = sum(not line.ignored for line in lines)
    click.echo(f"{len(lines)} finding(s), {refused} would be refused", err=True)
    return 1 if refused else 0
