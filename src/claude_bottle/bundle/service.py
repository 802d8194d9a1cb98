"""What a bundle serves once it is ready: the egress proxy, the API gateway, the control socket.

`server` gets the bundle ready (audit log, CA, bound sockets) without asyncio; this
module, and asyncio with it, loads after that, while the bottle starts. Connections
made meanwhile wait in the sockets' backlogs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from claude_bottle.bundle.audit import AuditError
from claude_bottle.bundle.body_budget import HeldBytes
from claude_bottle.bundle.control import MAX_LINE, Stats
from claude_bottle.bundle.events import EventStream
from claude_bottle.bundle.gate import EgressGate
from claude_bottle.bundle.git_upstream import ssh_endpoints
from claude_bottle.bundle.held import HeldRequests
from claude_bottle.bundle.l7 import EgressRule, RuleBook
from claude_bottle.bundle.pool import UpstreamPool
from claude_bottle.bundle.server import GATEWAY_BACKLOG, PROXY_BACKLOG
from claude_bottle.bundle.slots import (
    GATEWAY_SLOTS,
    GATEWAY_WAITING,
    PROXY_SLOTS,
    PROXY_WAITING,
    SLOTS_RULE,
    Slots,
    paused_server,
)
from claude_bottle.bundle.supervision import Supervision
from claude_bottle.bundle.tool_calls import MAX_RECORD, ToolCalls

T = TypeVar("T")

if TYPE_CHECKING:
    from claude_bottle.bundle.api_policy import GatewayPolicy
    from claude_bottle.bundle.injection import Injector
    from claude_bottle.bundle.scanning import DlpInspector
    from claude_bottle.bundle.server import Opened
    from claude_bottle.bundle.settings import BundleSettings
    from claude_bottle.policy.dlp import Scanner

CLIENT_END_SECONDS = 2.0  # how long a stopping bundle waits for its cancelled clients
ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
PREPARE_DELAY = 0.5  # seconds after ready; the first proxy connection starts it sooner


class Bundle:
    def __init__(self, opened: Opened) -> None:
        settings = opened.settings
        self.settings = settings
        self._opened = opened
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.audit = opened.audit
        self.injected = opened.injected or {}
        self.gate = EgressGate(
            settings.allow,
            settings.deny,
            mode=settings.mode,
            pins=settings.pins,
            ssh_remotes=ssh_endpoints(settings.git_remotes),
        )
        self.interception = opened.interception
        # Compiling the DLP engine takes a while: it happens in a thread once the bundle
        # serves, and every proxy connection waits for it, so nothing leaves unscanned.
        self._inspector: asyncio.Future[DlpInspector | None] | None = None
        self._preparing = False
        self._preparation_timer: asyncio.TimerHandle | None = None
        self.stats = Stats()
        self.pool = UpstreamPool()  # idle upstream connections, shared by all clients
        # Separate slots: connections to the proxy cannot lock the gateway out.
        self.proxy_slots = Slots(PROXY_SLOTS, PROXY_WAITING, self._slots_full("proxy"))
        self.gateway_slots = Slots(GATEWAY_SLOTS, GATEWAY_WAITING, self._slots_full("gateway"))
        # The git gate's own, as many as the gateway's (it runs at most a few git at once).
        self.git_slots = Slots(GATEWAY_SLOTS, GATEWAY_WAITING, self._slots_full("git"))
        self.held = HeldBytes()  # request bytes held for scanning, by all connections
        self.events = EventStream(settings.bottle)
        self.tool_calls = ToolCalls(self.record, self._scanner)
        self.gate.held = HeldRequests(
            settings.bottle,
            self.record,
            timeout=settings.ask_timeout,
            shared_slots=self.proxy_slots.free,  # a held request gives its slot back
            tool_call=self.tool_calls.describe,
        )
        self.supervision = Supervision(self.gate, self.gate.held, self.events)
        self._clients: set[asyncio.Task[None]] = set()  # ended when the bundle stops
        self._ending = False
        # Built on the first gateway connection: the gateway is not needed to
        # be ready, and the bottle's command takes a while to make its first call.
        self._gateway: tuple[Any, Any, Any] | None = None
        self._gateway_policy: GatewayPolicy | None = None
        self._git_gate: Any = None  # git_gate.GitGate, built on the first git connection
        self.rules = RuleBook(
            (EgressRule(r.host, r.methods, r.paths, r.websocket) for r in settings.egress_rules),
            (host for injection in settings.injections for host in injection.hosts),
        )
        self.injector: Injector | None = None  # made with the DLP engine, off the loop
        # A bundle container's secrets come over the control socket (`bundle/handover.py`):
        # until then nothing that needs them is prepared or served.
        self._handover = asyncio.Event()
        self._handover_taken = False
        self._prepare_wanted = False
        self._host_secrets: dict[str, str] = {}
        self._anthropic: tuple[str | None, str] = (None, "")  # handed: value or problem
        if not settings.handed_secrets:
            self._handover.set()

    def _prepare_inspection(self) -> DlpInspector | None:
        """The upstream trust store (~30 ms), the DLP engine and the proxy's modules, off
        the event loop."""
        import claude_bottle.bundle.proxy  # noqa: F401 - httptools and the proxy

        if self.interception is not None:
            self.interception.warm()
        self.injector, secrets = _injector(self.settings, self.injected)
        secrets = {**self._host_secrets, **secrets}
        return _inspector(self.settings, self.record, self.held, secrets)

    def _prepare_now(self) -> None:
        """Start preparing inspection, once: on the first proxy connection, or
        PREPARE_DELAY after ready, so it does not take CPU from the bottle's start-up
        (nor from a command that ends sooner, which never needs it)."""
        if self._preparing:
            return
        if not self._handover.is_set():
            self._prepare_wanted = True  # started by the handover
            return
        self._preparing = True
        if self._preparation_timer is not None:
            self._preparation_timer.cancel()
        assert self._loop is not None and self._inspector is not None
        _in_daemon_thread(self._loop, self._inspector, self._prepare_inspection)

    def _inspection_prepared(self, future: asyncio.Future[DlpInspector | None]) -> None:
        error = None if future.cancelled() else future.exception()
        if error is not None:  # nothing can be inspected: stop, and say why in bundle.log
            print(f"claude-bottle bundle: cannot inspect traffic: {error}", file=sys.stderr)
            self._stopping.set()

    def _audit_failed(self, failure: AuditError) -> None:
        """From the audit log's writer thread: fail closed, nothing leaves unaudited."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    def _scanner(self) -> Scanner | None:
        """The DLP scanner once it is built (None before, or with DLP off)."""
        future = self._inspector
        if future is None or not future.done() or future.cancelled() or future.exception():
            return None
        inspector = future.result()
        return None if inspector is None else inspector.scanner

    def record(self, kind: str, decision: str, **fields: Any) -> None:
        if self.tool_calls.running:  # advisory: which tool calls ran when this happened
            fields["detail"] = self.tool_calls.tag(kind, fields.get("detail"))
        try:
            self.audit.submit(kind, decision, **fields)
        except AuditError:
            self._stopping.set()  # fail closed: nothing leaves this bottle unaudited
            raise
        self.stats.bytes_up += fields.get("bytes_up", 0)
        self.events.publish(kind, decision, fields)

    def _slots_full(self, server: str) -> Callable[[int], None]:
        def full(turned_away: int) -> None:
            self.record(
                "lifecycle",
                "error",
                rule=SLOTS_RULE,
                detail={"server": server, "turned_away": turned_away},
            )

        return full

    def _client(self, handler: ClientHandler) -> ClientHandler:
        """`handler` as a server callback whose connection ends when the bundle stops,
        even if it is still waiting (for the DLP engine, an upstream, an approval)."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._clients.add(task)
            try:
                if not self._ending:  # else it was accepted as the bundle stopped
                    await handler(reader, writer)
            except asyncio.CancelledError:
                if not self._ending:
                    raise
                # Ended by `_end_clients`: finish normally, or asyncio logs the cancelled
                # callback as an error in the bundle's log.
            finally:
                self._clients.discard(task)
                writer.close()  # a no-op if the handler closed it; else its client would wait

        return serve

    async def _end_clients(self) -> None:
        self._ending = True
        for task in self._clients:
            task.cancel()
        if self._clients:
            await asyncio.wait(self._clients, timeout=CLIENT_END_SECONDS)

    async def _proxy_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert self._inspector is not None
        self._prepare_now()
        inspector = await asyncio.shield(self._inspector)
        from claude_bottle.bundle.proxy import ProxyConnection  # loaded by the preparation

        await ProxyConnection(
            self.gate,
            self.record,
            self.settings.bottle,
            reader,
            writer,
            self.stats,
            self.interception,
            inspector,
            self.pool,
            self.rules,
            self.injector,
        ).serve()

    async def _gateway_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        from claude_bottle.bundle.api_policy import GatewayPolicy
        from claude_bottle.bundle.gateway import AnthropicGateway

        assert self._inspector is not None
        self._prepare_now()
        inspector = await asyncio.shield(self._inspector)  # prompts are scanned too
        if self._gateway is None:  # after the inspector: a handed credential is here by then
            self._gateway = _gateway(self.settings, self.record, self._anthropic)
        if self._gateway_policy is None:
            self._gateway_policy = GatewayPolicy(frozenset(self.settings.gateway_features))
        upstream, credentials, budget = self._gateway
        await AnthropicGateway(
            upstream,
            credentials,
            self.record,
            reader,
            writer,
            budget=budget,
            policy=self._gateway_policy,
            inspector=inspector,
            dlp_block=self.settings.gateway_dlp_block,
            held=self.held,
        ).serve()

    async def _git_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from claude_bottle.bundle.git_gate import GitGateConnection

        assert self._inspector is not None
        if self._git_gate is None:
            self._git_gate = _git_gate(self.settings, self.record)
        self._prepare_now()
        inspector = await asyncio.shield(self._inspector)
        await GitGateConnection(self._git_gate, reader, writer, inspector).serve()

    async def _control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            request = json.loads(line[:MAX_LINE])
            if isinstance(request, dict) and request.get("op") == "subscribe":
                await self.supervision.subscribe(reader, writer)
                return
            answer = await self._control(request)
        except (ValueError, TimeoutError, ConnectionError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        with contextlib.suppress(ConnectionError):
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def _control(self, request: Any) -> dict[str, Any]:
        op = request.get("op") if isinstance(request, dict) else None
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "stats":
            tokens = {}
            if self._gateway is not None:
                budget = self._gateway[2]
                tokens = {
                    "input_tokens": budget.input_tokens,
                    "output_tokens": budget.output_tokens,
                }
            return {
                "ok": True,
                **self.stats.__dict__,
                **tokens,
                "max_tokens_total": self.settings.max_tokens_total,
                "held": self.supervision.held.held,
                "subscribers_dropped": self.events.dropped,
                "hooks_accepted": self.tool_calls.accepted,
                "hooks_dropped": self.tool_calls.dropped,
                "mode": self.gate.mode,
                "allow": list(self.gate.allowlist.patterns),
            }
        supervised = self.supervision.control(op, request)
        if supervised is not None:
            return supervised
        if op == "event":
            detail = request.get("detail")
            self.record(
                "lifecycle",
                "info",
                rule=str(request.get("rule", ""))[:200],
                detail=detail if isinstance(detail, dict) else None,
            )
            return {"ok": True}
        if op == "stop":
            self._stopping.set()
            return {"ok": True}
        if op == "git-credential":
            return self._hand_git_credential(request)
        if op == "secrets":
            return self._take_secrets(request)
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _hand_git_credential(self, request: dict[str, Any]) -> dict[str, Any]:
        """A git remote's credential, resolved by the CLI on the host (a bundle in a
        container cannot run the host's helper). Kept in memory; never echoed or logged."""
        from claude_bottle.bundle.git_upstream import hand_credential

        name, username, password = (request.get(k) for k in ("remote", "username", "password"))
        remote = next((r for r in self.settings.git_remotes if r.name == name), None)
        if remote is None or not isinstance(username, str) or not isinstance(password, str):
            return {"ok": False, "error": "git-credential: no such remote, or not a credential"}
        try:
            hand_credential(remote, username, password)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        self.record("git", "info", rule="git:credential-handed", detail={"remote": remote.name})
        return {"ok": True}

    def _take_secrets(self, request: dict[str, Any]) -> dict[str, Any]:
        """The secrets the CLI resolved on the host (`bundle/handover.py`): taken once."""
        from claude_bottle.bundle.handover import parse

        if not self.settings.handed_secrets:
            return {"ok": False, "error": "secrets: this bundle takes no handed secrets"}
        if self._handover_taken:
            self.record("lifecycle", "deny", rule="control:secrets-refused")
            return {"ok": False, "error": "secrets: already handed (taken once per bundle)"}
        self._handover_taken = True
        try:
            handed = parse(request, self.settings)
        except ValueError as exc:
            self._stopping.set()  # fail closed: it cannot serve without its secrets
            return {"ok": False, "error": str(exc)[:300]}
        self.injected, self._host_secrets = handed.injected, handed.host_secrets
        self._anthropic = (handed.anthropic, handed.anthropic_problem)
        self._handover.set()
        detail = {"injected": sorted(handed.injected), "host_secrets": len(handed.host_secrets)}
        self.record("lifecycle", "info", rule="control:secrets-handed", detail=detail)
        if self._prepare_wanted:
            self._prepare_now()
        return {"ok": True}

    async def run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        inspector: asyncio.Future[DlpInspector | None] = loop.create_future()
        self._inspector = inspector  # proxy connections wait for it
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, self._stopping.set)
        self.audit.on_failure(self._audit_failed)
        opened = self._opened
        proxy = await paused_server(
            self._client(functools.partial(self.proxy_slots.serve, self._proxy_client)),
            opened.proxy,
            PROXY_BACKLOG,
        )
        control = await asyncio.start_unix_server(
            self._client(self._control_client), sock=opened.control
        )
        gateway = None
        if opened.gateway is not None:
            gateway = await paused_server(
                self._client(functools.partial(self.gateway_slots.serve, self._gateway_client)),
                opened.gateway,
                GATEWAY_BACKLOG,
            )
        git = None
        if opened.git is not None:
            git = await paused_server(
                self._client(functools.partial(self.git_slots.serve, self._git_client)),
                opened.git,
                GATEWAY_BACKLOG,
            )
        hooks = None
        if opened.hook is not None:
            hooks = await asyncio.start_unix_server(
                self._client(self.tool_calls.serve), sock=opened.hook, limit=MAX_RECORD + 1
            )
        # What only traffic needs is prepared after the bottle's start-up, not before it.
        inspector.add_done_callback(self._inspection_prepared)
        if not self._preparing:
            self._preparation_timer = loop.call_later(PREPARE_DELAY, self._prepare_now)
        async with proxy, control:
            await self._stopping.wait()
        for server in (gateway, git, hooks):
            if server is not None:
                server.close()
        await self.supervision.stop()
        await self._end_clients()
        self.pool.close()
        self.record("lifecycle", "info", rule="bundle-stop", detail={**self.stats.__dict__})
        self.audit.close()


