"""docker backend: the agent in a network-less container, the bundle in a container beside it.

The agent container has no network but loopback (`--network none`), a
read-only root, no capabilities, no-new-privileges and pids/memory limits.
Its only way out is the relay (process 1) to the bundle's proxy socket in a
per-bottle tmpfs volume. The bundle container has outbound access on its own
bridge network (or the host's network when a pin names a loopback address:
only there is the host's loopback reachable) and writes the audit log into
the bottle's host state dir. Every resource is labelled with the bottle's
name, the state root and the launch, so `stop` and `cleanup` find them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from claude_bottle import cgroups, home_image, paths, state
from claude_bottle.backend.base import (
    Bottle,
    BottleBackend,
    BottlePlan,
    CleanupPlan,
    Launched,
    LaunchRequest,
    StoredBottle,
    common_plan_fields,
)
from claude_bottle.backend.docker import docker, images, placement
from claude_bottle.backend.docker.bottle_plan import (
    CA_BUNDLE,
    CA_CERT,
    GATEWAY_CA,
    LABEL_BOTTLE,
    LABEL_INSTANCE,
    LABEL_ROLE,
    LABEL_STATE,
    ROLE_AGENT,
    ROLE_BUNDLE,
    SOCKETS_DIR,
    UPSTREAM_CA,
    AgentSpec,
    BundleSpec,
    DockerBottlePlan,
    Mount,
)
from claude_bottle.backend.docker.network import SHARED_NETWORK
from claude_bottle.bottle_env import DEFAULT_PATH, GATEWAY_PORT, RELAY_PORT, CaFiles, build_env
from claude_bottle.config.model import Config
from claude_bottle.errors import ConfigError
from claude_bottle.host_secrets import grant_read_only
from claude_bottle.limits import format_size, plan_with

if TYPE_CHECKING:
    from claude_bottle.backend.docker.launch import DockerRecord

DISK = "a sized tmpfs at each of /tmp and /var/tmp"
LIMIT_NOTES = ("what the bottle writes to its tmpfs counts toward its memory",)

BUNDLE_NOTE = (
    f"the host-process bundle runs in its own cgroup (memory "
    f"{format_size(cgroups.BUNDLE_MEMORY)}, pids {cgroups.BUNDLE_PIDS}) where the host has one"
)

IMAGE_CA_STORE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's + the host's extra CAs
MIN_API = (1, 41)  # Docker Engine 20.10


def state_label() -> str:
    """Names the state root, so one user's cleanup never touches another's bottles."""
    root = str(paths.state_root().resolve())
    return hashlib.sha256(root.encode()).hexdigest()[:12]


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def needs_host_network(config: Config) -> bool:
    """Whether the bundle must share the host's network: only there is the host's loopback.

    True when an `[egress.resolve]` pin, the gateway's upstream or an ssh remote (which
    no pin applies to) names a loopback address (local test servers, a local model
    gateway); the agent container is on `--network none` either way.
    """
    upstream = urlsplit(config.gateway.anthropic_upstream).hostname or ""
    ssh_hosts: list[str] = []
    if config.git_remotes:  # its module imports asyncio: only when there is a remote
        from claude_bottle.bundle.git_upstream import is_ssh, upstream_host

        ssh_hosts = [upstream_host(r.url)[0] for r in config.git_remotes if is_ssh(r.url)]
    return any(host == "localhost" or _loopback(host) for host in (upstream, *ssh_hosts)) or any(
        _loopback(p.address) for p in config.egress.resolve
    )


LOCAL_ENGINE_SOCKETS = ("", "unix:///var/run/docker.sock", "unix:///run/docker.sock")
ENGINE_PID_FILES = (Path("/run/docker.pid"), Path("/var/run/docker.pid"))


def _engine_mounts_problem() -> str | None:
    """Why the engine would not see a mount this process makes (the home image is mounted
    on the host and bound into the agent container): a remote or rootless engine, or one
    in another mount namespace, would bind the empty directory under it instead."""
    if os.environ.get("DOCKER_HOST", "") not in LOCAL_ENGINE_SOCKETS or os.environ.get(
        "DOCKER_CONTEXT"
    ):
        return "the docker engine is not the local one (DOCKER_HOST, DOCKER_CONTEXT)"
    for pid_file in ENGINE_PID_FILES:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if _same_mount_namespace(pid):
            return None
        break
    return "the docker engine does not share this process's mounts (another mount namespace)"


def _same_mount_namespace(pid: int) -> bool:
    """Whether process `pid` is in this process's mount namespace. Root compares the
    namespaces; a user may not read root's, so it compares the id of the mount at `/`
    in both mount tables (each namespace's copy of a mount has an id of its own)."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino
    except PermissionError:
        pass
    except OSError:
        return False
    try:
        theirs, ours = (_root_mount_id(Path(f"/proc/{who}/mountinfo")) for who in (pid, "self"))
    except OSError:
        return False
    return theirs is not None and theirs == ours


def _root_mount_id(mountinfo: Path) -> str | None:
    """The id of the last mount at `/` (the one in view) in a mount table."""
    found = None
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            found = fields[0]
    return found


def _bundle_cgroup(name: str, config: Config) -> cgroups.BottleCgroup | None:
    """A host-process bundle's own cgroup, as the namespace backend's bundle has: beside
    where a namespace bottle's cgroup would be (the agent's is the engine's)."""
    host = cgroups.detect()
    bottle = cgroups.for_bottle(
        host, cgroups.group_name(name, paths.state_root()), config.bottle.limits
    )
    return None if bottle is None else cgroups.for_bundle(bottle)


def _unreadable_inputs(exc: OSError) -> ConfigError:
    return ConfigError(
        f"cannot read the image build inputs: {exc}",
        "check CLAUDE_BOTTLE_EXTRA_CA (a PEM file) and the installation",
    )


def _api(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return (0,)


def _image_env(intercept: bool) -> dict[str, str]:
    """What differs from the host's environment because the bottle runs the image's files.

    PATH names the image's directories. With TLS interception the trust store that holds
    the bottle's CA is published by the bundle in the sockets volume (the image's own store
    cannot be replaced in a read-only root), and `build_env` points every TLS client there.
    """
    env = {"PATH": DEFAULT_PATH}
    if not intercept:
        env["NODE_EXTRA_CA_CERTS"] = IMAGE_CA_STORE
    return env


@dataclasses.dataclass(frozen=True)
class CredentialAccess:
    """How the bundle container reaches the credential `[credentials] anthropic` names."""

    spec: str  # the spec as the bundle sees it
    mounts: tuple[Mount, ...]
    env: tuple[tuple[str, str], ...]  # plain settings for the bundle's environment


def credential_access(spec: str, home: str, host_env: Mapping[str, str]) -> CredentialAccess:
    """A host-process bundle reads the credential where it is; a container cannot.

    env:NAME, file:PATH  read by the CLI at start and handed over the control socket
              (`docker/handover.py`): the container's spec is `handed`;
    keychain  Claude Code's credential dir is bound read-write (refreshed tokens are
              written back) and named by CLAUDE_CONFIG_DIR.
    """
    from claude_bottle.backend.docker.handover import HANDED, handed_source

    if handed_source(spec):
        return CredentialAccess(HANDED, (), ())
    if spec == "keychain":
        configured = host_env.get("CLAUDE_CONFIG_DIR")
        directory = Path(configured) if configured else Path(home) / ".claude"
        directory = Path(os.path.abspath(os.path.expanduser(directory)))
        mounts = (Mount("bind", str(directory), str(directory)),) if directory.is_dir() else ()
        return CredentialAccess(spec, mounts, (("CLAUDE_CONFIG_DIR", str(directory)),))
    return CredentialAccess(spec, (), ())  # the bundle reports the bad spec itself


class DockerBackend(BottleBackend):
    name = "docker"
    description = (
        "Docker containers: agent with --network none; bundle a host process or a container"
    )
    launch_modules = (
        "claude_bottle.backend.docker.bottle",
        "claude_bottle.backend.docker.handover",
        "claude_bottle.backend.docker.host_bundle",
        "claude_bottle.backend.docker.launch",
        "claude_bottle.bundle.credentials",
        "claude_bottle.policy.seccomp",
    )

    def limits_report(self) -> list[str]:
        return [
            "the engine applies memory, pids and cpus to the agent container; disk sizes its tmpfs",
            home_image.doctor_line(_engine_mounts_problem(), for_root=True),
        ]

    # --- preflight ------------------------------------------------------------

    def doctor_notes(self) -> list[str]:
        """Where `[docker] bundle = "auto"` puts the bundle on this engine, and why."""
        try:
            tag = images.agent_image().tag
        except OSError:
            return []
        found = placement.detect(tag, os.getuid(), os.getgid())
        return [f"bundle placement (auto): {found.kind}; {found.reason}"]

    def preflight(self) -> list[str]:
        """A missing client, a stopped daemon and an unusable engine, each with its fix."""
        if shutil.which(docker.DOCKER) is None:
            return [f"the docker client is not installed; fix: {docker.HINT_NOT_INSTALLED}"]
        try:
            info = docker.version()
        except docker.DockerError as exc:
            reason = exc.hint or docker.HINT_DAEMON
            if reason == docker.HINT_PERMISSION:
                return [f"no permission to use the Docker daemon ({exc.message}); fix: {reason}"]
            return [f"the Docker daemon is not reachable ({exc.message}); fix: {reason}"]
        server = info.get("Server") or {}
        problems = []
        if server.get("Os", "linux") != "linux":
            problems.append(
                f"the Docker engine runs {server.get('Os')} containers; fix: switch it to "
                "Linux containers"
            )
        api = str(server.get("ApiVersion") or server.get("APIVersion") or "0")
        if _api(api) < MIN_API:
            problems.append(
                f"the Docker engine is too old (API {api}, need 1.41 / Engine 20.10); fix: "
                "upgrade Docker"
            )
        host = os.environ.get("DOCKER_HOST", "")
        platform = str((server.get("Platform") or {}).get("Name", ""))
        if host and not host.startswith("unix://"):
            problems.append(
                f"the Docker engine is remote (DOCKER_HOST={host}); the bottle's sockets must "
                "be on this host; fix: use a local engine (unset DOCKER_HOST)"
            )
        elif "desktop" in platform.lower():
            problems.append(
                f"{platform} runs containers in a VM, where this host's unix sockets are not "
                "reachable; fix: use a native engine (docker.io / docker-ce) for now"
            )
        return problems

    # --- plan -----------------------------------------------------------------

    def plan(self, request: LaunchRequest) -> DockerBottlePlan:
        config = request.config
        if not request.command:
            raise ConfigError(
                "no command to run", "give one after --, e.g. claude-bottle run -- bash"
            )
        home = str(Path(os.path.expanduser("~")).resolve())
        workspace = str(request.workspace.resolve())
        for what, path in (("home", home), ("workspace", workspace)):
            if any(c in path for c in ":\n"):
                raise ConfigError(
                    f"the {what} path {path!r} contains ':' or a newline; docker cannot mount it",
                    "use a path without them",
                )
        read_only = grant_read_only(config.bottle.read_only, Path(home))
        base = images.base_image(config.docker.base_image) if config.docker.base_image else None
        try:
            agent_image = images.agent_image(base=base)
        except OSError as exc:
            raise _unreadable_inputs(exc) from exc
        if base is not None and docker.image_inspect(agent_image.tag) is None:
            # Not built on this base yet: say now, not from inside, what the base lacks.
            images.check_base(base.ref)

        credential = credential_access(config.credentials.anthropic, home, os.environ)
        ca_mounts = tuple(
            Mount("bind", source, target, readonly=True)
            for source, target in (
                (config.egress.upstream_ca_file, UPSTREAM_CA),
                (config.gateway.upstream_ca_file, GATEWAY_CA),
            )
            if source
        )
        uid, gid = os.getuid(), os.getgid()
        instance = secrets.token_hex(3)
        prefix = f"claude-bottle-{request.name}-{instance}"
        chosen = placement.choose(config.docker.bundle, agent_image.tag, uid, gid)
        host_bundle = chosen.kind == placement.HOST
        volume = None if host_bundle else f"{prefix}-sockets"
        network = None if host_bundle or needs_host_network(config) else SHARED_NETWORK
        label = state_label()
        labels = (
            (LABEL_BOTTLE, request.name),
            (LABEL_INSTANCE, instance),
            (LABEL_STATE, label),
        )
        state_dir = paths.state_dir(request.name)
        runtime_dir = paths.runtime_dir(request.name)
        ssh = None
        if not host_bundle and config.git_remotes:
            from claude_bottle.backend.docker.git_ssh import ssh_access

            ssh = ssh_access(config.git_remotes, os.environ, runtime_dir / "ssh", uid, gid)
        intercept = config.egress.intercept
        env = build_env(
            os.environ,
            bottle=request.name,
            home=home,
            extra_names=config.bottle.env,
            ca=CaFiles(CA_BUNDLE, CA_CERT) if intercept else None,
        )
        env.update(_image_env(intercept))
        if base is not None and base.path:
            env["PATH"] = base.path  # the toolchain the user's image puts on PATH
        notes = (*LIMIT_NOTES, BUNDLE_NOTE) if host_bundle else LIMIT_NOTES
        disk, home_unbounded = home_image.disk_mechanism(
            DISK, _engine_mounts_problem(), for_root=True
        )
        limits = plan_with(
            config.bottle.limits,
            "docker (the agent container's cgroup)",
            disk,
            home_unbounded,
            notes,
        )
        sockets = (
            Mount("bind", str(runtime_dir / "bundle"), SOCKETS_DIR, readonly=True)
            if volume is None
            else Mount("volume", volume, SOCKETS_DIR, readonly=True)
        )
        agent = AgentSpec(
            container=f"{prefix}-agent",
            image=agent_image.tag,
            hostname=request.name[:63],
            user=f"{uid}:{gid}",
            uid=uid,
            gid=gid,
            workspace=workspace,
            home=home,
            home_source=str(state_dir / "home"),
            sockets=sockets,
            exec_dir=str(runtime_dir / "exec"),
            seccomp_profile=str(runtime_dir / "seccomp.json"),
            read_only=tuple(read_only),
            relay_port=RELAY_PORT,
            pids_limit=limits.pids,
            memory=str(limits.memory),
            labels=(*labels, (LABEL_ROLE, ROLE_AGENT)),
            base_image=base,
            cpus=limits.cpus,
            tmpfs_size=limits.disk,
        )
        try:  # its tag hashes ~90 files: only a bundle container needs it
            bundle_tag = None if volume is None else images.bundle_image().tag
        except OSError as exc:
            raise _unreadable_inputs(exc) from exc
        bundle = (
            None
            if volume is None or bundle_tag is None
            else BundleSpec(
                container=f"{prefix}-bundle",
                image=bundle_tag,
                user=f"{uid}:{gid}",
                network=network or "host",
                volume=volume,
                control_dir=str(runtime_dir / "control"),
                settings_file=str(runtime_dir / "bundle.json"),
                env=(("HOME", home), *credential.env, *(ssh.env if ssh else ())),
                state_dir=str(state_dir),
                mounts=(*ca_mounts, *credential.mounts, *(ssh.mounts if ssh else ())),
                labels=(*labels, (LABEL_ROLE, ROLE_BUNDLE)),
            )
        )
        common = common_plan_fields(
            self.name,
            request,
            state_dir=str(state_dir),
            runtime_dir=str(runtime_dir),
            env=env,
            relay_port=RELAY_PORT,
            limits=limits,
        )
        agent = dataclasses.replace(agent, guard_mounts=common["workspace_guard"].mounts)
        return DockerBottlePlan(
            **common,
            detach=request.detach,
            gateway_port=GATEWAY_PORT,
            bundle_credential=credential.spec,
            instance=instance,
            state_label=label,
            network=network,
            volume=volume,
            agent=agent,
            bundle=bundle,
            placement=chosen.kind,
            placement_reason=chosen.reason,
            bundle_cgroup=_bundle_cgroup(request.name, config) if host_bundle else None,
            home_image=None if home_unbounded else str(home_image.image_of(state_dir / "home")),
            bundle_files=ssh.files if ssh else (),
        )

    # --- launch ---------------------------------------------------------------

    def start(self, plan: BottlePlan, stack: contextlib.ExitStack) -> Launched:
        from claude_bottle.backend.docker import launch

        assert isinstance(plan, DockerBottlePlan)
        bottle, watchdog = launch.start(plan, stack, preflight=self.preflight)
        return Launched(bottle, on_detach=lambda: watchdog.release("detach"))

    def record_fields(self) -> type[DockerRecord]:
        from claude_bottle.backend.docker.launch import DockerRecord

        return DockerRecord

    def attach(self, record: StoredBottle) -> Bottle:
        from claude_bottle.backend.docker.bottle import DockerBottle
        from claude_bottle.backend.docker.launch import DockerRecord

        common, own = record.bottle, record.own
        assert isinstance(own, DockerRecord)
        return DockerBottle(
            common.name,
            exec_socket=Path(own.exec_socket),
            env=common.env,
            workspace=common.workspace,
            processes=common.processes,
            containers=own.containers,
        )

    def stop(self, record: StoredBottle) -> None:
        from claude_bottle.backend.docker import launch

        name = record.bottle.name
        problems = launch.remove_by_labels({LABEL_BOTTLE: name, LABEL_STATE: state_label()})
        _stop_host_bundle(record)
        with contextlib.suppress(ConfigError):  # a start killed before it detached the home
            home_image.detach(paths.state_dir(name) / "home")
        paths.remove_runtime_dir(name, record.bottle.runtime_dir)
        if problems:
            print(f"claude-bottle: {'; '.join(problems)}", file=sys.stderr)

    # --- cleanup --------------------------------------------------------------

    def cleanup_plan(self, live_names: set[str], *, images: bool = False) -> CleanupPlan:
        from claude_bottle.backend.docker import cleanup

        return cleanup.plan(self.name, live_names, images=images)

    def cleanup(self, plan: CleanupPlan) -> list[str]:
        from claude_bottle.backend.docker import cleanup

        return cleanup.run(plan)


def _stop_host_bundle(record: StoredBottle) -> None:
    """A host-process bundle (host placement) gets SIGTERM, so it writes its last audit
    record; its cgroup goes once it has stopped."""
    from claude_bottle.backend.docker.launch import DockerRecord

    own = record.own
    assert isinstance(own, DockerRecord)
    bundle = record.bottle.processes.get("bundle")
    if own.placement != placement.HOST or bundle is None:
        return
    state.signal_process(bundle, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while state.process_alive(bundle) and time.monotonic() < deadline:
        time.sleep(0.02)
    state.signal_process(bundle, signal.SIGKILL)
    group = cgroups.from_record(own.bundle_cgroup)
    if group is not None:
        cgroups.remove(group)


def image_build(rebuild: bool = False, base_image: str | None = None) -> list[str]:
    """Build (or refresh) the agent and bundle images; their tags. For scripts that set up
    a machine (scripts/test.sh); the CLI reaches the images through the registry."""
    return images.DockerImages().build(rebuild=rebuild, base_ref=base_image)
