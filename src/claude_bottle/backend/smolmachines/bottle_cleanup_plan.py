"""What `cleanup` removes for smolmachines: cb-* machines whose bottle is not running."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from claude_bottle.backend.base import CleanupPlan
from claude_bottle.backend.smolmachines.smolvm import MachineInfo
from claude_bottle.backend.smolmachines.util import LABEL, MACHINE_PREFIX

MACHINE = "machine"


@dataclasses.dataclass(frozen=True)
class SmolmachinesCleanupPlan(CleanupPlan):
    smolvm: str  # the binary that listed the machines; cleanup uses the same one


def bottle_of(machine: MachineInfo) -> str | None:
    """The bottle a machine belongs to (its label, else its name), or None if it is not ours."""
    if not machine.name.startswith(MACHINE_PREFIX):
        return None
    return machine.labels.get(LABEL) or machine.name[len(MACHINE_PREFIX) :]


def orphans(machines: Iterable[MachineInfo], live_names: set[str]) -> list[MachineInfo]:
    """Our machines whose bottle is not live. A machine is disposable: the bottle's home and
    workspace are host directories, so nothing of value is lost with it."""
    found = []
    for machine in machines:
        bottle = bottle_of(machine)
        if bottle is not None and bottle not in live_names:
            found.append(machine)
    return found


def cleanup_items(machines: Sequence[MachineInfo]) -> tuple[tuple[str, str], ...]:
    return tuple((MACHINE, f"{m.name} ({m.state}, bottle {bottle_of(m)})") for m in machines)


def machine_of_item(description: str) -> str:
    return description.split(" ", 1)[0]
