"""Bring a smolmachines bottle up, all or nothing: every step registers its own undo.

Order: runtime dir and stage -> agent image packed (cached) -> bundle -> machine create
-> machine start -> wait for the relay's ready file. A failure anywhere unwinds the
ExitStack in reverse: the machine is stopped and deleted, the bundle stopped, the
runtime dir removed.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from claude_bottle import home_image, paths, state
from claude_bottle.backend.base import BottleRecord, BundlePlaces
from claude_bottle.backend.smolmachines import smolvm
from claude_bottle.backend.smolmachines.bottle import SmolmachinesBottle, process_alive
from claude_bottle.backend.smolmachines.bottle_plan import (
    GUEST_BUNDLE,
    GUEST_GATEWAY_SOCKET,
    GUEST_GIT_SOCKET,
    GUEST_HOOK_SOCKET,
    GUEST_LIB,
    GUEST_PROXY_SOCKET,
    GUEST_STATE,
    SmolmachinesBottlePlan,
)
from claude_bottle.backend.smolmachines.prepare import Stage, ensure_agent_pack, write_stage
from claude_bottle.backend.smolmachines.util import LABEL, SmolvmBinary
from claude_bottle.bottle_env import HOOK_PORT
from claude_bottle.bundle.launcher import BundleProcess, PendingBundle, spawn_bundle, stop_process
from claude_bottle.claude_home import ToolHook
from claude_bottle.errors import ConfigError, LaunchError
from claude_bottle.limits import GIB, MIB

READY_TIMEOUT = 60.0
STATE_POLL = 1.0  # how often to ask smolvm whether the machine still runs while waiting
SpawnBundle = Callable[..., PendingBundle]


class SmolmachinesRecord(NamedTuple):
    """A smolmachines bottle's own fields in its record (`BottleRecord`)."""

    machine: str
    smolvm: str  # the binary that made the machine: `stop` and `cleanup` use the same one
    smolvm_source: str
    subnet: str
    user: str
    network: str


PackImage = Callable[[str, str], Path]