def _gateway(
    settings: BundleSettings, record: Any, handed: tuple[str | None, str]
) -> tuple[Any, Any, Any]:
    """Upstream, credential provider and token budget of the gateway.

    The credential is read here, in the bundle, from the host, or handed by the CLI (a
    bundle container): it never passes through a file the bottle can see, nor through
    the CLI's arguments.
    """
    from claude_bottle.bundle.credentials import (
        CredentialProvider,
        handed_credential,
        http_refresher,
        load_credential,
    )
    from claude_bottle.bundle.gateway import GatewayUpstream, TokenBudget
    from claude_bottle.bundle.handover import HANDED
    from claude_bottle.errors import BottleError

    upstream_host = urlsplit(settings.anthropic_upstream).hostname or ""
    pin = next((p for p in settings.pins if p.host == upstream_host), None)
    upstream = GatewayUpstream(
        settings.anthropic_upstream,
        ca_file=settings.gateway_ca_file,
        connect_to=(pin.address, pin.port or 443) if pin is not None else None,
    )
    try:
        if settings.anthropic_credential == HANDED:
            token, problem = handed
            if problem:
                raise BottleError(problem)
            credential = handed_credential(token)
        else:
            credential = load_credential(settings.anthropic_credential, os.environ, Path.home())
    except BottleError as exc:
        message = exc.message

        async def unavailable() -> Any:
            raise BottleError(message)

        return upstream, unavailable, TokenBudget(settings.max_tokens_total)
    refresher = None
    if credential.kind == "oauth" and credential.refresh_token:
        refresher = (
            http_refresher(settings.oauth_token_url)
            if settings.oauth_token_url
            else http_refresher()
        )

    def on_error(message: str) -> None:
        record("gateway", "error", rule="gateway:refresh", detail={"reason": message[:300]})

    provider = CredentialProvider(credential, refresher, on_error=on_error)
    return upstream, provider, TokenBudget(settings.max_tokens_total)


