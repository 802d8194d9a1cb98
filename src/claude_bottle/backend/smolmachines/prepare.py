"""Resolve a launch request into a plan, write the per-bottle stage, and pack the agent image.

`resolve_plan` is pure (it reads the environment, never writes). `write_stage` puts what
the guest mounts into the bottle's runtime dir. `ensure_agent_pack` turns the agent's
docker image into a `.smolmachine` once per image digest (docker save -> smolvm pack
create) and caches it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from claude_bottle import home_image, paths
from claude_bottle.backend import registry
from claude_bottle.backend.base import LaunchRequest, common_plan_fields
from claude_bottle.backend.smolmachines import smolvm
from claude_bottle.backend.smolmachines.bottle_plan import (
    GUEST_BUNDLE,
    GUEST_GATEWAY_SOCKET,
    GUEST_GIT_SOCKET,
    GUEST_HOME,
    GUEST_HOOK_SOCKET,
    GUEST_LIB,
    GUEST_PROXY_SOCKET,
    GUEST_READY_FILE,
    GUEST_SECCOMP_PROGRAMS,
    SmolmachinesBottlePlan,
)
from claude_bottle.backend.smolmachines.gvproxy_config import render_gvproxy_config
from claude_bottle.backend.smolmachines.util import bottle_subnet, machine_name
from claude_bottle.bottle_env import (
    DEFAULT_PATH,
    GATEWAY_PORT,
    GIT_PORT,
    HOOK_PORT,
    RELAY_PORT,
    CaFiles,
    build_env,
)
from claude_bottle.errors import ConfigError, LaunchError, MissingDependency
from claude_bottle.limits import plan_with

RELAY_SCRIPT = Path(__file__).resolve().parents[2] / "bundle" / "relay.py"
SECCOMP_EXEC = RELAY_SCRIPT.with_name("seccomp_exec.py")
IMAGE_ENV = "CLAUDE_BOTTLE_SMOLMACHINES_IMAGE"
NETWORK_ENV = "CLAUDE_BOTTLE_SMOLMACHINES_NETWORK"
DEFAULT_IMAGE = "claude-bottle-agent:latest"  # when the image's build inputs cannot be read
NETWORKS = ("none", "gvproxy")
PACK_SUFFIX = ".smolmachine"
# [bottle] disk sizes the VM's own writable disks (launch.machine_spec). The home is a host
# directory shared in with --volume, which no size of smolvm's reaches: the sized home
# image is mounted on that directory for the run, where this host allows it.
VM_DISKS = (
    "the microVM's storage and overlay disks, each that size rounded up to whole GiB "
    "(smolvm --storage, --overlay; the storage disk also holds the image's layers)"
)


def relay_command(python: str = "python3") -> tuple[str, ...]:
    """The machine's workload: the relay, serving the proxy, gateway and git gate ports until
    stopped (the git gate's socket is mounted only with [git.remotes]; without, a connection
    to its port just fails)."""
    return (
        python,
        "-I",
        "-S",
        f"{GUEST_LIB}/relay.py",
        "--listen",
        f"{RELAY_PORT}={GUEST_PROXY_SOCKET}",
        "--listen",
        f"{GATEWAY_PORT}={GUEST_GATEWAY_SOCKET}",
        "--listen",
        f"{GIT_PORT}={GUEST_GIT_SOCKET}",
        "--listen",
        f"{HOOK_PORT}={GUEST_HOOK_SOCKET}",
        "--ready-file",
        GUEST_READY_FILE,
        "--hold",
    )


def resolve_plan(
    backend: str, request: LaunchRequest, environ: Mapping[str, str] | None = None
) -> SmolmachinesBottlePlan:
    environ = os.environ if environ is None else environ
    if not request.command:
        raise ConfigError("no command to run", "give one after --, e.g. claude-bottle run -- bash")
    network = environ.get(NETWORK_ENV, "none") or "none"
    if network not in NETWORKS:
        raise ConfigError(
            f"{NETWORK_ENV}={network!r} is not a network mode of the smolmachines backend",
            f"use one of: {', '.join(NETWORKS)}",
        )
    config = request.config
    state_dir = paths.state_dir(request.name)
    runtime_dir = paths.runtime_dir(request.name)
    # A volume cannot cover the image's system trust store (one file), so the TLS clients
    # are pointed at the bundle's copy of it, which adds the bottle's CA.
    ca = CaFiles(f"{GUEST_BUNDLE}/ca-bundle.pem", f"{GUEST_BUNDLE}/ca.pem")
    env = build_env(
        environ,
        bottle=request.name,
        home=GUEST_HOME,
        extra_names=config.bottle.env,
        ca=ca if config.egress.intercept else None,
    )
    env["PATH"] = DEFAULT_PATH  # the host's PATH means nothing inside the VM
    subnet, gateway = bottle_subnet(request.name)
    disk, home_unbounded = home_image.disk_mechanism(VM_DISKS)
    common = common_plan_fields(
        backend,
        request,
        state_dir=str(state_dir),
        runtime_dir=str(runtime_dir),
        env=env,
        relay_port=RELAY_PORT,
        limits=plan_with(
            config.bottle.limits,
            "the microVM's memory and vCPUs",
            disk,
            home_unbounded,
            ("pids: the guest kernel's own; a fork bomb is bounded by the VM's memory and vCPUs",),
        ),
    )
    return SmolmachinesBottlePlan(
        **common,
        machine=machine_name(request.name),
        image=environ.get(IMAGE_ENV) or agent_image_tag(),
        network=network,
        subnet=subnet,
        gateway=gateway,
        home=GUEST_HOME,
        home_source=str(state_dir / "home"),
        user=f"{os.getuid()}:{os.getgid()}",
        detach=request.detach,
        relay_command=relay_command(),
        home_image=None if home_unbounded else str(home_image.image_of(state_dir / "home")),
    )


@dataclasses.dataclass(frozen=True)
class Stage:
    """Host-side files of one bottle, under its runtime dir."""

    root: Path
    proxy_socket: Path  # the bundle listens here; mounted into the guest
    gateway_socket: Path  # the bundle's API gateway; mounted into the guest
    git_socket: Path  # the bundle's git gate; mounted into the guest with [git.remotes]
    hook_socket: Path  # the bundle's tool-call hook channel; mounted into the guest
    control_socket: Path
    settings: Path  # bundle.json
    lib: Path  # mounted read-only at GUEST_LIB (relay.py)
    guest_state: Path  # mounted read-write at GUEST_STATE (the ready file)
    gvproxy_config: Path | None

    @property
    def ready_file(self) -> Path:
        return self.guest_state / Path(GUEST_READY_FILE).name

    @classmethod
    def at(cls, root: Path, network: str = "none") -> Stage:
        return cls(
            root=root,
            proxy_socket=root / "bundle" / "proxy.sock",
            gateway_socket=root / "bundle" / "gateway.sock",
            git_socket=root / "bundle" / "git.sock",
            hook_socket=root / "bundle" / "hook.sock",
            control_socket=root / "control.sock",
            settings=root / "bundle.json",
            lib=root / "lib",
            guest_state=root / "state",
            gvproxy_config=root / "gvproxy.yaml" if network == "gvproxy" else None,
        )


def write_stage(plan: SmolmachinesBottlePlan, root: Path) -> Stage:
    """Create the stage dirs and files under `root` (which must exist and be private)."""
    stage = Stage.at(root, plan.network)
    for directory in (stage.proxy_socket.parent, stage.lib, stage.guest_state):
        directory.mkdir(mode=0o755)
    for script in (RELAY_SCRIPT, SECCOMP_EXEC):
        shutil.copyfile(script, stage.lib / script.name)
        os.chmod(stage.lib / script.name, 0o644)
    # The guest runs this host's architecture: the filter is compiled here, loaded there.
    from claude_bottle.policy.seccomp import SeccompUnavailable, compile_bpf

    try:
        programs = compile_bpf(plan.nested_sandbox)
    except SeccompUnavailable as exc:
        raise MissingDependency(str(exc)) from None
    for name, program in zip(GUEST_SECCOMP_PROGRAMS, programs, strict=True):
        path = stage.lib / Path(name).name
        path.write_bytes(program)
        os.chmod(path, 0o644)
    if stage.gvproxy_config is not None:
        stage.gvproxy_config.write_text(
            render_gvproxy_config(
                plan.subnet,
                plan.gateway,
                {plan.relay_port: "egress proxy", GATEWAY_PORT: "api gateway"},
            )
        )
    return stage


# --- the agent image as a .smolmachine -------------------------------------------------


def agent_image_tag() -> str:
    """The content-tagged agent image (Node, Claude Code, git, python3) bottles run."""
    try:
        return registry.images().agent_tag()
    except OSError:
        return DEFAULT_IMAGE


def build_agent_image(image: str) -> None:
    """Build the agent image when `image` is its current tag and the engine lacks it."""
    registry.images().ensure_agent(image)


def docker_inspect_argv(docker: str, image: str) -> list[str]:
    return [docker, "image", "inspect", "--format", "{{.Id}}", image]


def docker_save_argv(docker: str, image: str, output: str) -> list[str]:
    return [docker, "save", "--output", output, image]


def pack_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("claude-bottle")) / "smolmachines"


def image_digest(image: str, docker: str = "docker") -> str:
    """The image's content digest (its config digest, `sha256:<hex>`) as docker reports it."""
    try:
        result = subprocess.run(
            docker_inspect_argv(docker, image),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(
            f"cannot ask docker about the agent image {image}: {exc}", "is docker running?"
        ) from exc
    digest = result.stdout.strip()
    if result.returncode != 0 or not digest.startswith("sha256:"):
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(
            f"the agent image {image} is not available in docker ({detail})",
            f"build it (claude-bottle image build) or set {IMAGE_ENV} to an image you have",
        )
    return digest


def ensure_agent_pack(
    image: str,
    smolvm_path: str,
    *,
    cache_dir: Path | None = None,
    docker: str = "docker",
) -> Path:
    """`<cache>/<digest>.smolmachine` for `image`, packing it first if it is not cached."""
    build_agent_image(image)
    key = image_digest(image, docker).partition(":")[2]
    cache = cache_dir or pack_cache_dir()
    target = cache / f"{key}{PACK_SUFFIX}"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".pack-") as tmp:
        archive = Path(tmp) / "image.tar"
        saved = subprocess.run(
            docker_save_argv(docker, image, str(archive)),
            capture_output=True,
            text=True,
            check=False,
        )
        if saved.returncode != 0:
            detail = (saved.stderr.strip().splitlines() or ["no output"])[-1]
            raise LaunchError(f"docker save {image} failed: {detail}", "is docker running?")
        stub = Path(tmp) / key  # pack create writes the stub here and <stub>.smolmachine
        try:
            smolvm.pack_create(smolvm_path, archive, stub)
        except smolvm.SmolvmError as exc:
            raise LaunchError(
                f"cannot pack the agent image {image}: {exc.message}", exc.hint
            ) from exc
        sidecar = stub.with_name(stub.name + PACK_SUFFIX)
        if not sidecar.is_file():
            raise LaunchError(
                f"smolvm pack create wrote no {sidecar.name}", "see `smolvm pack create --help`"
            )
        os.replace(sidecar, target)  # the stub executable is not needed: machines use --from
    return target
