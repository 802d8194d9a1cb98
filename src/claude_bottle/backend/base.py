"""The abstract interface every backend implements, and the launch request they share.

Shared code (CLI, plans, bundle) talks only to these types; backend
subpackages implement them and register themselves in `registry`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from claude_bottle import paths, state
from claude_bottle.bottle_env import injected_env
from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.settings import BundleSettings, InjectionSpec, Pin, RuleSpec
from claude_bottle.config.model import Config, GatewayConfig, GitRemote
from claude_bottle.errors import MissingDependency
from claude_bottle.git_identity import (
    GateRewrite,
    GitIdentity,
    gate_config_env,
    gate_url,
    host_git_identity,
    seed_git_identity,
)
from claude_bottle.limits import LimitsPlan
from claude_bottle.plan import PlanSection, Printable
from claude_bottle.workspace_guard import GuardPlan, plan_guard

if TYPE_CHECKING:
    from claude_bottle.claude_home import ToolHook


class ExecResult(NamedTuple):  # not a dataclass: see bundle/settings.py
    returncode: int
    stdout: str
    stderr: str


class LaunchRequest(NamedTuple):
    """Everything `run`/`plan` know before a backend turns it into a plan."""

    name: str
    workspace: Path
    config: Config
    command: tuple[str, ...]
    detach: bool = False


class BundlePlaces(NamedTuple):  # not a dataclass: see bundle/settings.py
    """Where one launch's bundle finds its sockets, log and files, as the bundle sees them
    (host paths, or paths in its container): all a launch adds to the plan's policy."""

    proxy_socket: str
    control_socket: str
    gateway_socket: str
    audit_log: str
    ca_cert: str  # where the bundle publishes its CA certificate
    ca_bundle: str | None  # the trust store it writes with its CA (TLS interception only)
    upstream_ca_file: str | None
    gateway_ca_file: str | None
    anthropic_credential: str  # the credential's spec, as the bundle reads it
    git_socket: str | None = None  # the git gate's, where this launch serves it
    hook_socket: str | None = None  # Claude Code's tool-call hooks (advisory attribution)


def _binary_size(size: int) -> str:
    """1073741824 -> "1 GiB"; a size that is no whole number of a unit stays in bytes."""
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