def _git_gate(settings: BundleSettings, record: Any) -> Any:
    """The git gate's shared state: its mirrors live in `git_cache`, on the host."""
    from claude_bottle.bundle.git_gate import GitGate
    from claude_bottle.bundle.git_upstream import GitEnv, combined_ca

    assert settings.git_cache is not None
    cache = Path(settings.git_cache)
    # A push is scanned with the bundle's DLP engine (the proxy's), built once.
    gate = GitGate(settings.git_remotes, cache, GitEnv(settings.pins), record)
    gate.prepare()
    ca_file = combined_ca(settings.upstream_ca_file, cache)
    gate.git_env = GitEnv(settings.pins, ca_file)
    return gate


def _in_daemon_thread(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[T], work: Callable[[], T]
) -> None:
    """Settle `future` with `work()` from a daemon thread: unlike the default executor,
    a bundle that is asked to stop never waits for it."""

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result, error = None, None
        try:
            result = work()
        except BaseException as exc:  # handed to whoever awaits the future
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="claude-bottle-build", daemon=True).start()


def _injector(
    settings: BundleSettings, injected: dict[str, str]
) -> tuple[Injector | None, dict[str, str]]:
    """The injections with their secrets, as the CLI handed them (else read here, from a
    source the bundle's host holds: a container bundle's environment); and the values
    DLP must know: each secret, and each placeholder (a canary elsewhere)."""
    if not settings.injections:
        return None, {}
    from claude_bottle.bundle.injection import Injection, Injector
    from claude_bottle.bundle.secret_sources import injection_key, load_secret

    injections = []
    known: dict[str, str] = {}
    for index, spec in enumerate(settings.injections):
        secret = injected.get(spec.env) or load_secret(spec.secret, key=injection_key(index, spec))
        injections.append(
            Injection(spec.env, frozenset(spec.hosts), spec.placeholder.encode(), secret.encode())
        )
        known[f"inject.{spec.env}"] = secret
        known[f"placeholder.{spec.env}"] = spec.placeholder  # scanning.PLACEHOLDER_RULE
    return Injector(injections), known


def _inspector(
    settings: BundleSettings, record: Any, held: HeldBytes, secrets: dict[str, str]
) -> DlpInspector | None:
    if not settings.dlp_enabled:
        return None
    from claude_bottle.bundle.scanning import default_inspector

    return default_inspector(
        settings.dlp_patterns,
        block=settings.dlp_block,
        record=record,
        ignore=(settings.dlp_ignore, settings.dlp_ignore_fingerprints),
        held=held,
        secrets=secrets,
    )
