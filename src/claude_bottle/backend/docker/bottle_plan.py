"""The docker backend's plan, and the pure renderers of its `docker run` options.

Data in, argv out: `agent_run_args` and `bundle_run_args` are the whole
security boundary of a docker bottle, pinned by unit tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from claude_bottle.backend.base import BottlePlan
from claude_bottle.backend.docker.images import BaseImage
from claude_bottle.bottle_env import GIT_PORT, HOOK_PORT
from claude_bottle.bundle.settings import BUNDLE_FILES
from claude_bottle.cgroups import BUNDLE_MEMORY, BUNDLE_PIDS, BottleCgroup
from claude_bottle.plan import PlanSection
from claude_bottle.workspace_guard import GitMount

BOTTLE_RUN = "/run/claude-bottle"  # inside the containers
SOCKETS_DIR = f"{BOTTLE_RUN}/bundle"  # the sockets volume
EXEC_DIR = f"{BOTTLE_RUN}/exec"  # host runtime dir, bound into the agent
CONTROL_DIR = f"{BOTTLE_RUN}/control"  # host runtime dir, bound into the bundle only
SETTINGS_FILE = f"{BOTTLE_RUN}/bundle.json"
UPSTREAM_CA = f"{BOTTLE_RUN}/upstream-ca.pem"
GATEWAY_CA = f"{BOTTLE_RUN}/gateway-ca.pem"
CA_CERT = f"{SOCKETS_DIR}/ca.pem"  # the bottle's interception CA, published by the bundle
CA_BUNDLE = f"{SOCKETS_DIR}/ca-bundle.pem"  # the image's trust store plus that CA
BUNDLE_STATE = "/var/lib/claude-bottle"  # the bottle's host state dir, in the bundle
RELAY = "/usr/local/lib/claude-bottle/relay.py"
BUNDLE_PYTHON = "/opt/claude-bottle/venv/bin/python3"

LABEL_BOTTLE = "claude-bottle.bottle"
LABEL_STATE = "claude-bottle.state"  # which state root (user/config) owns the resource
LABEL_INSTANCE = "claude-bottle.instance"  # one launch of the bottle
LABEL_ROLE = "claude-bottle.role"
ROLE_AGENT = "agent"
ROLE_BUNDLE = "bundle"


@dataclasses.dataclass(frozen=True)
class Mount:
    kind: str  # bind | volume
    source: str
    target: str
    readonly: bool = False

    def arg(self) -> str:
        fields = [f"type={self.kind}", f"source={self.source}", f"target={self.target}"]
        if self.readonly:
            fields.append("readonly")
        return ",".join(_csv_field(f) for f in fields)


def _csv_field(field: str) -> str:
    """--mount is parsed as one CSV record: quote a field holding a comma or a quote."""
    if "," in field or '"' in field:
        return '"' + field.replace('"', '""') + '"'
    return field


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """The agent container: no network, read-only root, no capabilities."""

    container: str
    image: str
    hostname: str
    user: str  # uid:gid of the host user, so workspace files stay theirs
    uid: int
    gid: int
    workspace: str
    home: str  # the host home's path, backed by the bottle's own home dir
    home_source: str  # host dir: per-bottle, writable, seeded for Claude Code
    sockets: Mount  # the bundle's sockets: its volume, or a host dir (read-only here)
    exec_dir: str  # host dir where the relay creates its exec socket
    seccomp_profile: str  # host file: policy/seccomp.py's rules as a Docker profile
    read_only: tuple[str, ...]  # user-granted host paths, read-only at the same path
    relay_port: int
    pids_limit: int
    memory: str
    labels: tuple[tuple[str, str], ...]
    guard_mounts: tuple[GitMount, ...] = ()  # the bottle's own .git over the workspace's
    base_image: BaseImage | None = None  # `[docker] base_image`: the image is built on it
    cpus: float | None = None  # CPU quota ([bottle] cpus)
    tmpfs_size: int | None = None  # bytes /tmp and /var/tmp may each hold ([bottle] disk)


@dataclasses.dataclass(frozen=True)
class BundleSpec:
    """The bundle container: policy daemons with outbound access, listening on unix sockets."""

    container: str
    image: str
    user: str
    network: str  # a per-bottle bridge network's name, or "host"
    volume: str
    control_dir: str  # host dir for the control socket (never shown to the agent)
    settings_file: str  # host path of bundle.json
    env: tuple[tuple[str, str], ...]  # plain settings, never a secret (`docker/handover.py`)
    state_dir: str  # host state dir: the audit log is written here
    mounts: tuple[Mount, ...]  # CA files and the credential source the bundle reads
    labels: tuple[tuple[str, str], ...]


def _labels(pairs: Sequence[tuple[str, str]]) -> list[str]:
    args: list[str] = []
    for key, value in pairs:
        args += ["--label", f"{key}={value}"]
    return args


def _size(size: int | None) -> str:
    return "" if size is None else f",size={size}"


def agent_run_args(spec: AgentSpec) -> list[str]:
    """Options for `docker run --detach` of the agent container."""
    args = [
        "--name",
        spec.container,
        "--hostname",
        spec.hostname,
        *_labels(spec.labels),
        "--network",
        "none",
        "--dns",
        "127.0.0.1",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--security-opt",
        f"seccomp={spec.seccomp_profile}",
        "--pids-limit",
        str(spec.pids_limit),
        "--memory",
        spec.memory,
        "--memory-swap",  # the same as --memory: no swap to outlive the limit in
        spec.memory,
        *(["--cpus", f"{spec.cpus:g}"] if spec.cpus is not None else []),
        "--user",
        spec.user,
        "--workdir",
        spec.workspace,
        "--tmpfs",
        f"/tmp:exec,mode=1777{_size(spec.tmpfs_size)}",
        "--tmpfs",
        f"/var/tmp:exec,mode=1777{_size(spec.tmpfs_size)}",
        "--mount",
        Mount("bind", spec.home_source, spec.home).arg(),
        "--mount",
        Mount("bind", spec.workspace, spec.workspace).arg(),
    ]
    for guard in spec.guard_mounts:
        args += ["--mount", Mount("bind", guard.source, guard.target, guard.read_only).arg()]
    for path in spec.read_only:
        args += ["--mount", Mount("bind", path, path, readonly=True).arg()]
    args += [
        "--mount",
        dataclasses.replace(spec.sockets, target=SOCKETS_DIR, readonly=True).arg(),
        "--mount",
        Mount("bind", spec.exec_dir, EXEC_DIR).arg(),
    ]
    return args


def agent_command(relay_port: int, gateway_port: int) -> list[str]:
    return [
        "python3",
        "-I",
        "-S",
        RELAY,
        "--listen",
        f"{relay_port}={SOCKETS_DIR}/proxy.sock",
        "--listen",
        f"{gateway_port}={SOCKETS_DIR}/gateway.sock",
        "--listen",
        f"{GIT_PORT}={SOCKETS_DIR}/git.sock",
        "--listen",
        f"{HOOK_PORT}={SOCKETS_DIR}/hook.sock",
        "--exec-socket",
        f"{EXEC_DIR}/exec.sock",
        "--hold",
    ]


def bundle_run_args(spec: BundleSpec) -> list[str]:
    """Options for `docker run --detach` of the bundle container."""
    args = [
        "--name",
        spec.container,
        *_labels(spec.labels),
        "--network",
        spec.network,
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        spec.user,
        # Its own limits: a bottle that drives its bundle to every cap takes the bundle
        # down (and so itself, fail closed), not the host.
        "--memory",
        str(BUNDLE_MEMORY),
        "--memory-swap",
        str(BUNDLE_MEMORY),
        "--pids-limit",
        str(BUNDLE_PIDS),
        "--ulimit",
        f"nofile={BUNDLE_FILES}:{BUNDLE_FILES}",
        "--entrypoint",
        BUNDLE_PYTHON,
        "--tmpfs",
        "/tmp",
        "--mount",
        Mount("volume", spec.volume, SOCKETS_DIR).arg(),
        "--mount",
        Mount("bind", spec.control_dir, CONTROL_DIR).arg(),
        "--mount",
        Mount("bind", spec.settings_file, SETTINGS_FILE, readonly=True).arg(),
        "--mount",
        Mount("bind", spec.state_dir, BUNDLE_STATE).arg(),
    ]
    for mount in spec.mounts:
        args += ["--mount", mount.arg()]
    for name, value in spec.env:
        args += ["--env", f"{name}={value}"]
    return args


def bundle_command() -> list[str]:
    """Serve; the secrets come over the control socket once it answers."""
    return ["-m", "claude_bottle.bundle.server", SETTINGS_FILE]


def sockets_volume_options(uid: int, gid: int) -> dict[str, str]:
    """A tmpfs-backed volume owned by the host user: the bundle's sockets and CA files."""
    return {"type": "tmpfs", "device": "tmpfs", "o": f"size=8m,uid={uid},gid={gid},mode=0755"}