@dataclasses.dataclass(frozen=True)
class BottlePlan(Printable):
    """Backend-neutral part of a plan; backends subclass it with their own fields."""

    backend: str
    name: str
    workspace: str
    command: tuple[str, ...]
    state_dir: str
    runtime_dir: str
    egress_allow: tuple[str, ...]
    egress_deny: tuple[str, ...]
    egress_mode: str
    egress_ask_timeout: float  # seconds a held request waits (mode ask)
    egress_pins: tuple[tuple[str, str, int | None], ...]
    env: dict[str, str]
    relay_port: int
    config_sources: tuple[str, ...]
    egress_intercept: bool
    dlp_enabled: bool
    dlp_block: bool
    dlp_patterns: tuple[tuple[str, str], ...]
    dlp_ignore: tuple[str, ...]
    dlp_ignore_fingerprints: tuple[str, ...]
    anthropic_credential: str  # where the bundle reads it (env:NAME, file:PATH, keychain)
    anthropic_upstream: str
    gateway_ca_file: str | None
    max_tokens_total: int | None
    oauth_token_url: str | None
    gateway_features: tuple[str, ...]  # API features forwarded (api_policy.FEATURES)
    gateway_dlp: str
    intercept_exclude: tuple[str, ...]
    upstream_ca_file: str | None
    nested_sandbox: bool  # user namespaces (and mounts in them) allowed inside
    audit_max: int  # bytes of audit log in all, then the bottle fails closed
    audit_rate: int  # bytes of audit log per minute, likewise
    workspace_guard: GuardPlan
    git_identity: GitIdentity | None  # written to the bottle's ~/.gitconfig
    limits: LimitsPlan  # resource limits in force and how this backend applies them
    egress_rules: tuple[RuleSpec, ...]  # the user's [[egress.rules]]
    rules_in_force: tuple[RuleSpec, ...]  # with the built-in sets, for the hosts allowed
    injections: tuple[InjectionSpec, ...]  # with this bottle's placeholders, no secret
    git_remotes: tuple[GitRemote, ...]  # served by the bundle's git gate

    def git_gate_settings(self) -> dict[str, Any]:
        """The bundle settings of the git gate (none without remotes), with host paths."""
        if not self.git_remotes:
            return {}
        return {
            "git_cache": str(Path(self.state_dir) / "git"),
            "git_remotes": tuple(
                GateRemote(
                    name=remote.name,
                    url=remote.url,
                    push=remote.push,
                    tags=remote.tags,
                    force=remote.force,
                    delete=remote.delete,
                    credential=remote.credential,
                )
                for remote in self.git_remotes
            ),
        }

    def git_gate_rows(self) -> list[tuple[str, str]]:
        rows = []
        for remote in self.git_remotes:
            allowed = [f"push {', '.join(remote.push) or '(nothing)'}"]
            allowed += [flag for flag in ("tags", "force", "delete") if getattr(remote, flag)]
            credential = (
                "the host's ssh"
                if (remote.credential == "git" and "://" not in remote.url)
                or remote.url.startswith("ssh://")
                else remote.credential
            )
            served = f"{gate_url(remote.name)} (git gate)"
            rows.append(
                (
                    f"git remote {remote.name}",
                    f"{remote.url} -> {served}; "
                    f"{'; '.join(allowed)}; credential: {credential} (host side)",
                )
            )
        return rows

    def runs_host_bundle(self) -> bool:
        """Whether the bundle is a host process (started by `bundle.launcher`)."""
        return True

    def bundle_policy(self) -> dict[str, Any]:
        """The bundle settings that are policy, the same on every backend and placement:
        each launch adds only where the bundle's sockets, log and files are. One place, so
        a new policy setting cannot reach one backend's bundle and miss another's."""
        return {
            "allow": self.egress_allow,
            "deny": self.egress_deny,
            "mode": self.egress_mode,
            "ask_timeout": self.egress_ask_timeout,
            "pins": tuple(Pin(host, address, port) for host, address, port in self.egress_pins),
            "intercept": self.egress_intercept,
            "intercept_exclude": self.intercept_exclude,
            "dlp_enabled": self.dlp_enabled,
            "dlp_block": self.dlp_block,
            "dlp_patterns": self.dlp_patterns,
            "dlp_ignore": self.dlp_ignore,
            "dlp_ignore_fingerprints": self.dlp_ignore_fingerprints,
            "anthropic_upstream": self.anthropic_upstream,
            "max_tokens_total": self.max_tokens_total,
            "gateway_features": self.gateway_features,
            "gateway_dlp_block": self.gateway_dlp == "block",
            "oauth_token_url": self.oauth_token_url,
            "audit_max": self.audit_max,
            "audit_rate": self.audit_rate,
            "limits": self.limits.audit_detail(),
            "egress_rules": self.egress_rules,
            "injections": self.injections,
        }

    def seed_home(self, bottle_home: Path, host_home: Path, tool_hook: ToolHook) -> None:
        """What every backend writes before the bottle starts: Claude Code's state in the
        bottle's home (`bottle_home`, a host directory) with its tool-call hook run by
        `tool_hook`'s interpreter, the workspace guard's own .git, and ~/.gitconfig (the
        identity; the git gate's rewrites are the system config the bundle publishes)."""
        self.prepare_workspace_guard()
        self.seed_home_files(bottle_home, host_home, tool_hook)

    def prepare_workspace_guard(self) -> None:
        """The guard's own .git and its record: before the sandbox starts (its mounts)."""
        from claude_bottle import workspace_guard

        workspace_guard.prepare(self.workspace_guard)

    def seed_home_files(self, bottle_home: Path, host_home: Path, tool_hook: ToolHook) -> None:
        """The home's part of `seed_home`: only before the bottle's command runs, so a
        backend may write it while its sandbox starts (the home is the same filesystem)."""
        from claude_bottle.claude_home import seed_claude_home

        seed_claude_home(bottle_home, host_home, Path(self.workspace), tool_hook)
        seed_git_identity(bottle_home, self.git_identity)

    def bundle_settings(self, places: BundlePlaces, **seen_otherwise: Any) -> BundleSettings:
        """This plan's bundle settings: its policy (`bundle_policy`), the launch's places,
        and the git gate where the launch gives it a socket. `seen_otherwise`: settings
        as this bundle sees them where that is not as the host does (a bundle container
        is handed the injected secrets over its control socket, say)."""
        gate = self.git_gate_settings() if places.git_socket else {}
        return BundleSettings(
            **{
                **self.bundle_policy(),
                "bottle": self.name,
                **places._asdict(),
                **gate,
                **seen_otherwise,
            }
        )

    def common_sections(self) -> list[PlanSection]:
        allow = ", ".join(self.egress_allow) or "(nothing)"
        return [
            PlanSection(
                f"bottle {self.name} ({self.backend})",
                (
                    ("workspace", f"{self.workspace} (read-write)"),
                    ("command", " ".join(self.command)),
                    ("state", self.state_dir),
                    ("runtime", self.runtime_dir),
                    ("config", ", ".join(self.config_sources) or "built-in defaults"),
                    *self.workspace_guard.describe(),
                    (
                        "git identity",
                        f"{self.git_identity.name} <{self.git_identity.email}>"
                        if self.git_identity
                        else "none (commits need git config user.name/user.email inside)",
                    ),
                    *self.git_gate_rows(),
                ),
            ),
            PlanSection(
                "egress (the bottle's only way out)",
                (
                    ("relay", f"127.0.0.1:{self.relay_port} inside the bottle -> bundle proxy"),
                    ("mode", self.egress_mode),
                    ("allow", allow),
                    ("deny", ", ".join(self.egress_deny) or "-"),
                    *(
                        ("pinned", f"{host} -> {addr}" + (f":{port}" if port else ""))
                        for host, addr, port in self.egress_pins
                    ),
                    (
                        "https",
                        "intercepted with a per-bottle CA, so secret scanning sees HTTPS"
                        + (
                            f" (except {', '.join(self.intercept_exclude)})"
                            if self.intercept_exclude
                            else ""
                        )
                        if self.egress_intercept
                        else "not intercepted: only CONNECT targets are scanned",
                    ),
                    (
                        "secrets",
                        (
                            ("blocked" if self.dlp_block else "logged only")
                            + " when found in URLs, headers, bodies or host names"
                            + (
                                f" (+{len(self.dlp_patterns)} own patterns)"
                                if self.dlp_patterns
                                else ""
                            )
                            + (
                                f"; {len(self.dlp_ignore) + len(self.dlp_ignore_fingerprints)}"
                                " ignore entries let matching findings through (audited)"
                                if self.dlp_ignore or self.dlp_ignore_fingerprints
                                else ""
                            )
                        )
                        if self.dlp_enabled
                        else "not scanned ([dlp] enabled = false)",
                    ),
                    *(
                        (
                            f"rule {rule.host}",
                            f"{' '.join(rule.methods)} {' '.join(rule.paths)}"
                            + (" (websocket)" if rule.websocket else ""),
                        )
                        for rule in self.rules_in_force
                    ),
                    *(
                        (
                            f"inject {injection.env}",
                            f"{injection.secret.partition(':')[0]}: secret swapped in at the "
                            f"edge for {', '.join(injection.hosts)}; the bottle holds a "
                            "placeholder",
                        )
                        for injection in self.injections
                    ),
                    ("other", "no DNS, no UDP, no IPv6, no route: loopback only"),
                    (
                        "audit log",
                        f"stops the bottle past {_binary_size(self.audit_max)} "
                        f"or {_binary_size(self.audit_rate)} a minute",
                    ),
                ),
            ),
            PlanSection(
                "anthropic api (through the gateway)",
                (
                    ("gateway", "127.0.0.1:3129 inside the bottle -> bundle gateway"),
                    ("upstream", self.anthropic_upstream),
                    ("credential", f"{self.anthropic_credential}, injected host-side"),
                    ("bottle holds", "a placeholder key only"),
                    ("token budget", str(self.max_tokens_total or "unlimited")),
                    (
                        "forwarded",
                        "only the paths, methods and betas Claude Code uses"
                        + "".join(f", {feature}" for feature in self.gateway_features),
                    ),
                    (
                        "refused",
                        ", ".join(
                            f"{feature} ([gateway] {feature} = true)"
                            for feature in ("mcp_servers", "web_fetch", "web_search", "files")
                            if feature not in self.gateway_features
                        )
                        or "-",
                    ),
                    (
                        "prompt secrets",
                        ("refused" if self.gateway_dlp == "block" else "recorded in the audit log")
                        if self.dlp_enabled
                        else "not scanned ([dlp] enabled = false)",
                    ),
                ),
            ),
            PlanSection(
                "kernel (every backend)",
                (
                    ("capabilities", "none"),
                    (
                        "system calls",
                        "seccomp denies the mount and namespace calls, bpf, perf, keyrings, "
                        "io_uring, modules, terminal injection and set-id chmod "
                        "(docs/isolation.md)",
                    ),
                    (
                        "nested sandbox",
                        "ON ([bottle] nested_sandbox): the agent may create user namespaces "
                        "and mount inside them; cost: the kernel's namespace and mount code, "
                        "a frequent source of privilege escalations, is reachable from the bottle"
                        if self.nested_sandbox
                        else "off: no user namespaces inside (Chromium needs --no-sandbox)",
                    ),
                ),
            ),
            PlanSection("limits ([bottle] memory, pids, cpus, disk)", self.limits.rows()),
            PlanSection(
                "environment (built from an allowlist)",
                tuple((k, v) for k, v in sorted(self.env.items())),
            ),
        ]

    def sections(self) -> Sequence[PlanSection]:
        return self.common_sections()


