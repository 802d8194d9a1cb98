"""The smolmachines plan: the common fields plus the machine smolvm will create."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from claude_bottle.backend.base import BottlePlan
from claude_bottle.plan import PlanSection

# Where things appear inside the guest.
GUEST_RUN = "/run/claude-bottle"
GUEST_BUNDLE = f"{GUEST_RUN}/bundle"  # host-backed, read-only: the bundle's CA files
GUEST_PROXY_SOCKET = f"{GUEST_RUN}/proxy.sock"  # --mount-socket of the bundle's proxy.sock
GUEST_GATEWAY_SOCKET = f"{GUEST_RUN}/gateway.sock"  # --mount-socket of its gateway.sock
GUEST_GIT_SOCKET = f"{GUEST_RUN}/git.sock"  # --mount-socket of its git.sock ([git.remotes])
GUEST_HOOK_SOCKET = f"{GUEST_RUN}/hook.sock"  # --mount-socket of its tool-call hook socket
GUEST_STATE = f"{GUEST_RUN}/state"  # host-backed, read-write: the relay's ready file
GUEST_READY_FILE = f"{GUEST_STATE}/ready"
GUEST_LIB = "/opt/claude-bottle"  # host-backed, read-only: relay.py, the seccomp loader
# Every agent command starts through the loader, under policy/seccomp.py's rules.
GUEST_SECCOMP_PROGRAMS = (f"{GUEST_LIB}/seccomp-named.bpf", f"{GUEST_LIB}/seccomp-numbered.bpf")
GUEST_SECCOMP = (
    "python3",
    "-I",
    "-S",
    f"{GUEST_LIB}/seccomp_exec.py",
    *GUEST_SECCOMP_PROGRAMS,
    "--",
)
GUEST_HOME = "/home/bottle"  # host-backed (state dir), read-write


@dataclasses.dataclass(frozen=True)
class SmolmachinesBottlePlan(BottlePlan):
    machine: str
    image: str  # the agent image (a docker image reference) packed into the machine
    network: str  # "none" (no network device) or "gvproxy"
    subnet: str  # per-bottle, stable; used by network = "gvproxy"
    gateway: str
    home: str  # the guest's $HOME
    home_source: str  # host dir backing it
    user: str  # uid:gid every guest process runs as (the host user's, so mounts stay theirs)
    detach: bool
    relay_command: tuple[str, ...]
    home_image: str | None = None  # the sized image mounted at home_source ([bottle] disk)

    def sections(self) -> Sequence[PlanSection]:
        if self.network == "none":
            network = "none: no network device (no --net); vsock only"
        else:
            network = f"gvproxy on {self.subnet} (gateway {self.gateway}); proxy.internal only"
        rows: tuple[tuple[str, str], ...] = (
            ("machine", f"{self.machine} (smolvm microVM)"),
            ("image", f"{self.image} (docker save -> smolvm pack, cached by digest)"),
            ("network", network),
            ("bundle", f"{GUEST_PROXY_SOCKET} <- bundle proxy.sock (--mount-socket, vsock)"),
            ("gateway", f"{GUEST_GATEWAY_SOCKET} <- bundle gateway.sock (--mount-socket, vsock)"),
            *(
                (("git gate", f"{GUEST_GIT_SOCKET} <- bundle git.sock (--mount-socket, vsock)"),)
                if self.git_remotes
                else ()
            ),
            ("relay", " ".join(self.relay_command)),
            ("workspace", f"{self.workspace} (virtiofs, read-write)"),
            ("home", f"{self.home} <- {self.home_source} (bottle's own, writable)"),
            *(
                (("home image", f"{self.home_image}, mounted there for the run ([bottle] disk)"),)
                if self.home_image
                else ()
            ),
            ("user", f"{self.user} (the host user's uid:gid)"),
            ("exec", "smolvm machine exec (joins the relay's container)"),
        )
        return [*self.common_sections(), PlanSection("microVM (smolmachines)", rows)]
