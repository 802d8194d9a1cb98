"""The bottle's guarantees, proved from inside a real bottle.

Everything here runs the real CLI, a real sandbox and the real bundle; the
only fakes are the upstream servers on loopback, pinned with
[egress.resolve]. Written against `backend` so every backend must pass it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from claude_bottle.state import process_alive
from tests.integration.conftest import BottleEnv
from tests.integration.upstream import UDPSink

pytestmark = pytest.mark.integration

RAW_REQUEST = """
import socket, sys
def raw(data):
    # Every request here ends with the proxy closing the connection (a refusal, or
    # Connection: close), so read to EOF.
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(data)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out.decode(errors="replace")
"""


def _audit(be: BottleEnv, name: str = "t") -> list[dict[str, object]]:
    lines = (be.state_dir(name) / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_allowed_host_answers_through_the_proxy(bottle_env: BottleEnv) -> None:
    result = bottle_env.sh("curl -sS --max-time 10 http://allowed.test/hello")
    assert result.returncode == 0, result.stderr
    assert "hello from upstream /hello" in result.stdout
    assert [r.path for r in bottle_env.upstream.requests] == ["/hello"]


def test_connect_tunnel_to_allowed_host(bottle_env: BottleEnv) -> None:
    # -p makes curl tunnel through CONNECT even for http://
    result = bottle_env.sh("curl -sS -p --max-time 10 http://allowed.test/tunnelled")
    assert result.returncode == 0, result.stderr
    assert "hello from upstream /tunnelled" in result.stdout
    kinds = [(e["method"], e["decision"]) for e in _audit(bottle_env) if e["kind"] == "egress"]
    assert ("CONNECT", "allow") in kinds


def test_wildcard_allows_subdomain(bottle_env: BottleEnv) -> None:
    result = bottle_env.sh("curl -sS --max-time 10 http://a.wild.test/w")
    assert "hello from upstream /w" in result.stdout, result.stderr


def test_disallowed_host_gets_403_with_block_header(bottle_env: BottleEnv) -> None:
    result = bottle_env.sh(
        "curl -sS -i --max-time 10 http://denied.test/secret; "
        "curl -sS -p -o /dev/null -w '%{http_code}' --max-time 10 http://denied.test/x || true"
    )
    out = result.stdout
    assert "HTTP/1.1 403" in out
    assert "x-claude-bottle-block: deny:not-allowlisted" in out.lower()
    assert "claude-bottle allow t denied.test" in out
    assert bottle_env.upstream.requests == []  # nothing reached the upstream


@pytest.mark.parametrize(
    ("label", "request_bytes", "rule"),
    [
        (
            "ip-literal",
            "GET http://127.0.0.1:{port}/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
            "deny:ip-literal",
        ),
        (
            "decimal-ip",
            "GET http://2130706433:{port}/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
            "deny:ip-literal",
        ),
        (
            "octal-ip",
            "GET http://0177.0.0.1:{port}/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
            "deny:ip-literal",
        ),
        ("ipv6", "GET http://[::1]:{port}/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n", "deny:ip-literal"),
        (
            "userinfo",
            "GET http://allowed.test@denied.test/ HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n",
            "deny:userinfo",
        ),
        (
            "host-header",
            "GET http://denied.test/ HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n",
            "deny:not-allowlisted",
        ),
        (
            "connect-ip",
            "CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n",
            "deny:ip-literal",
        ),
        (
            "origin-form",
            "GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n",
            "error:not-a-proxy-request",
        ),
    ],
)
def test_tricks_are_refused(
    bottle_env: BottleEnv, label: str, request_bytes: str, rule: str
) -> None:
    port = bottle_env.upstream.port
    result = bottle_env.py(
        RAW_REQUEST
        + f"""
print(raw(b"{request_bytes.format(port=port)}"))
"""
    )
    assert f"x-claude-bottle-block: {rule}" in result.stdout.lower(), (
        label,
        result.stdout,
        result.stderr,
    )
    assert bottle_env.upstream.requests == []


def test_host_header_cannot_redirect_an_allowed_request(bottle_env: BottleEnv) -> None:
    result = bottle_env.py(
        RAW_REQUEST
        + """
req = b"GET http://allowed.test/h HTTP/1.1\\r\\nHost: denied.test\\r\\n"
print(raw(req + b"Connection: close\\r\\n\\r\\n"))
"""
    )
    assert "hello from upstream /h" in result.stdout, result.stderr
    (received,) = bottle_env.upstream.requests
    assert received.headers["host"] == "allowed.test"


def test_no_network_but_loopback(bottle_env: BottleEnv) -> None:
    result = bottle_env.py("""
import os, socket
devs = open("/proc/net/dev").read().splitlines()[2:]  # per network namespace
print("ifaces", sorted(line.split(":")[0].strip() for line in devs))
routes = [l for l in open("/proc/net/route").read().splitlines()[1:] if l.strip()]
print("v4routes", len(routes))
v6 = [l for l in open("/proc/net/ipv6_route").read().splitlines() if not l.split()[-1] == "lo"]
print("v6routes", len(v6))
try:
    socket.getaddrinfo("allowed.test", 80)
    print("dns resolved")