@dataclasses.dataclass(frozen=True)
class CleanupPlan(Printable):
    """What `cleanup` would remove: one line per leftover, named so a person can check it."""

    backend: str
    items: tuple[tuple[str, str], ...]  # (kind, description)

    def sections(self) -> Sequence[PlanSection]:
        rows = self.items or (("-", "nothing to clean up"),)
        return [PlanSection(f"cleanup ({self.backend})", rows)]


def common_plan_fields(
    backend: str,
    request: LaunchRequest,
    *,
    state_dir: str,
    runtime_dir: str,
    env: dict[str, str],
    relay_port: int,
    limits: LimitsPlan,
) -> dict[str, Any]:
    """Every BottlePlan field that comes straight from the request and its config.

    Backends pass these with `**` and add only their own, so a new shared field is
    added in one place.
    """
    config = request.config
    _refuse_a_workspace_holding_home(request.workspace.resolve())
    injections = plan_injections(config, Path(state_dir) / "plan.json")
    env.update(injected_env(injections))
    rewrites = tuple(GateRewrite(remote.name, remote.url) for remote in config.git_remotes)
    env.update(gate_config_env(rewrites))
    return {
        "backend": backend,
        "name": request.name,
        "workspace": str(request.workspace.resolve()),
        "command": request.command,
        "state_dir": state_dir,
        "runtime_dir": runtime_dir,
        "egress_allow": config.egress.allow,
        "egress_deny": config.egress.deny,
        "egress_mode": config.egress.mode,
        "egress_ask_timeout": config.egress.ask_timeout,
        "egress_pins": tuple((p.host, p.address, p.port) for p in config.egress.resolve),
        "env": env,
        "relay_port": relay_port,
        "config_sources": tuple(source.path for source in config.sources),
        "egress_intercept": config.egress.intercept,
        "intercept_exclude": config.egress.intercept_exclude,
        "upstream_ca_file": config.egress.upstream_ca_file,
        "dlp_enabled": config.dlp.enabled,
        "dlp_block": config.dlp.block,
        "dlp_patterns": tuple((p.name, p.regex) for p in config.dlp.patterns),
        "dlp_ignore": config.dlp.ignore,
        "dlp_ignore_fingerprints": config.dlp.ignore_fingerprints,
        "anthropic_credential": config.credentials.anthropic,
        "anthropic_upstream": config.gateway.anthropic_upstream,
        "gateway_ca_file": config.gateway.upstream_ca_file,
        "max_tokens_total": config.gateway.max_tokens_total,
        "oauth_token_url": config.gateway.oauth_token_url,
        "gateway_features": gateway_features(config.gateway),
        "gateway_dlp": config.gateway.dlp,
        "nested_sandbox": config.bottle.nested_sandbox,
        "audit_max": config.bottle.audit_max,
        "audit_rate": config.bottle.audit_rate,
        "workspace_guard": plan_guard(
            str(request.workspace.resolve()),
            state_dir,
            config.bottle.host_tools,
            tuple(str(p) for p in (paths.state_root(), paths.runtime_root(), paths.cache_root())),
        ),
        "git_identity": host_git_identity() if config.bottle.git_identity else None,
        "limits": limits,
        "git_remotes": config.git_remotes,
        "egress_rules": config.egress.rules,
        "rules_in_force": rules_in_force(config),
        "injections": injections,
    }


