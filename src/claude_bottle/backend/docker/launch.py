"""Launch and tear down a docker bottle: all-or-nothing, every resource labelled.

Order: runtime dir → images → watchdog → sockets volume → (bridge network →
bundle container ‖ agent container) → both ready. Whatever was created is
removed in one teardown (agent killed, bundle stopped gracefully so its audit
log ends with `bundle-stop`, then network and volume), both when launch fails
half-way and when the bottle ends.

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
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from claude_bottle import paths, state
from claude_bottle.backend.docker import docker, images
from claude_bottle.backend.docker.bottle import DockerBottle
from claude_bottle.backend.docker.bottle_plan import (
    BUNDLE_STATE,
    CA_BUNDLE,
    CA_CERT,
    CONTROL_DIR,
    LABEL_ROLE,
    SOCKETS_DIR,
    UPSTREAM_CA,
    DockerBottlePlan,
    agent_command,
    agent_run_args,
    bundle_command,
    bundle_run_args,
    sockets_volume_options,
)
from claude_bottle.bundle import control
from claude_bottle.bundle.settings import BundleSettings, Pin
from claude_bottle.errors import BottleError, LaunchError, MissingDependency

READY_TIMEOUT = 30.0
BUNDLE_STOP_TIMEOUT = 5
ROLE_AGENT = "agent"
ROLE_BUNDLE = "bundle"


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


def _tolerant(call: Callable[[], None], what: str, problems: list[str]) -> None:
    try:
        call()
    except docker.DockerError as exc:
        if not exc.missing and "in progress" not in exc.stderr:
            problems.append(f"could not remove {what}: {exc.message}")


def teardown(
    *,
    agents: Iterable[str] = (),
    bundles: Iterable[str] = (),
    networks: Iterable[str] = (),
    volumes: Iterable[str] = (),
) -> list[str]:
    """Remove containers (bundles stopped gracefully), then networks and volumes; problems.

    Agents are killed at once; a bundle gets SIGTERM so its audit log ends with its
    `bundle-stop` record. Anything already gone counts as removed.
    """
    problems: list[str] = []

    def remove_agents(names: list[str]) -> None:
        _tolerant(lambda: docker.rm(names), f"container {', '.join(names)}", problems)

    def remove_bundle(name: str) -> None:
        _tolerant(lambda: docker.stop([name], timeout=BUNDLE_STOP_TIMEOUT), name, problems)
        _tolerant(lambda: docker.rm([name]), f"container {name}", problems)

    def remove_network(name: str) -> None:
        _tolerant(lambda: docker.network_rm([name]), f"network {name}", problems)

    def remove_volume(name: str) -> None:
        _tolerant(lambda: docker.volume_rm([name]), f"volume {name}", problems)

    agent_list = list(agents)
    first: list[Callable[[], object]] = [functools.partial(remove_bundle, n) for n in bundles]
    if agent_list:
        first.append(functools.partial(remove_agents, agent_list))
    parallel(*first)
    parallel(
        *(functools.partial(remove_network, n) for n in networks),
        *(functools.partial(remove_volume, n) for n in volumes),
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
        'exec "$0" -m claude_bottle.backend.docker.launch --teardown "$1"'
    )

    def __init__(self, process: subprocess.Popen[bytes] | None) -> None:
        self.process = process

    @classmethod
    def spawn(cls, labels: Mapping[str, str], log: Path) -> Watchdog:
        with log.open("ab") as out:
            process = subprocess.Popen(
                ["/bin/sh", "-c", cls.SCRIPT, sys.executable, json.dumps(dict(labels))],
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
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(1)


# --- launch ---------------------------------------------------------------------------


class _Created:
    """What this launch has created so far, for one teardown in reverse order."""

    def __init__(self) -> None:
        self.agents: list[str] = []
        self.bundles: list[str] = []
        self.networks: list[str] = []
        self.volumes: list[str] = []
        self.control_socket: Path | None = None  # set once the bundle answers
        self.bundle_process: dict[str, int] | None = None  # its host process, if local

    def _stop_bundle(self) -> bool:
        """Ask the bundle to stop (it writes its last audit record); True once it has exited."""
        if self.control_socket is None or self.bundle_process is None:
            return False
        try:
            control.call(self.control_socket, "stop", timeout=2)
        except BottleError:
            return False
        deadline = time.monotonic() + BUNDLE_STOP_TIMEOUT
        while state.process_alive(self.bundle_process):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def remove(self) -> None:
        stopped = self._stop_bundle()
        problems = teardown(
            agents=[*self.agents, *(self.bundles if stopped else [])],
            bundles=[] if stopped else self.bundles,
            networks=self.networks,
            volumes=self.volumes,
        )
        if problems:
            print(f"claude-bottle: {'; '.join(problems)}", file=sys.stderr)


def _ensure_images(plan: DockerBottlePlan, preflight: Callable[[], list[str]]) -> None:
    """Check the engine (preflight) and look for both images at once; build what is missing."""
    specs = {plan.agent.image: images.agent_image(), plan.bundle.image: images.bundle_image()}
    for tag, spec in specs.items():
        if spec.tag != tag:
            raise LaunchError(
                f"the image inputs changed since this plan was made ({tag} -> {spec.tag})",
                "run the command again",
            )
    present: dict[str, bool] = {}
    problems: list[str] = []

    def check(tag: str) -> None:
        present[tag] = docker.image_inspect(tag) is not None

    errors = parallel(
        lambda: problems.extend(preflight()),
        *(functools.partial(check, tag) for tag in specs),
    )
    if problems:
        raise MissingDependency("; ".join(problems))
    if errors:
        raise errors[0]
    for tag, spec in specs.items():
        if not present[tag]:
            images.ensure(spec, rebuild=False)


def _host_pid(info: Mapping[str, Any] | None, marker: str) -> dict[str, int] | None:
    """The container's process 1 as a host process ref, when the engine runs on this host."""
    if not info:
        return None
    pid = int(info.get("State", {}).get("Pid") or 0)
    if pid <= 0:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if marker.encode() not in cmdline:
        return None  # a remote engine or a VM: that pid is not ours
    return state.process_ref(pid)


