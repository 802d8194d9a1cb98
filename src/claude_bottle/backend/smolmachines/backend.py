"""smolmachines backend: the bottle is a smolvm microVM with no network device; the bundle
is a host process whose socket is mounted into the guest over vsock."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from claude_bottle import paths
from claude_bottle.backend.base import (
    Bottle,
    BottleBackend,
    BottlePlan,
    CleanupPlan,
    Launched,
    LaunchRequest,
)
from claude_bottle.backend.smolmachines import smolvm, util
from claude_bottle.backend.smolmachines.bottle import SmolmachinesBottle
from claude_bottle.backend.smolmachines.bottle_cleanup_plan import (
    MACHINE,
    SmolmachinesCleanupPlan,
    cleanup_items,
    machine_of_item,
    orphans,
)
from claude_bottle.backend.smolmachines.bottle_plan import SmolmachinesBottlePlan
from claude_bottle.backend.smolmachines.launch import (
    PackImage,
    SpawnBundle,
    launch_bottle,
    teardown,
)
from claude_bottle.backend.smolmachines.prepare import UNBOUNDED_HOME, resolve_plan
from claude_bottle.bundle.launcher import spawn_bundle
from claude_bottle.errors import BottleError, MissingDependency


class SmolmachinesBackend(BottleBackend):
    name = "smolmachines"
    description = "smolvm microVM with no network device (KVM or Hypervisor.framework)"

    def limits_report(self) -> list[str]:
        return [
            "memory, cpus and disk size the microVM (--mem, --cpus, --storage/--overlay); "
            "pids are the guest kernel's",
            f"cannot apply disk to the home: {UNBOUNDED_HOME}",
        ]

    def __init__(
        self,
        *,
        checks: Callable[[], list[str]] | None = None,
        find: Callable[[], util.SmolvmBinary | None] = util.find_smolvm,
        pack_image: PackImage | None = None,
        bundle_spawner: SpawnBundle = spawn_bundle,
    ) -> None:
        self._checks = checks or util.preflight
        self._find = find
        self._pack_image = pack_image
        self._bundle_spawner = bundle_spawner

    def preflight(self) -> list[str]:
        return self._checks()

    def _require(self) -> util.SmolvmBinary:
        problems = self.preflight()
        binary = self._find()
        if problems or binary is None:
            raise MissingDependency(
                "; ".join(problems) or "smolvm is not installed", util.INSTALL_HINT
            )
        return binary

    def plan(self, request: LaunchRequest) -> SmolmachinesBottlePlan:
        return resolve_plan(self.name, request)

    def start(self, plan: BottlePlan, stack: contextlib.ExitStack) -> Launched:
        assert isinstance(plan, SmolmachinesBottlePlan)
        binary = self._require()
        bottle = launch_bottle(
            plan,
            stack,
            binary,
            pack_image=self._pack_image,
            bundle_spawner=self._bundle_spawner,
        )
        return Launched(bottle)

    def _binary_of(self, record: dict[str, Any]) -> str | None:
        recorded = record.get("smolvm")
        if isinstance(recorded, str) and Path(recorded).exists():
            return recorded
        found = self._find()
        return found.path if found else None

    def attach(self, record: dict[str, Any]) -> Bottle:
        exe = self._binary_of(record)
        if exe is None:
            raise MissingDependency("smolvm is not installed", util.INSTALL_HINT)
        return SmolmachinesBottle(
            record["name"],
            machine=record.get("machine") or util.machine_name(record["name"]),
            smolvm_path=exe,
            env=record.get("env", {}),
            workspace=record.get("workspace", "/"),
            processes=record.get("processes", {}),
            user=record.get("user"),
            filter_stderr=record.get("smolvm_source", "PATH") != "PATH",
        )

    def stop(self, record: dict[str, Any]) -> None:
        machine = record.get("machine") or util.machine_name(str(record["name"]))
        problems = teardown(self._binary_of(record), machine, record.get("processes", {}))
        paths.remove_runtime_dir(record)
        if problems:
            raise BottleError(
                f"bottle {record['name']}: the microVM {machine} may be left: {problems[0]}",
                "claude-bottle cleanup, or: smolvm machine delete --name " + machine + " --force",
            )

    def cleanup_plan(self, live_names: set[str], *, images: bool = False) -> CleanupPlan:
        found = self._find()
        if found is None:
            return SmolmachinesCleanupPlan(self.name, (), "")
        try:
            machines = smolvm.machine_ls(found.path)
        except smolvm.SmolvmError:
            return SmolmachinesCleanupPlan(self.name, (), found.path)
        return SmolmachinesCleanupPlan(
            self.name, cleanup_items(orphans(machines, live_names)), found.path
        )

    def cleanup(self, plan: CleanupPlan) -> list[str]:
        assert isinstance(plan, SmolmachinesCleanupPlan)
        problems = []
        for kind, what in plan.items:
            if kind != MACHINE:
                continue
            machine = machine_of_item(what)
            problems += teardown(plan.smolvm, machine, {})
        return problems