def _refuse_a_workspace_holding_home(workspace: Path) -> None:
    """The bottle's $HOME is masked (SPEC: backends) and its own; a workspace that is the
    user's home, or holds it, would hand the bottle ~/.ssh, ~/.aws, the keychain's files
    and the user's Claude Code login read-write."""
    import os

    from claude_bottle.errors import ConfigError

    home = Path(os.path.expanduser("~")).resolve()
    if not home.is_relative_to(workspace):  # the common case: a project dir, in ~ or not
        return
    what = "is your home directory" if home == workspace else f"holds your home directory {home}"
    raise ConfigError(
        f"the workspace {workspace} {what}: the bottle would see ~/.ssh, ~/.aws and your "
        "Claude Code login, which it must not",
        "run from a project directory (cd into it), or pass --workspace DIR",
    )


def plan_injections(config: Config, earlier_plan: Path | None = None) -> tuple[InjectionSpec, ...]:
    """Each `[[credentials.inject]]` with a placeholder of its secret's shape, chosen for
    this bottle; the secret is read to learn that shape, and is not kept. A bottle that
    ran before (`resume`) keeps the placeholders its files may hold, while they still
    have the secret's shape."""
    if not config.credentials.inject:
        return ()  # and secret_sources (secrets, shlex) stays unloaded on a start
    from claude_bottle.bundle.secret_sources import (
        injection_key,
        load_secret,
        placeholder_for,
        same_shape,
    )

    earlier = _earlier_placeholders(earlier_plan)
    planned = []
    for index, injection in enumerate(config.credentials.inject):
        secret = load_secret(injection.secret, key=injection_key(index, injection))
        placeholder = earlier.get(injection.env, "")
        if not same_shape(placeholder, secret):
            placeholder = placeholder_for(secret)
        planned.append(injection._replace(placeholder=placeholder))
    return tuple(planned)


