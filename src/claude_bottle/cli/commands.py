"""What each CLI command does. Kept apart from main.py so `--help` imports nothing heavy."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import click

from claude_bottle import paths, state
from claude_bottle.backend import records, registry
from claude_bottle.backend.base import (
    Bottle,
    BottleBackend,
    BottlePlan,
    LaunchRequest,
    StoredBottle,
)
from claude_bottle.cli import policy_record
from claude_bottle.config import Config, load_config
from claude_bottle.errors import EXIT_LAUNCH_FAILED, BottleError, ConfigError, MissingDependency
from claude_bottle.safe_text import escape

WATCH_INTERVAL = 0.25


def _say(message: str) -> None:
    click.echo(f"claude-bottle: {message}", err=True)


def default_name(workspace: Path) -> str:
    base = "".join(c if c.isalnum() or c in "._-" else "-" for c in workspace.name.lower())
    base = base.strip("-._")[:50] or "bottle"
    return f"{base}-{os.urandom(3).hex()[:5]}"  # not `secrets`: its import is ~7 ms


class _Prepared(NamedTuple):
    backend: BottleBackend
    plan: BottlePlan
    config: Config
    policy: dict[str, Any]  # the effective policy and its sources, for the bottle's record


def _prepare(
    command: tuple[str, ...],
    *,
    backend: str | None,
    allow: Sequence[str],
    name: str | None,
    workspace: str | None,
    config_file: str | None,
    detach: bool = False,
    docker_bundle: str | None = None,
) -> _Prepared:
    ws = Path(workspace or os.getcwd()).resolve()
    config = load_config(
        workspace=ws,
        extra_file=Path(config_file) if config_file else None,
        allow=allow,
        backend=backend,
        docker_bundle=docker_bundle,
        known_backends=registry.names(),
        warn=_say,
    )
    bottle_name = paths.validate_name(name) if name else default_name(ws)
    request = LaunchRequest(
        name=bottle_name,
        workspace=ws,
        config=config,
        command=command or config.bottle.command,
        detach=detach,
    )
    chosen = registry.get(config.backend)
    inputs = policy_record.PolicyInputs(
        str(Path(config_file).absolute()) if config_file else None, tuple(allow)
    )
    return _Prepared(chosen, chosen.plan(request), config, policy_record.record(config, inputs))


def show_plan(command: tuple[str, ...], *, as_json: bool, **options: Any) -> None:
    plan = _prepare(command, **options).plan
    if as_json:
        click.echo(plan.to_json())
    else:
        plan.print()


def say_where_credentials_go(plan: BottlePlan) -> None:
    """A gateway upstream or OAuth URL other than Anthropic's gets the real credential:
    say so on every start, whatever config set it."""
    from claude_bottle.config.model import GatewayConfig

    default = GatewayConfig().anthropic_upstream
    if plan.anthropic_upstream != default:
        _say(
            f"the API gateway sends requests and the API credential to "
            f"{escape(plan.anthropic_upstream)}, not the default {default}"
        )
    if plan.oauth_token_url is not None:
        _say(f"OAuth tokens are refreshed at {escape(plan.oauth_token_url)}, not the default")


def _is_tty() -> bool:
    """A terminal on stdin: the command gets a pty the CLI owns; else pipes (terminal.py)."""
    return sys.stdin.isatty()


def _check_credential(plan: BottlePlan) -> None:
    """Claude Code without a usable credential would only fail inside: say so before launch."""
    if not plan.command or os.path.basename(plan.command[0]) != "claude":
        return
    from claude_bottle.bundle.credentials import load_credential

    load_credential(plan.anthropic_credential, os.environ, Path.home())  # raises, exit 3


def run(command: tuple[str, ...], *, detach: bool, **options: Any) -> int:
    from claude_bottle.bundle.launcher import discard_prestarted

    try:
        backend, plan, _, policy = _prepare(command, detach=detach, **options)
        if not plan.runs_host_bundle():
            discard_prestarted()
        say_where_credentials_go(plan)
        _check_credential(plan)
        _check_limits(plan)
        existing = records.find(plan.name)
        if isinstance(existing, records.Unreadable) and existing.problem is not None:
            raise existing.problem  # it may be running: nothing is launched over it
        if existing is not None and records.is_live(existing):
            raise ConfigError(
                f"a bottle named {plan.name} is already running",
                f"attach to it with `claude-bottle resume {plan.name}` or choose another --name",
            )
        return _launch_and_run(backend, plan, policy, detach=detach)
    finally:
        discard_prestarted()  # unused: the launch failed before it needed a bundle


def _check_limits(plan: BottlePlan) -> None:
    """Say which limits this host cannot apply, before the bottle starts; with
    `require_limits`, refuse to start instead (exit 3)."""
    unapplied = plan.limits.unapplied
    if not unapplied:
        return
    what = "; ".join(f"{u.key}: {u.reason}" for u in unapplied)
    if plan.limits.require:
        raise MissingDependency(
            f"[bottle] require_limits is set, but this host cannot apply every limit ({what})",
            "see `claude-bottle doctor`, or set require_limits = false",
        )
    _say(f"warning: limits not applied ({plan.limits.mechanism}): {what}")


def _launch_and_run(
    backend: BottleBackend, plan: BottlePlan, policy: dict[str, Any], *, detach: bool
) -> int:
    _finish_workspace(plan.name)  # an earlier launch that ended unseen (kill -9, detached)
    try:
        with backend.launch(plan) as bottle:
            state.update_record(plan.name, owner=state.process_ref(os.getpid()), policy=policy)
            if detach:
                bottle.start_detached(plan.command, Path(plan.state_dir) / "output.log")
                state.update_record(plan.name, owner=None)
                click.echo(plan.name)
                _say(
                    f"bottle {plan.name} is running; attach with `claude-bottle resume {plan.name}`"
                )
                return 0
            status = _run_watched(bottle, plan.command)
    finally:
        if not detach:  # the bottle is gone: what it left in the workspace is looked at now
            _finish_workspace(plan.name)
    return status


def _finish_workspace(name: str) -> None:
    from claude_bottle.workspace_guard import finish_and_report

    finish_and_report(name, str(paths.state_dir(name)), _say)


def _run_watched(bottle: Bottle, command: Sequence[str], *, owns_bottle: bool = True) -> int:
    """Run the command; if the bundle or the bottle dies meanwhile, stop it all (fail closed)."""
    failure: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(WATCH_INTERVAL):
            reason = bottle.alive()
            if reason is not None:
                failure.append(reason)
                bottle.kill()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        status = bottle.exec_claude(command, tty=_is_tty())
    except BottleError:
        if not failure:
            raise
        status = EXIT_LAUNCH_FAILED
    finally:
        done.set()
        watcher.join()
    if bottle.stopped_on_request:  # the watcher may have seen it die: that was asked for
        if owns_bottle:
            state.note_ending(bottle.name, status="exited", exit_code=status, ended=time.time())
        return status
    # A short command can end before the watcher looks again; it still ran without its way
    # out (or its bottle), so that is reported, not hidden behind the command's own status.
    died_meanwhile = None if failure else bottle.alive()
    if owns_bottle:  # a full disk may be why it stopped: that comes first (note_ending)
        state.note_ending(bottle.name, status="exited", exit_code=status, ended=time.time())
    for message in bottle.limits_hit():
        _say(message)
    if failure:
        _say(
            f"bottle {bottle.name} stopped: {failure[0]}; it had no way out, so it was stopped"
            + _bundle_log_hint(bottle.name)
        )
        return EXIT_LAUNCH_FAILED
    if died_meanwhile is not None:
        _say(
            f"bottle {bottle.name}: {died_meanwhile} while the command ran; "
            f"the command's own exit status was {status}" + _bundle_log_hint(bottle.name)
        )
        return EXIT_LAUNCH_FAILED
    return status


def _bundle_log_hint(name: str) -> str:
    """Why the bundle stopped, when it said so (its audit log failed or hit its budget:
    the log's last record, or a host bundle's last line), and where a host bundle's log
    is; the docker backend's bundle logs elsewhere."""
    from claude_bottle.bundle.audit_text import printable
    from claude_bottle.bundle.server import STOPPED

    state_dir = paths.state_dir(name)
    reason = ""
    last = _tail(state_dir / "audit.jsonl").rstrip("\n").rpartition("\n")[2]
    with contextlib.suppress(ValueError):
        record = json.loads(last)
        detail = record.get("detail") if isinstance(record, dict) else None
        if isinstance(detail, dict) and record.get("rule") in ("audit:budget", "audit:failed"):
            reason = str(detail.get("reason", ""))
    log = state_dir / "bundle.log"
    said = [line for line in _tail(log).splitlines() if line.startswith(STOPPED)]
    if said:
        reason = said[-1][len(STOPPED) :]
    hint = f" ({printable(reason)[:500]})" if reason else ""
    return hint + (f"; see {log}" if log.is_file() and log.stat().st_size else "")


