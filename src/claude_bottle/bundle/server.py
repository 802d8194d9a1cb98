"""The bundle process: one per bottle, serving the egress proxy and the control socket.

Started by the CLI as `python -m claude_bottle.bundle.server SETTINGS.json`.
It listens only on unix sockets in the bottle's runtime dir, is the only
writer of the bottle's audit log, and exits on SIGTERM/SIGINT after writing
a final lifecycle record.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_bottle.bundle.audit import AuditLog
from claude_bottle.bundle.control import MAX_LINE
from claude_bottle.bundle.gate import EgressGate
from claude_bottle.bundle.proxy import Interception, ProxyConnection, Stats
from claude_bottle.bundle.settings import BundleSettings

if TYPE_CHECKING:
    from claude_bottle.bundle.scanning import DlpInspector

MAX_CLIENTS = 1024


class Bundle:
    def __init__(self, settings: BundleSettings) -> None:
        self.settings = settings
        self.audit = AuditLog(Path(settings.audit_log), settings.bottle)
        self.gate = EgressGate(
            settings.allow,
            settings.deny,
            mode=settings.mode,
            pins=settings.pins,
            ask_timeout=settings.ask_timeout,
        )
        self.gate.on_pending = self._on_pending
        self.interception = _interception(settings)
        # Compiling the DLP engine takes a while: it happens in a thread once the bundle
        # serves, and every proxy connection waits for it, so nothing leaves unscanned.
        self._inspector: asyncio.Future[DlpInspector | None] | None = None
        self.stats = Stats()
        self._slots = asyncio.Semaphore(MAX_CLIENTS)
        self._stopping = asyncio.Event()

    def record(self, kind: str, decision: str, **fields: Any) -> None:
        self.audit.record(kind, decision, **fields)

    def _on_pending(self, host: str, port: int) -> None:
        self.record(
            "egress",
            "pending",
            rule="ask",
            host=host[:253],
            port=port,
            detail={"hint": f"claude-bottle allow {self.settings.bottle} {host[:253]}"},
        )

    async def _proxy_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert self._inspector is not None
        inspector = await asyncio.shield(self._inspector)
        async with self._slots:
            await ProxyConnection(
                self.gate,
                self.record,
                self.settings.bottle,
                reader,
                writer,
                self.stats,
                self.interception,
                inspector,
            ).serve()

    async def _control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            answer = await self._control(json.loads(line[:MAX_LINE]))
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
            return {"ok": True, **self.stats.__dict__, "allow": list(self.gate.allowlist.patterns)}
        if op == "allow":
            try:
                pattern = await self.gate.allow(str(request.get("host", "")))
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
            self.record(
                "policy", "info", rule=f"allow:{pattern}", detail={"by": "claude-bottle allow"}
            )
            return {"ok": True, "pattern": pattern}
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
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def run(self, ready_fd: int | None) -> None:
        loop = asyncio.get_running_loop()
        self._inspector = loop.run_in_executor(None, _inspector, self.settings, self.record)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, self._stopping.set)
        for path in (self.settings.proxy_socket, self.settings.control_socket):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        old_umask = os.umask(0o077)
        try:
            proxy = await asyncio.start_unix_server(
                self._proxy_client, self.settings.proxy_socket, limit=256 * 1024, backlog=1024
            )
            control = await asyncio.start_unix_server(
                self._control_client, self.settings.control_socket
            )
        finally:
            os.umask(old_umask)
        # The bottle may run as another uid (docker); the proxy socket must stay connectable.
        os.chmod(self.settings.proxy_socket, 0o666)
        self.record(
            "lifecycle",
            "info",
            rule="bundle-start",
            detail={
                "pid": os.getpid(),
                "allow": list(self.settings.allow),
                "mode": self.settings.mode,
            },
        )
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        async with proxy, control:
            await self._stopping.wait()
        self.record("lifecycle", "info", rule="bundle-stop", detail={**self.stats.__dict__})
        self.audit.close()


def _interception(settings: BundleSettings) -> Interception | None:
    if not (settings.intercept and settings.ca_cert):
        return None
    from claude_bottle.bundle.tls import CertificateAuthority, upstream_context
    from claude_bottle.policy.allowlist import Allowlist

    authority = CertificateAuthority(settings.bottle)
    authority.publish(
        Path(settings.ca_cert), Path(settings.ca_bundle) if settings.ca_bundle else None
    )
    return Interception(
        authority,
        upstream_context(settings.upstream_ca_file),
        Allowlist(settings.intercept_exclude),
    )


def _inspector(settings: BundleSettings, record: Any) -> DlpInspector | None:
    if not settings.dlp_enabled:
        return None
    from claude_bottle.bundle.scanning import default_inspector

    return default_inspector(settings.dlp_patterns, block=settings.dlp_block, record=record)


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM us when the launching CLI dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="claude-bottle-bundle")
    parser.add_argument("settings", type=Path)
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--parent-pid", type=int, help="exit when this process dies")
    args = parser.parse_args(argv)
    if args.parent_pid:
        _die_with_parent()
        if os.getppid() != args.parent_pid:
            sys.exit(1)  # the parent died before we could watch it
    settings = BundleSettings.load(args.settings)
    asyncio.run(Bundle(settings).run(args.ready_fd))


if __name__ == "__main__":
    main()