def _earlier_placeholders(plan_file: Path | None) -> dict[str, str]:
    import json

    try:
        assert plan_file is not None
        recorded = json.loads(plan_file.read_text())["injections"]
        return {str(i["env"]): str(i["placeholder"]) for i in recorded}
    except (AssertionError, OSError, ValueError, KeyError, TypeError):
        return {}


def rules_in_force(config: Config) -> tuple[RuleSpec, ...]:
    """The `[[egress.rules]]` and built-in rules that apply to the hosts the bottle may
    reach (a built-in set for a host allowed only by a wildcard applies too)."""
    from claude_bottle.bundle.l7 import EgressRule, RuleBook
    from claude_bottle.policy.allowlist import Allowlist

    book = RuleBook(
        (EgressRule(*rule) for rule in config.egress.rules),
        (host for injection in config.credentials.inject for host in injection.hosts),
    )
    allowlist = Allowlist(config.egress.allow, config.egress.deny)
    hosts = [host for host in book.rules if allowlist.check(host).allowed]
    return tuple(
        RuleSpec(rule.host, rule.methods, rule.paths, rule.websocket)
        for rule in book.in_force(hosts)
    )


def gateway_features(gateway: GatewayConfig) -> tuple[str, ...]:
    """The `[gateway]` API feature switches that are on, in a fixed order."""
    switches = {
        "mcp_servers": gateway.mcp_servers,
        "web_fetch": gateway.web_fetch,
        "web_search": gateway.web_search,
        "files": gateway.files,
    }
    return tuple(name for name, on in switches.items() if on)