def machine_spec(plan: SmolmachinesBottlePlan, stage: Stage, pack: Path) -> smolvm.MachineSpec:
    return smolvm.MachineSpec(
        name=plan.machine,
        from_path=str(pack),
        command=plan.relay_command,
        mount_sockets=(
            (str(stage.proxy_socket), GUEST_PROXY_SOCKET),
            (str(stage.gateway_socket), GUEST_GATEWAY_SOCKET),
            *(((str(stage.git_socket), GUEST_GIT_SOCKET),) if plan.git_remotes else ()),
            (str(stage.hook_socket), GUEST_HOOK_SOCKET),
        ),
        volumes=(
            (str(stage.lib), GUEST_LIB, True),
            (str(stage.proxy_socket.parent), GUEST_BUNDLE, True),
            (str(stage.guest_state), GUEST_STATE, False),
            (plan.workspace, plan.workspace, False),
            *((m.source, m.target, m.read_only) for m in plan.workspace_guard.mounts),
            (plan.home_source, plan.home, False),
        ),
        labels=((LABEL, plan.name),),
        user=plan.user,
        memory_mib=max(1, plan.limits.memory // MIB),
        cpus=None if plan.limits.cpus is None else math.ceil(plan.limits.cpus),
        disk_gib=max(1, math.ceil(plan.limits.disk / GIB)),
    )


def launch_bottle(
    plan: SmolmachinesBottlePlan,
    stack: contextlib.ExitStack,
    binary: SmolvmBinary,
    *,
    pack_image: PackImage | None = None,
    bundle_spawner: SpawnBundle = spawn_bundle,
) -> SmolmachinesBottle:
    if plan.network != "none":
        raise ConfigError(
            f"network = {plan.network!r} cannot launch: smolvm has no option to attach an "
            "external gvproxy, and gvproxy cannot limit the guest to the bundle's ports",
            "use the default network mode (none): the bundle socket is mounted over vsock",
        )
    exe = binary.path
    state_dir = paths.make_private_dir(Path(plan.state_dir))
    paths.make_private_dir(Path(plan.home_source))
    runtime = Path(plan.runtime_dir)
    if runtime.exists():
        raise LaunchError(
            f"bottle {plan.name} already has runtime files in {runtime}",
            "it may be running (claude-bottle ls); otherwise: claude-bottle cleanup",
        )
    if any(m.name == plan.machine for m in smolvm.machine_ls(exe)):
        raise LaunchError(
            f"a smolvm machine named {plan.machine} already exists (left from an earlier run?)",
            "claude-bottle cleanup (or: smolvm machine delete --name " + plan.machine + " -f)",
        )
    paths.make_private_dir(runtime.parent)
    paths.make_private_dir(runtime)
    stack.callback(shutil.rmtree, runtime, True)
    if plan.home_image is not None:
        # Mounted for the whole run, not only the start: the VMM serves the host path to
        # the guest (virtiofs). The stack detaches it once the machine is gone (after its
        # own callbacks, registered later); for a detached bottle, `stop` does.
        home_image.mount_for_start(Path(plan.home_source), plan.limits.disk, stack)
    stage = write_stage(plan, runtime)
    (state_dir / "plan.json").write_text(plan.to_json() + "\n")
    plan.seed_home(Path(plan.home_source), Path.home(), ToolHook("python3", HOOK_PORT))

    pack = (pack_image or ensure_agent_pack)(plan.image, exe)

    bundle_dir = stage.proxy_socket.parent
    settings = plan.bundle_settings(
        BundlePlaces(
            proxy_socket=str(stage.proxy_socket),
            control_socket=str(stage.control_socket),
            gateway_socket=str(stage.gateway_socket),
            audit_log=str(state_dir / "audit.jsonl"),
            ca_cert=str(bundle_dir / "ca.pem"),
            ca_bundle=str(bundle_dir / "ca-bundle.pem") if plan.egress_intercept else None,
            upstream_ca_file=plan.upstream_ca_file,
            gateway_ca_file=plan.gateway_ca_file,
            anthropic_credential=plan.anthropic_credential,
            git_socket=str(stage.git_socket) if plan.git_remotes else None,
            hook_socket=str(stage.hook_socket),
        )
    )
    settings.dump(stage.settings)
    # The bundle starts while smolvm creates the machine; both are needed before `start`.
    pending = bundle_spawner(
        stage.settings,
        state_dir / "bundle.log",
        die_with_parent=not plan.detach,
        injections=plan.injections,
    )
    stack.callback(stop_process, pending.process)

    try:
        smolvm.machine_create(exe, machine_spec(plan, stage, pack))
    except smolvm.SmolvmError as exc:
        raise LaunchError(f"cannot create the microVM: {exc.message}", exc.hint) from exc
    stack.callback(_delete_quietly, exe, plan.machine)
    bundle = pending.wait_ready()
    try:
        smolvm.machine_start(exe, plan.machine)
    except smolvm.SmolvmError as exc:
        raise LaunchError(f"the microVM did not start: {exc.message}", exc.hint) from exc
    stack.callback(_stop_quietly, exe, plan.machine)
    _wait_ready(exe, plan.machine, stage.ready_file, bundle, state_dir / "bundle.log")

    processes = {"bundle": state.process_ref(bundle.pid)}
    vmm = next((m for m in smolvm.machine_ls(exe) if m.name == plan.machine), None)
    if vmm is not None and vmm.pid is not None:
        processes["bottle"] = state.process_ref(vmm.pid)
    BottleRecord.launched(
        plan,
        detached=plan.detach,
        processes=processes,
        runtime_dir=runtime,
        control_socket=str(stage.control_socket),
    ).write(
        SmolmachinesRecord(
            machine=plan.machine,
            smolvm=exe,
            smolvm_source=binary.source,
            subnet=plan.subnet,
            user=plan.user,
            network=plan.network,
        )
    )
    return SmolmachinesBottle(
        plan.name,
        machine=plan.machine,
        smolvm_path=exe,
        env=plan.env,
        workspace=plan.workspace,
        processes=processes,
        user=plan.user,
        filter_stderr=binary.from_wheel,
    )


def _wait_ready(
    exe: str,
    machine: str,
    ready_file: Path,
    bundle: BundleProcess,
    bundle_log: Path,
    timeout: float = READY_TIMEOUT,
) -> None:
    """Until the relay has bound its listener (it writes the ready file through virtiofs)."""
    deadline = time.monotonic() + timeout
    next_poll = time.monotonic() + STATE_POLL
    while not ready_file.exists():
        if bundle.poll() is not None:
            raise LaunchError("the bundle exited while the microVM started", f"see {bundle_log}")
        now = time.monotonic()
        if now >= next_poll:
            next_poll = now + STATE_POLL
            found = next((m for m in smolvm.machine_ls(exe) if m.name == machine), None)
            if found is None or found.state != "running":
                raise LaunchError(
                    f"the relay in the microVM exited before it was ready: {_logs(exe, machine)}",
                    "the agent image needs python3 on PATH; see `smolvm machine logs --name "
                    f"{machine}`",
                )
        if now > deadline:
            raise LaunchError(
                f"the microVM was not ready within {timeout:.0f}s: {_logs(exe, machine)}",
                f"see `smolvm machine logs --name {machine}`",
            )
        time.sleep(0.05)


def _logs(exe: str, machine: str) -> str:
    lines = smolvm.machine_logs(exe, machine, tail=3).strip().splitlines()
    return " | ".join(lines) or "no output"


def _stop_quietly(exe: str, machine: str) -> None:
    with contextlib.suppress(smolvm.SmolvmError):
        smolvm.machine_stop(exe, machine, timeout=5)


def _delete_quietly(exe: str, machine: str) -> None:
    with contextlib.suppress(smolvm.SmolvmError):
        smolvm.machine_delete(exe, machine)


def teardown(
    exe: str | None, machine: str | None, record_processes: dict[str, dict[str, int]]
) -> list[str]:
    """Stop and delete a bottle's machine and its bundle from a record; the problems left."""
    problems: list[str] = []
    if exe and machine:
        try:
            present = any(m.name == machine for m in smolvm.machine_ls(exe))
            if present:
                _stop_quietly(exe, machine)
                smolvm.machine_delete(exe, machine)
        except smolvm.SmolvmError as exc:
            problems.append(exc.message)
    bundle = record_processes.get("bundle")
    if bundle is not None and process_alive(bundle):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(bundle["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while process_alive(bundle) and time.monotonic() < deadline:
            time.sleep(0.02)
    return problems