@dataclasses.dataclass(frozen=True)
class DockerBottlePlan(BottlePlan):
    detach: bool
    gateway_port: int
    bundle_credential: str  # the credential spec as the bundle container sees it
    instance: str
    state_label: str
    network: str | None  # bridge network the bundle container joins; None: none or host
    volume: str | None  # the sockets volume; None when the bundle is a host process
    agent: AgentSpec
    bundle: BundleSpec | None  # the bundle container; None when it is a host process
    placement: str  # where the bundle runs: "host" (a process) or "container"
    placement_reason: str
    bundle_cgroup: BottleCgroup | None  # a host-process bundle's own cgroup, if any
    home_image: str | None = None  # the sized image holding the home ([bottle] disk), if any
    # (host path, text) written at start and bound into the bundle container only: its
    # passwd, group and known_hosts for ssh remotes (`git_ssh.py`); nothing secret
    bundle_files: tuple[tuple[str, str], ...] = ()

    def runs_host_bundle(self) -> bool:
        return self.bundle is None

    def labels(self) -> dict[str, str]:
        return {
            LABEL_BOTTLE: self.name,
            LABEL_STATE: self.state_label,
            LABEL_INSTANCE: self.instance,
        }

    def sections(self) -> Sequence[PlanSection]:
        agent, bundle = self.agent, self.bundle
        sockets = self.agent.sockets
        agent_rows: list[tuple[str, str]] = [
            ("container", f"{agent.container} from {agent.image}"),
            *(
                (("built on", f"{agent.base_image.ref} ({agent.base_image.image_id[:19]})"),)
                if agent.base_image
                else ()
            ),
            ("network", "none (loopback only)"),
            ("root", "image, read-only; tmpfs /tmp, /var/tmp"),
            ("home", f"{agent.home} <- {agent.home_source} (bottle's own, writable)"),
            ("user", f"{agent.user} (the host user)"),
            ("privileges", "all capabilities dropped, no-new-privileges, seccomp profile"),
            ("sockets", f"{sockets.kind} {sockets.source} at {SOCKETS_DIR} (read-only)"),
        ]
        agent_rows += [("read-only", p) for p in agent.read_only]
        placement = PlanSection(
            "bundle placement (docker)",
            (("bundle", self.placement), ("why", self.placement_reason)),
        )
        if bundle is None:
            bundle_section = PlanSection(
                "bundle (host process)",
                (
                    ("sockets", f"{sockets.source} (bound read-only into the agent container)"),
                    ("network", "the host's (the agent container has none)"),
                    ("audit", f"{self.state_dir}/audit.jsonl"),
                    (
                        "cgroup",
                        ", ".join(d for _, d in self.bundle_cgroup.dirs)
                        if self.bundle_cgroup
                        else "none (no usable cgroup here)",
                    ),
                ),
            )
        else:
            network = (
                f"{bundle.network} (bridge, outbound access)"
                if self.network
                else "host (a pin, the gateway or an ssh remote is on the host's loopback)"
            )
            bundle_section = PlanSection(
                "bundle container (docker)",
                (
                    ("container", f"{bundle.container} from {bundle.image}"),
                    ("network", network),
                    ("sockets", f"volume {self.volume} (tmpfs) at {SOCKETS_DIR}"),
                    ("audit", f"{bundle.state_dir}/audit.jsonl"),
                    ("secrets", "read by the CLI, handed over the control socket at start"),
                    *(
                        ("reads", f"{m.source}" + (" (read-only)" if m.readonly else ""))
                        for m in bundle.mounts
                    ),
                ),
            )
        return [
            *self.common_sections(),
            placement,
            PlanSection("agent container (docker)", tuple(agent_rows)),
            bundle_section,
            PlanSection(
                "docker resources",
                tuple(
                    (f"label {k}", v) for k, v in sorted(self.labels().items()) if k != LABEL_STATE
                ),
            ),
        ]