class Bottle(abc.ABC):
    """A running bottle: run commands in it, copy files in, close it."""

    name: str
    # Killed because the user asked twice (Ctrl-C, SIGTERM): its end is no failure to report.
    stopped_on_request: bool = False
    # Its command was started with `start_detached`: the bottle outlives its launch.
    detached: bool = False

    @abc.abstractmethod
    def exec_claude(self, argv: Sequence[str], tty: bool) -> int:
        """Run the agent attached to this terminal; return its exit status."""

    @abc.abstractmethod
    def exec(self, script: str, timeout: float | None = None) -> ExecResult:
        """Run a shell script inside the bottle, capturing its output."""

    @abc.abstractmethod
    def cp_in(self, src: Path, dest: str) -> None:
        """Copy a host file into the bottle at `dest`."""

    @abc.abstractmethod
    def start_detached(self, argv: Sequence[str], log: Path) -> None:
        """Start the command with its output in `log`, and keep the bottle when launch exits."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the bottle at once (fail closed); the running command ends with it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release this handle; a launched bottle is torn down by its launch context."""

    @abc.abstractmethod
    def alive(self) -> str | None:
        """None while healthy, else a one-line reason (e.g. the bundle died)."""

    def limits_hit(self) -> list[str]:
        """One line per resource limit the bottle ran into (memory kills, refused forks)."""
        return []

    def _stop_on_request(self) -> None:
        """The user asked twice: kill the bottle, and say its end was asked for."""
        self.stopped_on_request = True
        self.kill()


class AgentImages(abc.ABC):
    """The container images bottles run, built with the docker client: the agent image a
    backend runs or packs (a microVM is made from it too). The registry names the one
    provider, so a backend that needs the image knows no other backend by name."""

    @abc.abstractmethod
    def agent_tag(self) -> str:
        """The agent image's content tag now (OSError: its build inputs cannot be read)."""

    @abc.abstractmethod
    def ensure_agent(self, tag: str) -> None:
        """Build the agent image if `tag` is its current tag and the engine lacks it."""

    @abc.abstractmethod
    def build(self, *, rebuild: bool, base_ref: str | None) -> list[str]:
        """`claude-bottle image build`: make sure every image exists (the agent image on
        `base_ref`, `[docker] base_image`, when given); their tags."""


class RecordFields(Protocol):
    """A backend's own fields of its bottles' records: a NamedTuple of its own."""

    def _asdict(self) -> dict[str, Any]: ...


class BottleRecord(NamedTuple):  # not a dataclass: see bundle/settings.py
    """What every backend records of a launched bottle (bottle.json, `state`): `ls`,
    `stop`, `resume` and `cleanup` read these; a backend adds fields of its own."""

    name: str
    backend: str
    workspace: str
    created: float
    status: str
    detached: bool
    processes: dict[str, dict[str, int]]  # role -> process ref (`state.process_ref`)
    runtime_dir: str
    control_socket: str
    env: dict[str, str]
    command: list[str]

    @classmethod
    def launched(
        cls,
        plan: BottlePlan,
        *,
        detached: bool,
        processes: dict[str, dict[str, int]],
        runtime_dir: Path,
        control_socket: str,
    ) -> BottleRecord:
        return cls(
            name=plan.name,
            backend=plan.backend,
            workspace=plan.workspace,
            created=time.time(),
            status="running",
            detached=detached,
            processes=processes,
            runtime_dir=str(runtime_dir),
            control_socket=control_socket,
            env=plan.env,
            command=list(plan.command),
        )

    def write(self, own: RecordFields) -> None:
        """Record the bottle with the backend's own fields beside these."""
        state.write_record(self.name, {**self._asdict(), **own._asdict()})


