"""Launch and tear down a docker bottle: all-or-nothing, every resource labelled.

Order: runtime dir → watchdog → at once: preflight ‖ sockets volume ‖ bridge
network; the bundle container once both exist, the agent container once the
volume does, a missing image built on the way → both ready (each container's
process 1 is the one listening on its socket). Whatever was created is removed in one
teardown (bundle stopped gracefully so its audit log ends with `bundle-stop`,
both containers removed in one call, then network and volume side by side),
both when launch fails half-way and when the bottle ends.

The watchdog covers the one case an ExitStack cannot: the CLI killed with
SIGKILL. It is a `sh` blocked reading a pipe whose only writer is the CLI;
the CLI writes `done` after its own teardown or `detach` when the bottle is
meant to outlive it. EOF without either word means the CLI died, and the
watchdog removes every resource carrying the launch's labels.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from claude_bottle import cgroups, home_image, paths, state
from claude_bottle.backend.base import BottleRecord, BundlePlaces
from claude_bottle.backend.docker import docker, images, network
from claude_bottle.backend.docker.bottle import DockerBottle
from claude_bottle.backend.docker.bottle_plan import (
    BUNDLE_STATE,
    CA_BUNDLE,
    CA_CERT,
    CONTROL_DIR,
    GATEWAY_CA,
    LABEL_ROLE,
    ROLE_BUNDLE,
    SOCKETS_DIR,
    UPSTREAM_CA,
    DockerBottlePlan,
    agent_command,
    agent_run_args,
    bundle_command,
    bundle_run_args,
    sockets_volume_options,
)
from claude_bottle.background import Background
from claude_bottle.bottle_env import HOOK_PORT
from claude_bottle.bundle import control
from claude_bottle.bundle.settings import BundleSettings
from claude_bottle.claude_home import ToolHook
from claude_bottle.errors import BottleError, ConfigError, LaunchError, MissingDependency

if TYPE_CHECKING:  # the handover is a bundle container's: imported when one starts
    from claude_bottle.backend.docker.handover import Handover

READY_TIMEOUT = 30.0
BUNDLE_STOP_TIMEOUT = 5


class DockerRecord(NamedTuple):
    """A docker bottle's own fields in its record (`BottleRecord`)."""

    placement: str  # where its bundle ran: host or container
    containers: dict[str, str]  # role -> container name
    network: str | None
    volume: str | None
    labels: dict[str, str]  # the launch's labels: `cleanup` tells its launches apart
    exec_socket: str
    bundle_cgroup: dict[str, object] | None  # a host bundle's (`cgroups.record_of`)


# --- running things side by side ------------------------------------------------------


