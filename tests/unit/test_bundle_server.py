"""Getting a bundle ready without asyncio, and stopping it before asyncio has loaded."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from claude_bottle.bundle.audit_chain import verify
from claude_bottle.bundle.server import open_bundle
from claude_bottle.bundle.settings import BundleSettings
from tests.unit.bundle_settings import bundle_settings


def _settings(tmp_path: Path, **extra: object) -> BundleSettings:
    return bundle_settings(tmp_path, gateway_socket=str(tmp_path / "gateway.sock"), **extra)


def _rules(audit_log: str) -> list[str]:
    return [json.loads(line)["rule"] for line in Path(audit_log).read_text().splitlines()]


def test_opened_bundle_listens_and_has_published_its_ca(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        intercept=True,
        ca_cert=str(tmp_path / "ca.pem"),
        ca_bundle=str(tmp_path / "all.pem"),
    )
    opened = open_bundle(settings)
    try:
        # Connections made before anything serves wait in the backlog, not refused.
        for path in (settings.proxy_socket, settings.control_socket, settings.gateway_socket):
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
        assert stat.S_IMODE(Path(settings.proxy_socket).stat().st_mode) == 0o666
        assert stat.S_IMODE(Path(settings.control_socket).stat().st_mode) & 0o077 == 0
        ca = (tmp_path / "ca.pem").read_bytes()
        assert ca.startswith(b"-----BEGIN CERTIFICATE-----")
        assert (tmp_path / "all.pem").read_bytes().endswith(ca)
        opened.audit.sync()
        assert _rules(settings.audit_log) == ["bundle-start"]
    finally:
        opened.close()


def test_stop_before_serving_still_ends_the_audit_log(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings_file = tmp_path / "bundle.json"
    settings.dump(settings_file)
    # What `serve` does up to ready, then a SIGTERM before asyncio is even imported.
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from pathlib import Path
        from claude_bottle.bundle.server import _stop_on_signals, open_bundle
        from claude_bottle.bundle.settings import BundleSettings

        opened = open_bundle(BundleSettings.load(Path({str(settings_file)!r})))
        _stop_on_signals(opened)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        raise SystemExit(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    assert "asyncio" not in done.stderr.decode()
    assert _rules(settings.audit_log) == ["bundle-start", "bundle-stop"]
    assert verify(Path(settings.audit_log)).ok


def test_a_bottle_flooding_its_audit_log_stops_its_bundle(tmp_path: Path) -> None:
    """Issue 27 item 3: past its audit budget the bundle stops (the CLI then stops the
    bottle), saying why, and the log says so as its last record."""
    settings = _settings(tmp_path, audit_max=1 << 30, audit_rate=64 << 10)
    settings_file = tmp_path / "bundle.json"
    settings.dump(settings_file)
    ready_r, ready_w = os.pipe()
    bundle = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claude_bottle.bundle.server",
            str(settings_file),
            "--ready-fd",
            str(ready_w),
        ],
        stderr=subprocess.PIPE,
        pass_fds=(ready_w,),
    )
    os.close(ready_w)
    try:
        with os.fdopen(ready_r, "rb") as ready:
            assert ready.readline() == b"ready\n"
        request = (
            b"GET http://denied.test/" + b"a/" * 900 + b" HTTP/1.1\r\nHost: denied.test\r\n\r\n"
        )
        for _ in range(200):  # ~2 KB of audit log each, ~400 KB in all: six times the budget
            if bundle.poll() is not None:
                break
            # Paced: a batch already submitted is written whole, so a writer starved of CPU
            # on a loaded machine could otherwise take all 200 in one batch before stopping.
            time.sleep(0.005)
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(10)
                with contextlib.suppress(OSError):  # refused or reset once it has stopped
                    client.connect(settings.proxy_socket)
                    client.sendall(request)
                    client.recv(4096)
        _, stderr = bundle.communicate(timeout=60)
    finally:
        bundle.kill()
        bundle.wait()
    assert bundle.returncode != 0
    assert "audit_rate" in stderr.decode()
    assert _rules(settings.audit_log)[-1] == "audit:budget"
    assert verify(Path(settings.audit_log)).ok
    assert Path(settings.audit_log).stat().st_size < 400_000