def _tail(path: Path, size: int = 8192) -> str:
    """The last `size` bytes of a file, "" when it cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read(size).decode("utf-8", "replace")
    except OSError:
        return ""


def resume(name: str, *, replan: bool = False) -> int:
    record = records.read(paths.validate_name(name))
    backend = registry.get(record.bottle.backend)
    if records.is_live(record):
        bottle = backend.attach(record)
        # The bottle outlives this session: it keeps running until `stop`.
        return _run_watched(bottle, record.bottle.command or ["claude"], owns_bottle=False)
    recorded = record.lifecycle.policy
    inputs = policy_record.inputs_of(recorded) if recorded is not None else None
    if inputs is None and not replan:
        raise ConfigError(
            f"bottle {name} has no record of the policy it ran with",
            f"review your config, then `claude-bottle resume {name} --replan` starts it "
            "with the policy as it is now",
        )
    _say(f"bottle {name} is not running; starting it again with the same name and resources")
    prepared = _prepare(
        tuple(record.bottle.command),
        backend=record.bottle.backend,
        allow=inputs.allow if inputs else (),
        name=name,
        workspace=record.bottle.workspace,
        config_file=inputs.config_file if inputs else None,
    )
    if recorded is not None and inputs is not None:
        changed = policy_record.changes(recorded, prepared.config)
        if changed and not replan:
            raise ConfigError(
                f"bottle {name}'s policy changed since it ran: " + "; ".join(changed),
                f"review the change, then `claude-bottle resume {name} --replan` starts it "
                "with the policy as it is now",
            )
        if changed:
            _say("starting with the policy as it is now: " + "; ".join(changed))
    say_where_credentials_go(prepared.plan)
    _check_credential(prepared.plan)
    _cleanup_one(record)
    return _launch_and_run(prepared.backend, prepared.plan, prepared.policy, detach=False)


def _cleanup_one(record: StoredBottle) -> None:
    registry.get(record.bottle.backend).stop(record)
    _finish_workspace(record.bottle.name)


def stop(name: str | None, stop_all: bool) -> None:
    chosen = records.listing() if stop_all else [records.entry(name or "")]
    unreadable: list[str] = []
    for record in chosen:
        if isinstance(record, records.Unreadable):
            if record.problem is not None and not stop_all:
                raise record.problem  # the record is all `stop` would act on
            if record.problem is not None:
                unreadable.append(record.problem.message)  # the others are still stopped
            continue
        bottle = record.bottle.name
        if not records.is_live(record) and not stop_all:
            _say(f"bottle {bottle} is not running ({records.live_state(record)})")
        if not records.is_live(record):
            continue
        state.signal_process(record.lifecycle.owner, signal.SIGTERM)
        registry.get(record.bottle.backend).stop(record)
        _finish_workspace(bottle)
        state.update_record(bottle, status="stopped", ended=time.time())
        _say(f"stopped {bottle}")
    if unreadable:
        raise ConfigError("; ".join(unreadable), records.FIX)


def _tokens(record: records.Entry) -> int | None:
    """Tokens the bottle's gateway has counted, if it is running and answers."""
    from claude_bottle.bundle import control

    if isinstance(record, records.Unreadable) or not records.is_live(record):
        return None
    socket_path = record.bottle.control_socket
    if not socket_path:
        return None
    try:
        stats = control.call(Path(socket_path), "stats", timeout=1.0)
    except BottleError:
        return None
    return int(stats.get("input_tokens", 0)) + int(stats.get("output_tokens", 0))


