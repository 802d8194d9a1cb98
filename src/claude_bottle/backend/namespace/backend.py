"""namespace backend: the bottle is a bubblewrap sandbox, the bundle a host process."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from claude_bottle import cgroups, home_image, paths, state
from claude_bottle.backend.base import (
    Bottle,
    BottleBackend,
    BottlePlan,
    BottleRecord,
    BundlePlaces,
    CleanupPlan,
    Launched,
    LaunchRequest,
    StoredBottle,
    common_plan_fields,
)
from claude_bottle.backend.namespace import cleanup
from claude_bottle.backend.namespace.bottle import NamespaceBottle
from claude_bottle.backend.namespace.bottle_plan import NamespaceBottlePlan
from claude_bottle.backend.namespace.bwrap import BwrapSpec, bwrap_argv, unprivileged_argv
from claude_bottle.backend.namespace.filters import seccomp_program_fds
from claude_bottle.backend.namespace.limits import (
    confine,
    doctor_lines,
)
from claude_bottle.backend.namespace.toolchain import (
    Unreachable,
    host_sockets,
    masked_roots,
    resolve_binds,
    unreachable,
)
from claude_bottle.background import Background
from claude_bottle.bottle_env import HOOK_PORT, NAMESPACE_CA, RELAY_PORT, TOOLCHAIN_ENV, build_env
from claude_bottle.bundle import ca_pool
from claude_bottle.bundle.launcher import spawn_bundle, stop_process
from claude_bottle.claude_home import ToolHook
from claude_bottle.errors import BottleError, ConfigError, LaunchError, MissingDependency
from claude_bottle.host_secrets import grant_read_only
from claude_bottle.workspace_guard import GitMount

RELAY_SCRIPT = Path(__file__).resolve().parents[2] / "bundle" / "relay.py"
UNPRIVILEGED_EXEC = Path(__file__).resolve().parent / "unprivileged_exec.py"
# The host uid and gid a bottle started by root runs as. No account has it; nothing else
# runs as it; each bottle sees only its own files through it (its own mount namespace).
UNPRIVILEGED_HOST_ID = 2_000_000_000
EXIT_UNSUPPORTED = 3  # unprivileged_exec.py: the kernel or a filesystem cannot idmap
RESOLV_CONF = "# claude-bottle: the bottle has no DNS; only the bundle resolves names.\n"
EXEC_READY_TIMEOUT = 10.0
HOME_MOUNT = "home mount"  # cleanup: a home image still mounted on the host


def compiled_relay() -> Path:
    """Where the relay's bytecode is cached: keyed, like Python's own pyc files, by the
    source's size and mtime, and by the magic number of this interpreter, which is the
    one the bottle runs it with (`_python`)."""
    from importlib.util import MAGIC_NUMBER

    source = RELAY_SCRIPT.stat()
    name = f"relay-{MAGIC_NUMBER.hex()}-{source.st_size}-{source.st_mtime_ns}.pyc"
    return paths.cache_root() / "relay" / name


def _compile_relay(target: Path) -> None:
    """Compile the relay once per installation. Run from source, as a script, it would be
    compiled at every bottle start (~15 ms before the bottle's command can run)."""
    if target.exists():
        return
    import py_compile

    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        paths.make_private_dir(target.parent)
        py_compile.compile(str(RELAY_SCRIPT), cfile=str(partial), dfile="relay.py", doraise=True)
        os.replace(partial, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise LaunchError(
            f"cannot write the relay's compiled code to {target.parent}: {exc.strerror}",
            "make that directory writable, or set CLAUDE_BOTTLE_CACHE_DIR to one that is",
        ) from exc


def _python() -> tuple[str, Path]:
    """The interpreter running claude-bottle (real file, not a venv shim) and its stdlib prefix."""
    base = getattr(sys, "_base_executable", sys.executable)
    return os.path.realpath(base), Path(sys.base_prefix).resolve()


class NamespaceRecord(NamedTuple):
    """A namespace bottle's own fields in its record (`BottleRecord`)."""

    exec_socket: str
    cgroup: dict[str, object] | None  # `cgroups.record_of`
    bundle_cgroup: dict[str, object] | None
    cgroup_counters: dict[str, object] | None  # where its counters are read (limits hit)


class NamespaceBackend(BottleBackend):
    name = "namespace"
    description = "bubblewrap namespaces on this Linux host (no daemon)"
    launch_modules = ("claude_bottle.policy.seccomp",)  # a filter not compiled before

    # --- preflight ------------------------------------------------------------

    def preflight(self) -> list[str]:
        problems = _installation_problems()
        if problems:
            return problems
        problem = _userns_problem()
        return [problem] if problem else []

    def limits_report(self) -> list[str]:
        return doctor_lines()

    # --- plan -----------------------------------------------------------------

    def plan(self, request: LaunchRequest) -> NamespaceBottlePlan:
        config = request.config
        home = Path(os.path.expanduser("~")).resolve()
        host_path = os.environ.get("PATH", "")
        if not request.command:
            raise ConfigError(
                "no command to run", "give one after --, e.g. claude-bottle run -- bash"
            )
        program = request.command[0]
        if os.sep not in program and shutil.which(program, path=host_path) is None:
            hint = (
                "install Claude Code: npm install -g @anthropic-ai/claude-code "
                "(or run another command: claude-bottle run -- bash)"
                if program == "claude"
                else f"install {program}, or give its full path"
            )
            raise MissingDependency(f"{program} is not installed (not found on PATH)", hint)
        python, prefix = _python()
        workspace = str(request.workspace.resolve())
        toolchain = resolve_binds(
            [program, python],
            home=home,
            path_env=host_path,
            python_prefix=prefix,
            environ=os.environ,
            workspace=Path(workspace),
        )
        read_only = grant_read_only(config.bottle.read_only, home)
        missing = unreachable(
            program,
            home=home,
            path_env=host_path,
            visible=[*(b.path for b in toolchain), *read_only, workspace],
            environ=os.environ,
            workspace=Path(workspace),
        )
        if missing is not None:
            raise _hidden_from_bottle(program, missing)
        state_dir = paths.state_dir(request.name)
        runtime_dir = paths.runtime_dir(request.name)
        masked_paths = masked_roots(home)
        host_id = _unprivileged_host_id()
        # The user's CA keys minted ahead: no bottle may see them (bundle/ca_pool.py). A
        # bottle of another uid (started by root) cannot enter the 0700 pool anyway, nor
        # could its bubblewrap reach the pool to cover it.
        pool = paths.make_private_dir(ca_pool.pool_dir())
        if host_id is None and not any(pool.is_relative_to(root) for root in masked_paths):
            masked_paths = (*masked_paths, pool)
        masked = tuple(str(p) for p in masked_paths)
        # What the bottle must read or write although root owns it: through idmapped
        # mounts, root's files there are the bottle uid's (the rest of the host is not).
        idmapped = (
            (
                workspace,
                str(state_dir / "home"),
                str(runtime_dir / "exec"),
                *read_only,
                *(b.path for b in toolchain if Path(b.path).is_relative_to(home)),
            )
            if host_id is not None
            else ()
        )
        limits, confinement = confine(request.name, config.bottle.limits)
        spec = BwrapSpec(
            hostname=request.name[:63],
            workspace=workspace,
            home=str(home),
            home_source=str(state_dir / "home"),
            bundle_dir=str(runtime_dir / "bundle"),
            exec_dir=str(runtime_dir / "exec"),
            relay_bytecode=str(compiled_relay()),
            python=python,
            relay_port=RELAY_PORT,
            masked=masked,
            hidden_sockets=host_sockets(masked_paths),
            toolchain=toolchain,
            read_only=tuple(read_only),
            resolv_conf=str(runtime_dir / "resolv.conf"),
            ca_bundle=str(runtime_dir / "bundle" / "ca-bundle.pem")
            if config.egress.intercept
            else None,
            die_with_parent=not request.detach,
            host_id=host_id,
            idmapped=idmapped,
            tmpfs_size=limits.disk,
        )
        env = build_env(
            os.environ,
            bottle=request.name,
            home=str(home),
            extra_names=(*TOOLCHAIN_ENV, *config.bottle.env),
            ca=NAMESPACE_CA if config.egress.intercept else None,
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
        bounded_home = not any(u.key == "disk" for u in limits.unapplied)
        return NamespaceBottlePlan(
            **common,
            bwrap=_with_guard(spec, common["workspace_guard"].mounts),
            confinement=confinement,
            home_image=str(home_image.image_of(state_dir / "home")) if bounded_home else None,
        )

    # --- launch ---------------------------------------------------------------

    def start(self, plan: BottlePlan, stack: contextlib.ExitStack) -> Launched:
        assert isinstance(plan, NamespaceBottlePlan)
        # Whether user namespaces work is learnt from the launch itself (a probe would cost
        # a bwrap run on every start); `_start` explains a failure with the probe.
        problems = _installation_problems()
        if problems:
            raise MissingDependency("; ".join(problems))
        return Launched(self._start(plan, stack))

    def _start(self, plan: NamespaceBottlePlan, stack: contextlib.ExitStack) -> NamespaceBottle:
        state_dir = paths.make_private_dir(Path(plan.state_dir))
        paths.make_private_dir(Path(plan.bwrap.home_source))
        runtime = paths.claim_runtime_dir(plan.name, Path(plan.runtime_dir))
        stack.callback(shutil.rmtree, runtime, True)
        for sub in ("bundle", "exec"):
            (runtime / sub).mkdir(mode=0o755)
        (runtime / "resolv.conf").write_text(RESOLV_CONF)
        # Read inside by the bottle's uid, which may not be ours (started by root).
        readable = [runtime / "resolv.conf", Path(plan.bwrap.relay_bytecode)]
        if plan.bwrap.ca_bundle:
            # Exists before bwrap binds it; the bundle fills it in place before it is ready.
            Path(plan.bwrap.ca_bundle).touch()
            readable.append(Path(plan.bwrap.ca_bundle))
        (state_dir / "plan.json").write_text(plan.to_json() + "\n")
        home = Path(plan.bwrap.home_source)
        settings = plan.bundle_settings(
            BundlePlaces(
                proxy_socket=str(runtime / "bundle" / "proxy.sock"),
                control_socket=str(runtime / "control.sock"),
                gateway_socket=str(runtime / "bundle" / "gateway.sock"),
                audit_log=str(state_dir / "audit.jsonl"),
                ca_cert=str(runtime / "bundle" / "ca.pem"),
                ca_bundle=plan.bwrap.ca_bundle,
                upstream_ca_file=plan.upstream_ca_file,
                gateway_ca_file=plan.gateway_ca_file,
                anthropic_credential=plan.anthropic_credential,
                git_socket=str(runtime / "bundle" / "git.sock") if plan.git_remotes else None,
                hook_socket=str(runtime / "bundle" / "hook.sock"),
            ),
            ca_pool=str(ca_pool.pool_dir()),  # host bundles of namespace bottles only
        )
        settings_file = runtime / "bundle.json"
        settings.dump(settings_file)
        detach = not plan.bwrap.die_with_parent
        # The bundle's interpreter start-up overlaps with the sandbox's; both must be ready
        # before any command runs.
        bundle_group = _bundle_cgroup(plan, stack)
        pending = spawn_bundle(
            settings_file,
            state_dir / "bundle.log",
            die_with_parent=not detach,
            injections=plan.injections,
        )
        stack.callback(stop_process, pending.process)
        joining = None
        if bundle_group is not None:
            # A cgroup v1 move waits for the kernel (~8 ms: an RCU grace period, shared
            # by the moves that follow at once, as the sandbox's own): meanwhile the rest
            # starts. Joined before the bundle serves the bottle anything.
            pid = pending.process.pid
            joining = Background(lambda: _join(bundle_group, pid))
            stack.callback(joining.join, quietly=True)  # before the bundle is stopped

        launch = _SandboxLaunch(plan, state_dir, detach, stack)
        if plan.bwrap.host_id is not None:
            # Root's staging helper starts now and waits, once its interpreter runs, the
            # sandbox is in its cgroup and its user namespaces exist, until the home is
            # made and seeded: only then does it stage the bind sources and run bwrap.
            launch.spawn(gated=True)
        if plan.home_image is not None:
            home_image.mount_for_start(home, plan.limits.disk, stack)
        _compile_relay(Path(plan.bwrap.relay_bytecode))
        for path in readable:
            os.chmod(path, 0o644)
        plan.seed_home(
            Path(plan.bwrap.home_source),
            Path(plan.bwrap.home),
            ToolHook(plan.bwrap.python, HOOK_PORT),  # the host's interpreter, bound in
        )
        sandbox, info_r = launch.go() if launch.gate is not None else launch.spawn(gated=False)
        try:
            relay_pid = _read_child_pid(info_r, sandbox, state_dir / "bottle.log")
        except LaunchError:
            if plan.bwrap.host_id is not None and sandbox.returncode == EXIT_UNSUPPORTED:
                raise MissingDependency(
                    _tail(state_dir / "bottle.log"),
                    "run claude-bottle as an unprivileged user, or use --backend docker",
                ) from None
            problem = _userns_problem()
            if problem:
                raise MissingDependency(problem) from None
            raise
        launch.relay_pid = relay_pid
        # The teardown's first steps: the bottle is killed and, while it dies, the bundle
        # stops (it writes its last record), so that the two waits overlap.
        stack.callback(stop_process, pending.process)
        stack.callback(launch.kill_bottle)
        exec_socket = runtime / "exec" / "exec.sock"
        _wait_for_socket(exec_socket, sandbox, state_dir / "bottle.log")
        if plan.home_image is not None:
            home_image.detach(home)  # the sandbox holds its own mount of it from here on
        if joining is not None:
            joining.join()
        bundle = pending.wait_ready()
        if settings.intercept:  # it took a CA from the pool, or minted one for lack of it
            ca_pool.refill_in_background(Path(str(settings.ca_pool)))
        group = plan.confinement.cgroup or _scope_of(plan, sandbox.pid)

        processes = {
            "bundle": state.process_ref(bundle.pid),
            "bottle": state.process_ref(relay_pid),
        }
        BottleRecord.launched(
            plan,
            detached=detach,
            processes=processes,
            runtime_dir=runtime,
            control_socket=settings.control_socket,
        ).write(
            NamespaceRecord(
                exec_socket=str(exec_socket),
                cgroup=cgroups.record_of(plan.confinement.cgroup),
                bundle_cgroup=cgroups.record_of(bundle_group),
                cgroup_counters=cgroups.record_of(group),
            )
        )
        return NamespaceBottle(
            plan.name,
            exec_socket=exec_socket,
            env=plan.env,
            workspace=plan.workspace,
            processes=processes,
            cgroup=group,
        )

    def record_fields(self) -> type[NamespaceRecord]:
        return NamespaceRecord

    def attach(self, record: StoredBottle) -> Bottle:
        common, own = record.bottle, record.own
        assert isinstance(own, NamespaceRecord)
        return NamespaceBottle(
            common.name,
            exec_socket=Path(own.exec_socket),
            env=common.env,
            workspace=common.workspace,
            processes=common.processes,
            cgroup=cgroups.from_record(own.cgroup_counters),
        )

    def stop(self, record: StoredBottle) -> None:
        common, own = record.bottle, record.own
        assert isinstance(own, NamespaceRecord)
        procs = common.processes
        # The bottle dies at once; the bundle gets SIGTERM so it can write its final record.
        for role, signum in (("bottle", signal.SIGKILL), ("bundle", signal.SIGTERM)):
            state.signal_process(procs.get(role), signum)
        deadline = time.monotonic() + 5
        while any(state.process_alive(r) for r in procs.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        for recorded in (own.cgroup, own.bundle_cgroup):
            group = cgroups.from_record(recorded)
            if group is not None:
                cgroups.remove(group)
        with contextlib.suppress(ConfigError):  # a start killed before it detached the home
            home_image.detach(paths.state_dir(common.name) / "home")
        paths.remove_runtime_dir(common.name, common.runtime_dir)

    # --- cleanup --------------------------------------------------------------

    def cleanup_plan(self, live_names: set[str], *, images: bool = False) -> CleanupPlan:
        found = cleanup.plan(self.name, live_names)
        groups = cgroups.leftovers(cgroups.detect(), live_names, paths.state_root())
        bottles = paths.bottles_dir()
        names = sorted(e.name for e in bottles.iterdir()) if bottles.is_dir() else []
        homes = [bottles / name / "home" for name in names if name not in live_names]
        mounts = home_image.stale_mounts(homes)
        return dataclasses.replace(
            found,
            items=(
                *found.items,
                *(("cgroup", g) for g in groups),
                *((HOME_MOUNT, str(m)) for m in mounts),
            ),
        )

    def cleanup(self, plan: CleanupPlan) -> list[str]:
        problems = cleanup.run(plan)  # the recorded processes first: then the cgroups empty
        for kind, what in plan.items:
            if kind == "cgroup" and cgroups.is_bottle_cgroup(what):
                leftover = cgroups.BottleCgroup(1, (("", what),), 0, 0, None)
                problems += cgroups.remove(leftover)
            elif kind == HOME_MOUNT and Path(what).parent.parent == paths.bottles_dir():
                try:
                    home_image.detach(Path(what))
                except BottleError as exc:
                    problems.append(str(exc))
        return problems


def _with_guard(spec: BwrapSpec, mounts: tuple[GitMount, ...]) -> BwrapSpec:
    """The bottle's own .git over the workspace's; started by root, its sources are
    idmapped like the workspace, so the bottle's uid writes them as the user's files."""
    idmapped = spec.idmapped
    if spec.host_id is not None:
        idmapped += tuple(m.source for m in mounts)
    return spec._replace(guard_mounts=mounts, idmapped=idmapped)


def _hidden_from_bottle(program: str, missing: Unreachable) -> MissingDependency:
    """Say which host file keeps `program` from running inside, and how to show it."""
    if not missing.is_command:
        message = f"{program} needs {missing.path}, which the bottle does not show"
    elif program == missing.path:
        message = f"{program} is not shown in the bottle"
    else:
        message = f"{program} ({missing.path}) is not shown in the bottle"
    if missing.secret is not None:
        return MissingDependency(
            f"{message} (it is inside {missing.secret}, which is never shown in a bottle)",
            f"install {program} outside {missing.secret}",
        )
    return MissingDependency(
        message,
        f'grant it read-only in your user config: [bottle] read_only = ["{missing.path}"]',
    )


def _confined(plan: NamespaceBottlePlan, argv: list[str], stack: contextlib.ExitStack) -> list[str]:
    """bubblewrap's command line under the bottle's limits; its cgroup exists from here on
    and is removed at teardown, after the sandbox has stopped."""
    group = plan.confinement.cgroup
    if group is None:
        return [*plan.confinement.launcher, *argv]
    _create(group, stack)
    return cgroups.join_argv(group, argv)


def _bundle_cgroup(
    plan: NamespaceBottlePlan, stack: contextlib.ExitStack
) -> cgroups.BottleCgroup | None:
    """The bundle's own cgroup where the bottle has one; removed after the bundle stops."""
    if plan.confinement.cgroup is None:
        return None
    group = cgroups.for_bundle(plan.confinement.cgroup)
    _create(group, stack)
    return group


def _create(group: cgroups.BottleCgroup, stack: contextlib.ExitStack) -> None:
    stack.callback(cgroups.remove, group)
    try:
        cgroups.create(group)
    except OSError as exc:
        raise LaunchError(
            f"cannot create the bottle's cgroup ({exc.strerror}: {exc.filename})",
            "see `claude-bottle doctor`; cgroup v1 needs root",
        ) from None


def _join(group: cgroups.BottleCgroup, pid: int) -> None:
    try:
        cgroups.move(group, pid)
    except OSError as exc:
        raise LaunchError(
            f"cannot move the bundle into its cgroup ({exc.strerror}: {exc.filename})",
            "see `claude-bottle doctor`",
        ) from None


def _scope_of(plan: NamespaceBottlePlan, pid: int) -> cgroups.BottleCgroup | None:
    """The systemd scope the sandbox runs in, to read its counters (None without one)."""
    launcher = plan.confinement.launcher
    if not launcher or os.path.basename(launcher[0]) != "systemd-run":
        return None
    return cgroups.of_process(pid)


USERNS_PROBE = (
    *("bwrap", "--unshare-user", "--unshare-net", "--unshare-pid"),
    *("--ro-bind", "/", "/", "--proc", "/proc", "true"),
)


INIT_USER_NS_MAP = ["0", "0", "4294967295"]  # /proc/self/uid_map in the host's user namespace


def _unprivileged_host_id() -> int | None:
    """The host uid a bottle runs as when host root starts it; None: the caller's own uid
    (bubblewrap maps it; root of a user namespace of its own is not host root)."""
    if os.geteuid() != 0:
        return None
    try:
        uid_map = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return UNPRIVILEGED_HOST_ID  # cannot tell: assume the worst
    return UNPRIVILEGED_HOST_ID if uid_map == INIT_USER_NS_MAP else None


def _installation_problems() -> list[str]:
    if not sys.platform.startswith("linux"):
        return ["the namespace backend needs Linux; use --backend docker"]
    if shutil.which("bwrap") is None:
        return ["bubblewrap (bwrap) is not installed; fix: sudo apt-get install bubblewrap"]
    return []


def _userns_problem() -> str | None:
    """Why bubblewrap cannot make the namespaces a bottle needs here, if it cannot."""
    probe = subprocess.run(
        USERNS_PROBE,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    if probe.returncode == 0:
        return None
    detail = probe.stderr.strip().splitlines()[-1:] or ["no output"]
    return (
        f"bubblewrap cannot create user namespaces here ({detail[0]}); fix: "
        "sudo sysctl -w kernel.unprivileged_userns_clone=1 "
        "(Ubuntu 24.04+: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0)"
    )


def _read_child_pid(info_fd: int, sandbox: subprocess.Popen[bytes], log: Path) -> int:
    with os.fdopen(info_fd, "rb") as info:
        data = info.read()
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        sandbox.wait(5)
        raise LaunchError(
            f"bubblewrap failed to start the bottle: {_tail(log)}", f"see {log}"
        ) from None


def _wait_for_socket(path: Path, sandbox: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + EXEC_READY_TIMEOUT
    while not path.exists():
        if sandbox.poll() is not None:
            raise LaunchError(f"the bottle exited while starting: {_tail(log)}", f"see {log}")
        if time.monotonic() > deadline:
            raise LaunchError("the bottle did not become ready in time", f"see {log}")
        time.sleep(0.001)  # the command waits for this: poll finely, it is a few dozen stats


class _SandboxLaunch:
    """bubblewrap's start, under the bottle's limits, as root through the staging helper;
    `gated`, the helper waits on a pipe for `go` before it stages anything."""

    def __init__(
        self,
        plan: NamespaceBottlePlan,
        state_dir: Path,
        detach: bool,
        stack: contextlib.ExitStack,
    ) -> None:
        self.plan, self.state_dir, self.detach, self.stack = plan, state_dir, detach, stack
        self.gate: int | None = None  # the write end the helper waits on
        self.started: tuple[subprocess.Popen[bytes], int] | None = None
        self.relay_pid: int | None = None  # the bottle's process 1, once it runs

    def spawn(self, *, gated: bool) -> tuple[subprocess.Popen[bytes], int]:
        """Start it: (the process, the read end of bwrap's --info-fd)."""
        plan = self.plan
        info_r, info_w = os.pipe()
        seccomp_fds = seccomp_program_fds(plan.nested_sandbox)
        passed = [info_w, *seccomp_fds]
        lifeline = None
        if not self.detach:  # the bottle lives while this process holds the write end
            lifeline, lifeline_w = os.pipe()
            self.stack.callback(os.close, lifeline_w)
            passed.append(lifeline)
        wait_fd = None
        if gated:
            wait_fd, self.gate = os.pipe()
            passed.append(wait_fd)
        argv = bwrap_argv(plan.bwrap, seccomp_fds=seccomp_fds, lifeline_fd=lifeline)
        argv.insert(1, "--info-fd")
        argv.insert(2, str(info_w))
        argv = unprivileged_argv(
            plan.bwrap, _python()[0], str(UNPRIVILEGED_EXEC), argv, wait_fd=wait_fd
        )
        argv = _confined(plan, argv, self.stack)
        try:
            with (self.state_dir / "bottle.log").open("ab") as log:
                sandbox = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=passed,
                    start_new_session=True,
                )
        except BaseException:
            self._close_gate()
            raise
        finally:
            for fd in passed:
                os.close(fd)
        self.stack.callback(lambda: _stop_sandbox(sandbox, self.relay_pid))
        # First out: a launch given up before `go` lets the helper leave on its own.
        self.stack.callback(self._close_gate)
        self.started = sandbox, info_r
        return self.started

    def go(self) -> tuple[subprocess.Popen[bytes], int]:
        """Let a gated helper go on (the home is made and seeded)."""
        assert self.gate is not None and self.started is not None
        with contextlib.suppress(BrokenPipeError):  # it died: its exit status says why
            os.write(self.gate, b"g")
        self._close_gate()
        return self.started

    def kill_bottle(self) -> None:
        """SIGKILL to the bottle's process 1 (its pid namespace dies with it), no wait."""
        if self.relay_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.relay_pid, signal.SIGKILL)

    def _close_gate(self) -> None:
        if self.gate is not None:
            os.close(self.gate)
            self.gate = None


def _stop_sandbox(sandbox: subprocess.Popen[bytes], relay_pid: int | None) -> None:
    """Stop process 1 of the bottle (the whole pid namespace dies with it), then bwrap."""
    if sandbox.poll() is not None:
        return
    if relay_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(relay_pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            sandbox.wait(5)
    if sandbox.poll() is None:
        sandbox.kill()
        sandbox.wait()


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return " | ".join(lines[-3:]) or "no output"