except socket.gaierror:
    print("dns failed")
""")
    assert "ifaces ['lo']" in result.stdout, result.stderr
    assert "v4routes 0" in result.stdout
    assert "v6routes 0" in result.stdout
    assert "dns failed" in result.stdout


def test_direct_tcp_udp_and_ipv6_to_host_go_nowhere(bottle_env: BottleEnv) -> None:
    sink = UDPSink()
    try:
        result = bottle_env.py(f"""
import socket
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, {bottle_env.upstream.port}))
        print("tcp connected", host)
    except OSError as e:
        print("tcp failed", host, e.errno)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    try:
        u.sendto(b"leak", ("127.0.0.1", {sink.port}))
    except OSError:
        pass
print("udp sent")
""")
        assert "tcp failed 127.0.0.1" in result.stdout, result.stdout + result.stderr
        assert "tcp failed ::1" in result.stdout
        assert "udp sent" in result.stdout
        assert sink.received() == 0
        assert bottle_env.upstream.requests == []
    finally:
        sink.close()


def test_secrets_and_home_are_invisible(bottle_env: BottleEnv, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE-KEY-MARKER")
    (home / ".netrc").write_text("machine x password NETRC-MARKER")
    bottle_env.env["HOME"] = str(home)
    bottle_env.env["MY_API_KEY"] = "ENV-SECRET-MARKER-1"
    bottle_env.env["GITHUB_TOKEN"] = "ENV-SECRET-MARKER-2"
    result = bottle_env.sh(
        f"env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; ls -la $HOME; "
        f"cat {home}/.ssh/id_ed25519 {home}/.netrc 2>&1; ls /root 2>&1; echo HOME=$HOME"
    )
    combined = result.stdout + result.stderr
    assert f"HOME={home}" in combined
    for marker in (
        "PRIVATE-KEY-MARKER",
        "NETRC-MARKER",
        "ENV-SECRET-MARKER",
        "MY_API_KEY",
        "GITHUB_TOKEN",
    ):
        assert marker not in combined
    assert "No such file" in combined


def test_only_workspace_is_writable(bottle_env: BottleEnv) -> None:
    ws = bottle_env.workspace
    result = bottle_env.sh(
        f"echo ok > {ws}/made-inside && echo ws-ok; "
        "for p in /etc/cb-test /usr/cb-test /var/cb-test /opt/cb-test; do "
        "  (echo x > $p) 2>/dev/null && echo WROTE $p; done; "
        "echo x > /tmp/cb-tmp-test && echo tmp-ok"
    )
    assert "ws-ok" in result.stdout and "tmp-ok" in result.stdout, result.stderr
    assert "WROTE" not in result.stdout
    assert (ws / "made-inside").read_text() == "ok\n"
    assert not Path("/tmp/cb-tmp-test").exists()  # the bottle's /tmp is its own


def test_no_host_unix_sockets_visible(bottle_env: BottleEnv) -> None:
    result = bottle_env.sh(
        "find / -xdev -type s 2>/dev/null; find /run /tmp /var -type s 2>/dev/null"
    )
    sockets = set(result.stdout.split())
    assert sockets <= {
        "/run/claude-bottle/bundle/proxy.sock",
        "/run/claude-bottle/bundle/gateway.sock",
        "/run/claude-bottle/bundle/git.sock",  # the bundle's own bottle-facing services,
        "/run/claude-bottle/bundle/hook.sock",  # also reached through the relay's ports
        "/run/claude-bottle/exec/exec.sock",
    }, sockets


def test_exit_status_propagates(bottle_env: BottleEnv) -> None:
    assert bottle_env.sh("exit 7").returncode == 7
    assert bottle_env.sh("kill -TERM $$").returncode == 128 + signal.SIGTERM


def test_missing_command_fails_like_a_shell(bottle_env: BottleEnv) -> None:
    result = bottle_env.run("/nonexistent/cmd")
    assert result.returncode in (3, 127), result.stderr
    assert "nonexistent" in result.stderr


def test_sigterm_is_forwarded(bottle_env: BottleEnv) -> None:
    proc = bottle_env.start(
        "trap 'echo got-term; exit 42' TERM; echo started; while :; do sleep 0.1; done"
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 42, err
    assert "got-term" in out


def test_audit_log_records_every_decision_and_verifies(bottle_env: BottleEnv) -> None:
    bottle_env.sh(
        "curl -s -o /dev/null --max-time 10 http://allowed.test/a; "
        "curl -s -o /dev/null --max-time 10 http://denied.test/b?token=SHOULD-BE-REDACTED"
    )
    events = [e for e in _audit(bottle_env) if e["kind"] == "egress"]
    assert [(e["host"], e["decision"]) for e in events] == [
        ("allowed.test", "allow"),
        ("denied.test", "deny"),
    ]
    log = bottle_env.state_dir() / "audit.jsonl"
    assert "SHOULD-BE-REDACTED" not in log.read_text()
    rules = [e["rule"] for e in _audit(bottle_env) if e["kind"] == "lifecycle"]
    assert rules[0] == "bundle-start" and rules[-1] == "bundle-stop"
    verified = bottle_env.cli("audit", "verify", str(log))
    assert verified.returncode == 0, verified.stderr
    shown = bottle_env.cli("logs", "t")
    assert "denied.test" in shown.stdout and "allowed.test" in shown.stdout

    lines = log.read_text().splitlines()
    # The allowed request's record (a bundle container's handover record may come first).
    at = next(i for i, line in enumerate(lines) if '"allowed.test"' in line)
    lines[at] = lines[at].replace('"allowed.test"', '"other.test"')
    log.write_text("\n".join(lines) + "\n")
    tampered = bottle_env.cli("audit", "verify", str(log))
    assert tampered.returncode != 0
    assert f"line {at + 1}" in tampered.stdout + tampered.stderr


def test_audit_mode_logs_without_blocking(bottle_env: BottleEnv) -> None:
    bottle_env.config.write_text(
        bottle_env.config.read_text().replace("[egress]", '[egress]\nmode = "audit"')
    )
    result = bottle_env.sh("curl -sS --max-time 10 http://denied.test/audited")
    assert "hello from upstream /audited" in result.stdout, result.stderr
    decisions = [e["decision"] for e in _audit(bottle_env) if e["kind"] == "egress"]
    assert decisions == ["audit-allow"]


def test_allow_command_opens_a_host_for_a_running_bottle(bottle_env: BottleEnv) -> None:
    flag = bottle_env.workspace / "go"
    proc = bottle_env.start(
        f"curl -s -o /dev/null -w '%{{http_code}}\\n' http://denied.test/1; "
        f"while [ ! -e {flag} ]; do sleep 0.05; done; curl -s http://denied.test/2"
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "403"
    allowed = bottle_env.cli("allow", "t", "denied.test")
    assert allowed.returncode == 0, allowed.stderr
    flag.write_text("")
    out, err = proc.communicate(timeout=30)
    assert "hello from upstream /2" in out, err


def test_bundle_death_stops_the_bottle(bottle_env: BottleEnv) -> None:
    proc = bottle_env.start("echo started; sleep 60")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    record = json.loads((bottle_env.state_dir() / "bottle.json").read_text())
    os.kill(record["processes"]["bundle"]["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 125
    assert "bundle" in err and "stopped" in err


def test_bundle_death_is_reported_when_the_command_ends_before_the_watcher_looks(
    bottle_env: BottleEnv,
) -> None:
    flag = bottle_env.workspace / "go"
    proc = bottle_env.start(f"echo started; while [ ! -e {flag} ]; do sleep 0.01; done")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    bundle = json.loads((bottle_env.state_dir() / "bottle.json").read_text())["processes"]["bundle"]
    os.kill(bundle["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_alive(bundle) and time.monotonic() < deadline:
        time.sleep(0.002)
    flag.write_text("")  # the command ends within ~10 ms, well inside the watcher's interval
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 125, err
    assert "bundle" in err and "stopped" in err and "while the command ran" in err
    assert "exit status was 0" in err


def test_a_bundle_that_fails_as_its_service_loads_fails_the_run_and_names_its_log(
    bottle_env: BottleEnv,
) -> None:
    """The shape a broken install takes: ready is said before the event loop loads."""
    if bottle_env.backend != "namespace":
        pytest.skip("the fault comes through PYTHONPATH, which only a host bundle inherits")
    broken = bottle_env.root / "broken-modules"
    broken.mkdir()
    (broken / "uvloop.py").write_text('raise ImportError("uvloop broken on purpose by a test")\n')
    bottle_env.env["PYTHONPATH"] = str(broken)
    result = bottle_env.run("true")
    log = bottle_env.state_dir() / "bundle.log"
    assert result.returncode == 125, result.stderr
    assert "bundle" in result.stderr and f"see {log}" in result.stderr
    assert "uvloop broken on purpose by a test" in log.read_text()


def test_cleanup_after_kill_9_leaves_nothing(bottle_env: BottleEnv) -> None:
    runtime = Path(bottle_env.env["CLAUDE_BOTTLE_RUNTIME_DIR"])
    proc = bottle_env.start("echo started; sleep 60")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    record = json.loads((bottle_env.state_dir() / "bottle.json").read_text())
    proc.kill()
    proc.wait(10)
    listed = bottle_env.cli("ls", "--json")
    (row,) = json.loads(listed.stdout)
    deadline = time.monotonic() + 10
    while row["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
        (row,) = json.loads(bottle_env.cli("ls", "--json").stdout)
    assert row["state"] == "crashed"
    cleaned = bottle_env.cli("cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not any(runtime.iterdir()) if runtime.exists() else True
    deadline = time.monotonic() + 5
    while any(process_alive(ref) for ref in record["processes"].values()):
        assert time.monotonic() < deadline, "bottle processes survived cleanup"
        time.sleep(0.05)
    leftovers = subprocess.run(["pgrep", "-f", str(runtime)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
    assert (bottle_env.state_dir() / "audit.jsonl").exists()  # records stay for review
    assert bottle_env.cli("logs", "t").returncode == 0
