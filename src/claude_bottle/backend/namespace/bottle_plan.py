"""The namespace backend's plan: the common fields plus exactly what bubblewrap will mount."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from claude_bottle.backend.base import BottlePlan
from claude_bottle.backend.namespace.bwrap import BwrapSpec
from claude_bottle.backend.namespace.limits import Confinement
from claude_bottle.plan import PlanSection


@dataclasses.dataclass(frozen=True)
class NamespaceBottlePlan(BottlePlan):
    bwrap: BwrapSpec
    confinement: Confinement  # how the sandbox is put under [bottle] limits
    home_image: str | None = None  # the sized image holding the home ([bottle] disk), if any

    def sections(self) -> Sequence[PlanSection]:
        spec = self.bwrap
        rows: list[tuple[str, str]] = [
            ("namespaces", "user, pid, ipc, uts, cgroup, net (loopback only)"),
            (
                "runs as",
                "your uid"
                if spec.host_id is None
                else f"host uid {spec.host_id}, never root; the workspace, home and "
                "read-only paths through idmapped mounts (your files stay yours)",
            ),
            ("root", "host / read-only; fresh /tmp, /proc, /dev, /run"),
            ("hidden", ", ".join(spec.masked)),
            ("sockets", f"{len(spec.hidden_sockets)} other host unix sockets covered"),
            ("home", f"{spec.home} <- {spec.home_source} (bottle's own, writable)"),
        ]
        if self.home_image is not None:
            rows.append(("home image", f"{self.home_image}, mounted as the home ([bottle] disk)"))
        rows += [("toolchain", f"{b.path} ({b.reason})") for b in spec.toolchain]
        rows += [("read-only", p) for p in spec.read_only]
        return [*self.common_sections(), PlanSection("sandbox (bubblewrap)", tuple(rows))]
