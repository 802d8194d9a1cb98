"""smolmachines backend: the bottle is a smolvm microVM with no network device; the bundle
is a host process whose socket is mounted into the guest over vsock."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from claude_bottle import home_image, paths
from claude_bottle.backend.base import (
    Bottle,
    BottleBackend,
    BottlePlan,
    CleanupPlan,
    Launched,
    LaunchRequest,
    StoredBottle,
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
    SmolmachinesRecord,
    SpawnBundle,
    launch_bottle,
    teardown,
)
from claude_bottle.backend.smolmachines.prepare import resolve_plan
from claude_bottle.bundle.launcher import spawn_bundle
from claude_bottle.errors import BottleError, MissingDependency


class SmolmachinesBackend(BottleBackend):
    name = "smolmachines"
    description = "smolvm microVM with no network device (KVM or Hypervisor.framework)"
    launch_modules = ("claude_bottle.policy.seccomp", "platformdirs")

    def limits_report(self) -> list[str]:
        return [
            "memory, cpus and disk size the microVM (--mem, --cpus, --storage/--overlay); "
            "pids are the guest kernel's",
            home_image.doctor_line(),
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

    def _binary_of(self, own: SmolmachinesRecord) -> str | None:
        if Path(own.smolvm).exists():
            return own.smolvm
        found = self._find()
        return found.path if found else None

    def record_fields(self) -> type[SmolmachinesRecord]:
        return SmolmachinesRecord

    def attach(self, record: StoredBottle) -> Bottle:
        common, own = record.bottle, record.own
        assert isinstance(own, SmolmachinesRecord)
        exe = self._binary_of(own)
        if exe is None:
            raise MissingDependency("smolvm is not installed", util.INSTALL_HINT)
        return SmolmachinesBottle(
            common.name,
            machine=own.machine,
            smolvm_path=exe,
            env=common.env,
            workspace=common.workspace,
            processes=common.processes,
            user=own.user,
            filter_stderr=own.smolvm_source != "PATH",
        )

    def stop(self, record: StoredBottle) -> None:
        common, own = record.bottle, record.own
        assert isinstance(own, SmolmachinesRecord)
        machine = own.machine
        problems = teardown(self._binary_of(own), machine, common.processes)
        # Lazily: a VMM that outlived its stop keeps what it has open, and nothing more.
        with contextlib.suppress(BottleError):
            home_image.detach(paths.state_dir(common.name) / "home")
        paths.remove_runtime_dir(common.name, common.runtime_dir)
        if problems:
            raise BottleError(
                f"bottle {common.name}: the microVM {machine} may be left: {problems[0]}",
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