def parallel(*calls: Callable[[], object]) -> list[BaseException]:
    """Run the calls in threads; the exceptions they raised (empty when all succeeded)."""
    errors: list[BaseException] = []

    def wrap(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:  # reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(c,), daemon=True) for c in calls[1:]]
    for thread in threads:
        thread.start()
    if calls:
        wrap(calls[0])
    for thread in threads:
        thread.join()
    return errors


# --- teardown -------------------------------------------------------------------------


def _gone(line: str) -> bool:
    """A line of the engine's complaint that means the object is already (being) removed."""
    text = line.lower()
    return "no such" in text or "not found" in text or "in progress" in text


def _tolerant(call: Callable[[], None], what: str, problems: list[str]) -> None:
    try:
        call()
    except docker.DockerError as exc:
        lines = [line for line in exc.stderr.splitlines() if line.strip()] or [exc.message]
        if not all(_gone(line) or line.upper().startswith("WARNING") for line in lines):
            problems.append(f"could not remove {what}: {exc.message}")


def teardown(
    *,
    agents: Iterable[str] = (),
    bundles: Iterable[str] = (),
    stopped: Iterable[str] = (),
    networks: Iterable[str] = (),
    volumes: Iterable[str] = (),
) -> list[str]:
    """Remove containers, then networks and volumes; the problems (empty when all went).

    A bundle gets SIGTERM (`docker stop`) so its audit log ends with its `bundle-stop`
    record, unless it is in `stopped` (it already wrote it); meanwhile the agents and the
    stopped bundles are removed (agents killed) in one call. Networks and volumes go
    side by side once the containers are gone. Anything already gone counts as removed.
    """
    problems: list[str] = []
    bundle_list = list(bundles)

    def removal(
        remove: Callable[[list[str]], None], kind: str, names: list[str]
    ) -> Callable[[], None]:
        def run() -> None:
            if names:
                what = f"{kind} {', '.join(names)}"
                _tolerant(functools.partial(remove, names), what, problems)

        return run

    def stop_bundles() -> None:
        for name in bundle_list:
            graceful = functools.partial(docker.stop, [name], timeout=BUNDLE_STOP_TIMEOUT)
            _tolerant(graceful, f"container {name}", problems)

    parallel(stop_bundles, removal(docker.rm, "container", [*agents, *stopped]))
    removal(docker.rm, "container", bundle_list)()
    parallel(
        removal(docker.network_rm, "network", list(networks)),
        removal(docker.volume_rm, "volume", list(volumes)),
    )
    return problems


def find_resources(labels: Mapping[str, str]) -> dict[str, list[str]]:
    """Every container, network and volume carrying all these labels, by kind."""
    found: dict[str, list[str]] = {"agents": [], "bundles": [], "networks": [], "volumes": []}
    for row in docker.ps(labels):
        role = docker.parse_labels(row.get("Labels")).get(LABEL_ROLE)
        found["bundles" if role == ROLE_BUNDLE else "agents"].append(str(row.get("Names")))
    found["networks"] = [str(row.get("Name")) for row in docker.network_ls(labels)]
    found["volumes"] = [str(row.get("Name")) for row in docker.volume_ls(labels)]
    return found


def remove_by_labels(labels: Mapping[str, str]) -> list[str]:
    found = find_resources(labels)
    return teardown(
        agents=found["agents"],
        bundles=found["bundles"],
        networks=found["networks"],
        volumes=found["volumes"],
    )


class Watchdog:
    """Removes the launch's resources if the CLI dies without saying `done` or `detach`."""

    SCRIPT = (
        'read -r word; case "$word" in done|detach) exit 0;; esac; '
        'exec "$0" -m claude_bottle.backend.docker.launch --teardown "$@"'
    )

    def __init__(self, process: subprocess.Popen[bytes] | None) -> None:
        self.process = process

    @classmethod
    def spawn(
        cls,
        labels: Mapping[str, str],
        log: Path,
        python: str = sys.executable,
        runtime_dir: Path | None = None,
    ) -> Watchdog:
        """`runtime_dir`: removed too, as the CLI's own teardown would have (a `cleanup`
        run before the watchdog acted saw a live bottle and left it)."""
        extra = [str(runtime_dir)] if runtime_dir is not None else []
        with log.open("ab") as out:
            process = subprocess.Popen(
                ["/bin/sh", "-c", cls.SCRIPT, python, json.dumps(dict(labels)), *extra],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        return cls(process)

    def release(self, word: str = "done") -> None:
        process, self.process = self.process, None
        if process is None or process.stdin is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.write(word.encode() + b"\n")
            process.stdin.flush()
        with contextlib.suppress(OSError):
            process.stdin.close()
        state.wait_child(process, 1)


# --- launch ---------------------------------------------------------------------------


class _Created:
    """What this launch has created so far, for one teardown in reverse order."""

    def __init__(self) -> None:
        self.agents: list[str] = []
        self.bundles: list[str] = []
        self.networks: list[str] = []
        self.volumes: list[str] = []
        self.control_socket: Path | None = None  # set once the bundle answers
        self.audit_log: Path | None = None

    def _stop_bundle(self) -> bool:
        """Ask the bundle to stop; True once its last audit record (`bundle-stop`) is written."""
        if self.control_socket is None or self.audit_log is None:
            return False
        try:
            control.call(self.control_socket, "stop", timeout=2)
        except BottleError:
            return False
        deadline = time.monotonic() + BUNDLE_STOP_TIMEOUT
        while not _ends_with_bundle_stop(self.audit_log):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def remove(self) -> None:
        stopped = self._stop_bundle()
        problems = teardown(
            agents=self.agents,
            bundles=[] if stopped else self.bundles,
            stopped=self.bundles if stopped else [],
            networks=self.networks,
            volumes=self.volumes,
        )
        if problems:
            print(f"claude-bottle: {'; '.join(problems)}", file=sys.stderr)


def _ends_with_bundle_stop(audit_log: Path) -> bool:
    try:
        with audit_log.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            tail = handle.read()
    except OSError:
        return False
    if not tail.endswith(b"\n"):
        return False  # a record is being written
    try:
        last = json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    except ValueError:
        return False
    return isinstance(last, dict) and last.get("rule") == "bundle-stop"


def _build(tag: str, base: images.BaseImage | None) -> None:
    """Build the image `tag` names (agent or bundle), from the inputs it was tagged by."""
    for spec in (images.agent_image(base=base), images.bundle_image()):
        if spec.repo == tag.partition(":")[0]:
            if spec.tag != tag:
                raise LaunchError(
                    f"the image inputs changed since this plan was made ({tag} -> {spec.tag})",
                    "run the command again",
                )
            images.ensure(spec)
            return
    raise LaunchError(f"no recipe for image {tag}")


PROCESS_MARKERS = {"bundle": "claude_bottle.bundle.server", "bottle": "relay.py"}


def _host_pid(pid: int, marker: str) -> dict[str, int] | None:
    """A container's process 1 as a host process ref, when the engine runs on this host."""
    if pid <= 0:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if marker.encode() not in cmdline:
        return None  # a remote engine or a VM: that pid is not ours
    return state.process_ref(pid)


def _listener_pid(path: Path) -> int:
    """The pid of the process listening on a unix socket, in this host's pid namespace
    (SO_PEERCRED: the kernel translates it; 0 when that process is not visible here).

    Both sockets are created by their container's process 1, so this is what
    `docker inspect` would say, without a docker client run."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(path))
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def _settings(plan: DockerBottlePlan) -> BundleSettings:
    from claude_bottle.backend.docker.handover import HANDED

    return plan.bundle_settings(
        BundlePlaces(
            proxy_socket=f"{SOCKETS_DIR}/proxy.sock",
            control_socket=f"{CONTROL_DIR}/control.sock",
            gateway_socket=f"{SOCKETS_DIR}/gateway.sock",
            audit_log=f"{BUNDLE_STATE}/audit.jsonl",
            ca_cert=CA_CERT,
            ca_bundle=CA_BUNDLE if plan.egress_intercept else None,
            upstream_ca_file=UPSTREAM_CA if plan.upstream_ca_file else None,
            gateway_ca_file=GATEWAY_CA if plan.gateway_ca_file else None,
            anthropic_credential=plan.bundle_credential,
            git_socket=f"{SOCKETS_DIR}/git.sock" if plan.git_remotes else None,
            hook_socket=f"{SOCKETS_DIR}/hook.sock",
        ),
        # The CLI hands the bundle container each injected secret (`docker/handover.py`).
        injections=tuple(injection._replace(secret=HANDED) for injection in plan.injections),
        handed_secrets=True,
        **_git_gate_settings(plan),
    )


def _git_gate_settings(plan: DockerBottlePlan) -> dict[str, Any]:
    """The git gate as the bundle container sees it, where that differs from the host: its
    mirrors in the bottle's state dir, each credential handed over the control socket at
    start (`git_credentials.py`)."""
    if not plan.git_remotes:
        return {}
    from claude_bottle.backend.docker.git_credentials import container_remotes

    return {
        "git_cache": f"{BUNDLE_STATE}/git",
        "git_remotes": container_remotes(plan.git_gate_settings()["git_remotes"]),
    }


def _write_seccomp_profile(path: Path, nested_sandbox: bool) -> None:
    """The agent container's seccomp profile: the same rules bubblewrap loads."""
    from claude_bottle.policy.seccomp import SeccompUnavailable, docker_profile

    try:
        profile = docker_profile(nested_sandbox)
    except SeccompUnavailable as exc:
        raise MissingDependency(str(exc)) from None
    path.write_text(json.dumps(profile))


def start(
    plan: DockerBottlePlan,
    stack: contextlib.ExitStack,
    preflight: Callable[[], list[str]] = list,
) -> tuple[DockerBottle, Watchdog]:
    state_dir = paths.make_private_dir(Path(plan.state_dir))
    runtime = paths.claim_runtime_dir(plan.name, Path(plan.runtime_dir))
    stack.callback(shutil.rmtree, runtime, True)
    for sub in ("exec", "control"):
        (runtime / sub).mkdir(mode=0o700)
    home = paths.make_private_dir(Path(plan.agent.home_source))
    mounting = _mount_home_meanwhile(plan, home, stack)
    (state_dir / "plan.json").write_text(plan.to_json() + "\n")
    _write_seccomp_profile(Path(plan.agent.seccomp_profile), plan.nested_sandbox)

    handover = None
    if plan.bundle is not None:  # every secret read here, before anything runs
        from claude_bottle.backend.docker.handover import resolve

        _settings(plan).dump(runtime / "bundle.json")
        for path, text in plan.bundle_files:
            Path(path).parent.mkdir(mode=0o700, exist_ok=True)
            Path(path).write_text(text)
        handover = resolve(
            plan.injections, plan.anthropic_credential, os.environ, Path(plan.agent.home)
        )

    labels = plan.labels()
    watchdog = Watchdog.spawn(labels, state_dir / "docker.log", runtime_dir=runtime)
    stack.callback(watchdog.release, "done")  # last out: after the teardown below
    created = _Created()
    stack.callback(created.remove)
    if plan.bundle is None:
        processes = _start_with_host_bundle(
            plan, stack, runtime, state_dir, preflight, _HomeMount(plan, home, mounting)
        )
    else:

        def home_ready() -> None:
            if mounting is not None:
                mounting.join()
            plan.seed_home(home, Path(plan.agent.home), ToolHook("python3", HOOK_PORT))

        assert handover is not None
        processes = _start_with_bundle_container(
            plan, runtime, state_dir, created, preflight, handover, home_ready
        )
    if plan.home_image is not None:
        home_image.detach(home)  # the agent container holds its own mount of it from here on
    containers = {"bottle": plan.agent.container}
    if plan.bundle is not None:
        containers["bundle"] = plan.bundle.container
    exec_socket = runtime / "exec" / "exec.sock"
    BottleRecord.launched(
        plan,
        detached=plan.detach,
        processes=processes,
        runtime_dir=runtime,
        control_socket=str(runtime / "control" / "control.sock"),
    ).write(
        DockerRecord(
            placement=plan.placement,
            containers=containers,
            network=plan.network,
            volume=plan.volume,
            labels=labels,
            exec_socket=str(exec_socket),
            bundle_cgroup=cgroups.record_of(plan.bundle_cgroup),
        )
    )
    bottle = DockerBottle(
        plan.name,
        exec_socket=exec_socket,
        env=plan.env,
        workspace=plan.workspace,
        processes=processes,
        containers=containers,
    )
    return bottle, watchdog


def _mount_home_meanwhile(
    plan: DockerBottlePlan, home: Path, stack: contextlib.ExitStack
) -> Background | None:
    """The home image made (mkfs, or checked) and mounted in a thread, while this one
    writes the plan and the seccomp profile and spawns the watchdog: the image's tools
    took 30-65 ms of every start. Joined before anything needs the mount (the seeding,
    the container), and by the teardown before it detaches the home."""
    if plan.home_image is None:
        return None
    size = plan.limits.disk
    stack.callback(home_image.detach, home)

    def mount() -> None:
        home_image.detach(home)  # left by a start that was killed before it detached
        # As a user, through fuse2fs, open to root: the engine binds it into the container.
        home_image.mount(home_image.prepare(home, size), home, for_root=True)

    mounting = Background(mount)
    # A launch that fails meanwhile must not detach before the thread has mounted.
    stack.callback(mounting.join, quietly=True)
    return mounting


class _HomeMount:
    """The bottle's home as a host bundle's start waits for it: mounted (when it is an
    image) and seeded, and seen as mounted by the agent container."""

    def __init__(self, plan: DockerBottlePlan, home: Path, mounting: Background | None) -> None:
        self.plan = plan
        self.home = home
        self.mounting = mounting

    def finish(self) -> None:
        """Wait for the mount, then seed the home (the container shares its filesystem)."""
        if self.mounting is not None:
            self.mounting.join()
            home_image.preload()  # for the detach that follows the relay's start
        self.plan.seed_home_files(
            self.home, Path(self.plan.agent.home), ToolHook("python3", HOOK_PORT)
        )

    def seen_by(self, relay: dict[str, int] | None) -> bool:
        """Whether the agent container's home is the image's filesystem. Its `docker run`
        raced the mount: a container whose mount namespace was made before the mount
        holds the empty mount point instead (and the bottle's home would be unbounded).
        Read from the relay's own mount table; False when it cannot be read."""
        if self.mounting is None:
            return True  # no image: the directory itself is the home
        if relay is None:
            return False
        return home_image.mounted_in(relay["pid"], self.plan.agent.home, self.home)


def _start_with_host_bundle(
    plan: DockerBottlePlan,
    stack: contextlib.ExitStack,
    runtime: Path,
    state_dir: Path,
    preflight: Callable[[], list[str]],
    home: _HomeMount,
) -> dict[str, dict[str, int]]:
    """The bundle as a host process beside the agent container (host placement).

    The container is started first, before its home image is mounted (mkfs and mount,
    15-25 ms) and seeded, which happen while the engine starts it (~200 ms). The workspace
    guard's .git, which the container binds, is made before. Once the relay serves,
    its mount table must show the image at the home; a container that was quicker than
    the mount is removed and run again, now after it: the command runs in neither
    before that check."""
    from claude_bottle.backend.docker.host_bundle import HostBundleLaunch

    launch = HostBundleLaunch(plan, runtime, state_dir)
    stack.callback(launch.remove)
    plan.prepare_workspace_guard()
    launch.run_agent()
    bundle_ready = launch.start_bundle()
    home.finish()
    build = functools.partial(_build_from, plan)
    launch.wait_for_relay(build, preflight)
    exec_socket = runtime / "exec" / "exec.sock"
    launch.relay = _relay_ref(exec_socket)
    if not home.seen_by(launch.relay):
        launch.rerun_agent()
        launch.wait_for_relay(build, preflight)
        launch.relay = _relay_ref(exec_socket)
        if not home.seen_by(launch.relay):
            raise LaunchError(
                "the agent container does not show the bottle's home image at its home",
                "the docker engine must share this host's mounts; see claude-bottle doctor",
            )
    processes = {"bundle": state.process_ref(bundle_ready().pid)}
    if launch.relay is not None:
        processes["bottle"] = launch.relay
    return processes


def _build_from(plan: DockerBottlePlan, tag: str) -> None:
    _build(tag, plan.agent.base_image)


def _relay_ref(exec_socket: Path) -> dict[str, int] | None:
    """The agent container's process 1 (its relay) as a host process ref, from the exec
    socket it listens on; None when it is not a process of this host."""
    try:
        return _host_pid(_listener_pid(exec_socket), PROCESS_MARKERS["bottle"])
    except OSError:
        return None


def _start_with_bundle_container(
    plan: DockerBottlePlan,
    runtime: Path,
    state_dir: Path,
    created: _Created,
    preflight: Callable[[], list[str]],
    handover: Handover,
    home_ready: Callable[[], None],
) -> dict[str, dict[str, int]]:
    """The bundle in a container beside the agent container (container placement). The
    home is made ready (`home_ready`: mounted, seeded) while the engine makes the volume
    and starts the bundle: only the agent container needs it."""
    assert plan.bundle is not None and plan.volume is not None
    bundle_spec, volume_name = plan.bundle, plan.volume
    labels = plan.labels()

    # Everything at once: the engine check, the volume, the network, and each container as
    # soon as what it mounts exists (the agent needs only the volume). A run whose image is
    # missing fails at once (--pull never); the image is built, and the run tried again.
    volume_done = threading.Event()
    building = threading.Lock()
    containers = {"bundle": bundle_spec.container, "bottle": plan.agent.container}

    def run(role: str) -> None:
        if role == "bundle":
            image, args, command = bundle_spec.image, bundle_run_args(bundle_spec), bundle_command()
        else:
            image, args = plan.agent.image, agent_run_args(plan.agent)
            command = agent_command(plan.relay_port, plan.gateway_port)
        # Listed first: a `docker run -d` that fails to start the container leaves it
        # created, and the teardown must remove it (a missing one counts as removed).
        (created.bundles if role == "bundle" else created.agents).append(containers[role])
        try:
            docker.run(args, image, command)
        except docker.DockerError as exc:
            if network.vanished(exc):  # `cleanup` removed the shared network just now
                network.ensure()
            elif "no such image" in exc.stderr.lower():
                with building:
                    _build(image, plan.agent.base_image)
            else:
                raise
            with contextlib.suppress(docker.DockerError):
                docker.rm([containers[role]])  # what the failed run left, so the name is free
            docker.run(args, image, command)

    def volume() -> None:
        try:
            docker.volume_create(
                volume_name,
                labels={**labels, LABEL_ROLE: "sockets"},
                options=sockets_volume_options(plan.agent.uid, plan.agent.gid),
            )
            created.volumes.append(volume_name)
        finally:
            volume_done.set()

    def check_network() -> None:
        # The engine's shared network, kept (never in `created`): made on first use and
        # checked to be ours beside the containers' start, not before it. Until the check
        # fails the launch, a bundle on a foreign network exposes nothing: it listens on
        # unix sockets only. A bundle run that finds no network makes it and runs again.
        if plan.network:
            network.ensure()

    def bundle_chain() -> None:
        volume_done.wait()
        if volume_name in created.volumes:  # otherwise the volume's own error says why
            run("bundle")

    def agent_chain() -> None:
        home_ready()
        volume_done.wait()
        if volume_name in created.volumes:
            run("bottle")

    errors = parallel(volume, check_network, bundle_chain, agent_chain)
    if errors:
        # The engine is asked what is wrong (`docker version`) only now: a check on every
        # start would cost a docker client run.
        problems = preflight()
        if problems:
            raise MissingDependency("; ".join(problems))
    _raise_first(errors)
    exec_socket = runtime / "exec" / "exec.sock"
    control_socket = runtime / "control" / "control.sock"
    processes = _wait_ready(exec_socket, control_socket, containers)
    created.control_socket = control_socket
    created.audit_log = state_dir / "audit.jsonl"
    # Before the bottle's command runs (the bundle serves nothing that needs them before).
    from claude_bottle.backend.docker.handover import hand_secrets

    hand_secrets(handover, control_socket)
    if plan.git_remotes:  # before the bottle's command runs: its first clone needs them
        from claude_bottle.backend.docker.git_credentials import hand_credentials

        remotes = plan.git_gate_settings()["git_remotes"]
        hand_credentials(remotes, control_socket, os.environ)
    return processes


def _raise_first(errors: list[BaseException]) -> None:
    if not errors:
        return
    error = errors[0]
    if isinstance(error, (MissingDependency, ConfigError)):  # exit 3 and 2, as they are
        raise error
    if isinstance(error, BottleError):
        raise LaunchError(f"the bottle did not start: {error.message}", error.hint) from error
    raise error


def _wait_ready(
    exec_socket: Path, control_socket: Path, containers: Mapping[str, str]
) -> dict[str, dict[str, int]]:
    """Until the relay serves exec and the bundle answers; fail fast if a container died.

    Returns each container's process 1 as a host process ref (liveness, the kill switch),
    taken from the socket it listens on; a container whose process is not visible here is
    missing (the engine is asked instead).
    """
    started = time.monotonic()
    deadline = started + READY_TIMEOUT
    next_engine_check = started + 0.5
    processes: dict[str, dict[str, int]] = {}
    ready: set[str] = set()
    while True:
        if "bundle" not in ready and control_socket.exists():
            with contextlib.suppress(BottleError):
                if control.call(control_socket, "ping", timeout=2).get("ok"):
                    ready.add("bundle")
        if "bundle" in ready and "bottle" not in ready and exec_socket.exists():
            ready.add("bottle")
        if len(ready) == 2:
            for role, path in (("bundle", control_socket), ("bottle", exec_socket)):
                with contextlib.suppress(OSError):
                    ref = _host_pid(_listener_pid(path), PROCESS_MARKERS[role])
                    if ref is not None:
                        processes[role] = ref
            return processes
        now = time.monotonic()
        if now >= next_engine_check:
            next_engine_check = now + 0.5
            running = {
                str(info.get("Name", "")).lstrip("/")
                for info in docker.inspect_all(containers.values())
                if info.get("State", {}).get("Running")
            }
            for role, container in containers.items():
                if container not in running:
                    _died(role, container)
        if now > deadline:
            missing = "the bundle" if "bundle" not in ready else "the agent container's relay"
            raise LaunchError(
                f"the bottle did not become ready within {READY_TIMEOUT:.0f}s ({missing})",
                "the docker backend needs an engine on this host that shares its file system "
                "(unix sockets in bind mounts); see docker logs of the bottle's containers",
            )
        time.sleep(0.005)


def _died(role: str, container: str) -> None:
    what = "bundle" if role == "bundle" else "agent"
    output = docker.logs(container, tail=5).replace("\n", " | ") or "no output"
    raise LaunchError(
        f"the {what} container exited while starting: {output}",
        f"see `docker logs {container}`",
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m claude_bottle.backend.docker.launch --teardown LABELS_JSON [RUNTIME_DIR]`
    (the watchdog)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or args[0] != "--teardown":
        print("usage: launch.py --teardown LABELS_JSON [RUNTIME_DIR]", file=sys.stderr)
        return 2
    labels = json.loads(args[1])
    if not isinstance(labels, dict) or not labels:
        print("launch.py: refusing to tear down without labels", file=sys.stderr)
        return 2
    problems = remove_by_labels({str(k): str(v) for k, v in labels.items()})
    if len(args) == 3:
        shutil.rmtree(args[2], ignore_errors=True)  # rmtree follows no symlink inside
    for problem in problems:
        print(f"claude-bottle watchdog: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