def list_bottles(as_json: bool) -> None:
    rows: list[dict[str, Any]] = []
    for record in records.listing():
        if isinstance(record, records.Unreadable):
            if record.problem is not None:
                _say(f"{record.problem.message} (fix: {record.problem.hint})")
            rows.append(
                {
                    "name": record.name,
                    "state": "unknown",
                    "backend": "?",
                    "age": "?",
                    "tokens": None,
                    "workspace": "",
                }
            )
            continue
        rows.append(
            {
                "name": record.bottle.name,
                "state": records.live_state(record),
                "backend": record.bottle.backend,
                "age": records.age(record),
                "tokens": _tokens(record),
                "workspace": record.bottle.workspace,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no bottles")
        return
    header = ("NAME", "STATE", "BACKEND", "AGE", "TOKENS", "WORKSPACE")
    table = [
        header,
        *[
            (
                str(r["name"]),
                r["state"],
                r["backend"],
                r["age"],
                "-" if r["tokens"] is None else str(r["tokens"]),
                r["workspace"],
            )
            for r in rows
        ],
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        click.echo(
            "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        )


def cleanup(dry_run: bool, records: bool, *, images: bool = False) -> None:
    listed, live = _listed()  # (`records` is the flag here)
    problems: list[str] = []
    found = False
    for name in registry.names():
        backend = registry.get(name)
        plan = backend.cleanup_plan(live, images=images)
        if plan.items:
            found = True
            plan.print()
            if not dry_run:
                problems += backend.cleanup(plan)
    for record in listed:
        name = record.bottle.name if isinstance(record, StoredBottle) else record.name
        if name in live:
            continue
        if isinstance(record, StoredBottle) and record.bottle.status == "running":
            found = True
            click.echo(f"record {escape(name)}: marked crashed (its processes are gone)")
            if not dry_run:
                state.update_record(name, status="crashed", ended=time.time())
        if records:
            found = True
            directory = paths.state_dir(name)
            click.echo(f"records of {escape(name)}: {escape(str(directory))}")
            if not dry_run:
                # The bottle's home is in there: rmtree follows none of the links it made.
                shutil.rmtree(directory, ignore_errors=True)
    if not found:
        click.echo("nothing to clean up")
    elif dry_run:
        click.echo("(dry run: nothing was removed)")
    if problems:
        raise BottleError("; ".join(problems))


def _listed() -> tuple[list[records.Entry], set[str]]:
    """Every bottle's record, and the names of those running."""
    listed = records.listing()
    live = {r.bottle.name for r in listed if isinstance(r, StoredBottle) and records.is_live(r)}
    return listed, live


def logs(name: str, follow: bool, as_json: bool, tool_use_id: str | None = None) -> None:
    from claude_bottle.bundle.audit_chain import iter_records
    from claude_bottle.bundle.audit_text import format_record
    from claude_bottle.bundle.tool_calls import concerns, valid_id

    if tool_use_id is not None and not valid_id(tool_use_id):
        raise ConfigError(f"--tool {tool_use_id!r} is no tool_use_id", "e.g. --tool toolu_01Abc")
    records.entry(name)  # the bottle exists; its log is read even if its record is not
    log = paths.state_dir(name) / "audit.jsonl"
    if not log.exists():
        raise BottleError(f"bottle {name} has no audit log yet ({log})")

    def stopped() -> bool:
        try:
            return not records.is_live(records.entry(name))
        except ConfigError:  # its record is gone
            return True

    try:
        for event in iter_records(log, follow=follow, stop=stopped):
            if tool_use_id is not None and not concerns(event, tool_use_id):
                continue
            # ASCII-only JSON: C1 controls and bidi marks the bottle wrote come out as \u escapes.
            click.echo(json.dumps(event, ensure_ascii=True) if as_json else format_record(event))
    except BrokenPipeError:
        pass


def audit_verify(file: str) -> int:
    from claude_bottle.bundle.audit_chain import verify

    result = verify(Path(file))
    if result.ok:
        click.echo(f"{file}: ok, {result.records} records, hash chain intact")
        return 0
    click.echo(f"{file}: line {result.bad_line}: {result.problem}", err=True)
    return 1


def doctor() -> int:
    default = registry.default_name()
    worst = 0
    for name in registry.names():
        backend = registry.get(name)
        problems = backend.preflight()
        mark = "ok" if not problems else "missing"
        suffix = " (default)" if name == default else ""
        click.echo(f"{name}{suffix}: {mark} — {backend.description}")
        for problem in problems:
            click.echo(f"  - {problem}")
        for line in backend.limits_report():
            click.echo(f"  limits: {line}")
        if not problems:
            for line in backend.doctor_notes():
                click.echo(f"  {line}")
        if problems and name == default:
            worst = 3
    claude = shutil.which("claude")
    click.echo(f"claude: {claude or 'not installed — npm install -g @anthropic-ai/claude-code'}")
    return worst