class Lifecycle(NamedTuple):
    """What the CLI adds to a bottle's record after its launch (`state.update_record`):
    absent until then, so each has a default."""

    owner: dict[str, int] | None = None  # the CLI process attached to it (`state.process_ref`)
    policy: dict[str, object] | None = None  # what it ran with (`cli.policy_record`)
    exit_code: int | None = None
    ended: float | None = None


class StoredBottle(NamedTuple):
    """A bottle's record as read back (`records.read`): the fields every backend records,
    the backend's own (the type its `record_fields` names), and the CLI's."""

    bottle: BottleRecord
    own: RecordFields
    lifecycle: Lifecycle = Lifecycle()


def _nothing() -> None:
    return None


class Launched(NamedTuple):
    """What a backend's `start` made: the running bottle, and what to do when the bottle
    is detached (it outlives the launch, so the launch's undo is dropped)."""

    bottle: Bottle
    on_detach: Callable[[], None] = _nothing


class BottleBackend(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    # Modules a launch imports inside its functions (off a cold start's import path when
    # the run does not need them); the warm process imports them once, ahead of its runs.
    launch_modules: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def preflight(self) -> list[str]:
        """Every missing dependency at once, each with its fix; empty when ready."""

    def require(self) -> None:
        """Raise MissingDependency (exit 3) naming every missing piece at once."""
        problems = self.preflight()
        if problems:
            raise MissingDependency("; ".join(problems))

    def limits_report(self) -> list[str]:
        """For `doctor`: how this backend applies [bottle] limits here, and what is missing."""
        return []

    def doctor_notes(self) -> list[str]:
        """For `doctor`: other choices this backend makes on this host, and why."""
        return []

    @abc.abstractmethod
    def plan(self, request: LaunchRequest) -> BottlePlan:
        """Resolve the request into a plan without side effects."""

    @contextlib.contextmanager
    def launch(self, plan: BottlePlan) -> Iterator[Bottle]:
        """Create every resource (all-or-nothing) and yield the running bottle; tear it
        all down after, unless its command was started detached."""
        with contextlib.ExitStack() as stack:
            launched = self.start(plan, stack)
            try:
                yield launched.bottle
            finally:
                if launched.bottle.detached:
                    stack.pop_all()  # a detached bottle outlives this process
                    launched.on_detach()
                else:
                    state.note_ending(plan.name, processes={})

    @abc.abstractmethod
    def start(self, plan: BottlePlan, stack: contextlib.ExitStack) -> Launched:
        """Create the bottle's resources, each registering its undo on `stack` as it is
        made, and record the bottle (`BottleRecord`); what runs."""

    @abc.abstractmethod
    def record_fields(self) -> type[RecordFields]:
        """The NamedTuple of this backend's own fields in its bottles' records."""

    @abc.abstractmethod
    def attach(self, record: StoredBottle) -> Bottle:
        """A handle on a bottle that another process launched (for `resume`)."""

    @abc.abstractmethod
    def stop(self, record: StoredBottle) -> None:
        """Stop a bottle from its state record (it may have been launched by another process)."""

    @abc.abstractmethod
    def cleanup_plan(self, live_names: set[str], *, images: bool = False) -> CleanupPlan:
        """Leftovers of bottles that are not in `live_names`; with `images`, also our
        images built from other inputs than this installation's that nothing uses."""

    @abc.abstractmethod
    def cleanup(self, plan: CleanupPlan) -> list[str]:
        """Remove what the plan lists; return problems (empty when all went)."""