def _settings(plan: DockerBottlePlan) -> BundleSettings:
    return BundleSettings(
        bottle=plan.name,
        proxy_socket=f"{SOCKETS_DIR}/proxy.sock",
        control_socket=f"{CONTROL_DIR}/control.sock",
        audit_log=f"{BUNDLE_STATE}/audit.jsonl",
        allow=plan.egress_allow,
        deny=plan.egress_deny,
        mode=plan.egress_mode,
        pins=tuple(Pin(h, a, p) for h, a, p in plan.egress_pins),
        intercept=plan.egress_intercept,
        intercept_exclude=plan.intercept_exclude,
        ca_cert=CA_CERT,
        ca_bundle=CA_BUNDLE if plan.egress_intercept else None,
        upstream_ca_file=UPSTREAM_CA if plan.upstream_ca_file else None,
    )


def start(
    plan: DockerBottlePlan,
    stack: contextlib.ExitStack,
    preflight: Callable[[], list[str]] = list,
) -> tuple[DockerBottle, Watchdog]:
    state_dir = paths.make_private_dir(Path(plan.state_dir))
    runtime = Path(plan.runtime_dir)
    if runtime.exists():
        raise LaunchError(
            f"bottle {plan.name} already has runtime files in {runtime}",
            "it may be running (claude-bottle ls); otherwise: claude-bottle cleanup",
        )
    paths.make_private_dir(runtime.parent)
    paths.make_private_dir(runtime)
    stack.callback(shutil.rmtree, runtime, True)
    for sub in ("exec", "control"):
        (runtime / sub).mkdir(mode=0o700)
    _settings(plan).dump(runtime / "bundle.json")
    (state_dir / "plan.json").write_text(plan.to_json() + "\n")

    _ensure_images(plan, preflight)

    labels = plan.labels()
    watchdog = Watchdog.spawn(labels, state_dir / "docker.log")
    stack.callback(watchdog.release, "done")  # last out: after the teardown below
    created = _Created()
    stack.callback(created.remove)

    docker.volume_create(
        plan.volume,
        labels={**labels, LABEL_ROLE: "sockets"},
        options=sockets_volume_options(plan.agent.uid, plan.agent.gid),
    )
    created.volumes.append(plan.volume)

    def start_bundle() -> None:
        if plan.network:
            docker.network_create(plan.network, labels={**labels, LABEL_ROLE: "network"})
            created.networks.append(plan.network)
        docker.run(bundle_run_args(plan.bundle), plan.bundle.image, bundle_command())
        created.bundles.append(plan.bundle.container)

    def start_agent() -> None:
        docker.run(agent_run_args(plan.agent), plan.agent.image, agent_command(plan.relay_port))
        created.agents.append(plan.agent.container)

    _raise_first(parallel(start_bundle, start_agent))

    containers = {"bundle": plan.bundle.container, "bottle": plan.agent.container}
    exec_socket = runtime / "exec" / "exec.sock"
    control_socket = runtime / "control" / "control.sock"
    _wait_ready(exec_socket, control_socket, containers)
    created.control_socket = control_socket

    infos: dict[str, dict[str, Any] | None] = {}

    def look(role: str) -> None:
        infos[role] = docker.inspect(containers[role])

    _raise_first(parallel(*(functools.partial(look, role) for role in containers)))
    processes = {
        role: ref
        for role, ref in (
            ("bundle", _host_pid(infos.get("bundle"), "claude_bottle.bundle.server")),
            ("bottle", _host_pid(infos.get("bottle"), "relay.py")),
        )
        if ref is not None
    }
    created.bundle_process = processes.get("bundle")

    state.write_record(
        plan.name,
        {
            "name": plan.name,
            "backend": plan.backend,
            "workspace": plan.workspace,
            "created": time.time(),
            "status": "running",
            "detached": plan.detach,
            "processes": processes,
            "containers": containers,
            "network": plan.network,
            "volume": plan.volume,
            "labels": labels,
            "runtime_dir": str(runtime),
            "control_socket": str(control_socket),
            "exec_socket": str(exec_socket),
            "env": plan.env,
            "command": list(plan.command),
        },
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


def _raise_first(errors: list[BaseException]) -> None:
    if not errors:
        return
    error = errors[0]
    if isinstance(error, MissingDependency):
        raise error
    if isinstance(error, BottleError):
        raise LaunchError(f"the bottle did not start: {error.message}", error.hint) from error
    raise error


def _wait_ready(exec_socket: Path, control_socket: Path, containers: Mapping[str, str]) -> None:
    """Until the relay serves exec and the bundle answers; fail fast if a container died."""
    started = time.monotonic()
    deadline = started + READY_TIMEOUT
    next_engine_check = started + 0.5
    bundle_ready = False
    while True:
        if not bundle_ready and control_socket.exists():
            with contextlib.suppress(BottleError):
                bundle_ready = bool(control.call(control_socket, "ping", timeout=2).get("ok"))
        if bundle_ready and exec_socket.exists():
            return
        now = time.monotonic()
        if now >= next_engine_check:
            next_engine_check = now + 0.5
            for role, container in containers.items():
                info = docker.inspect(container)
                if info is None or not info.get("State", {}).get("Running"):
                    _died(role, container)
        if now > deadline:
            missing = "the bundle" if not bundle_ready else "the agent container's relay"
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
    """`python -m claude_bottle.backend.docker.launch --teardown LABELS_JSON` (the watchdog)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--teardown":
        print("usage: launch.py --teardown LABELS_JSON", file=sys.stderr)
        return 2
    labels = json.loads(args[1])
    if not isinstance(labels, dict) or not labels:
        print("launch.py: refusing to tear down without labels", file=sys.stderr)
        return 2
    problems = remove_by_labels({str(k): str(v) for k, v in labels.items()})
    for problem in problems:
        print(f"claude-bottle watchdog: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
