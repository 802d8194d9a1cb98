# ruff: noqa: E501  (markdown table rows are long lines)
"""The cost of TLS interception in the bundle, against a plain CONNECT tunnel and direct TLS.

Run: python benchmarks/tls_intercept.py [--quick] [--profile DIR]

Three bundle processes (interception off; on; on with DLP) front one TLS
upstream on 127.0.0.1, signed by a throwaway CA. The client is Python's
ssl module over the bundle's unix socket: CONNECT, then TLS to the
upstream itself (tunnel: verified with the test CA) or to the bundle
(intercepted: verified with the bundle's published CA). Direct TLS to the
upstream is the floor. Bulk runs are interleaved across cases; each row
reports the median and (min–max). Writes benchmarks/results-tls.json and
docs/benchmarks-tls.md (benchmarks/run.py rewrites docs/benchmarks.md
whole, so this report lives in its own file). With --profile, py-spy
samples the intercepted bundle during extra downloads and uploads and the
report gains a "where the time goes" table. A benchmark is not a test:
nothing here asserts.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from run import (
    bundle_process,
    free_port,
    machine,
    pct,
    read_head,
    read_response,
    server_process,
    stats,
    wait_port,
)

# The sibling benchmark's helpers (this script's directory is first on sys.path).
from run import download as download_bytes
from tls_report import WARMUP, markdown

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results-tls.json"
DOC = ROOT / "docs" / "benchmarks-tls.md"
MIB = 1 << 20
HOST = "bench.test"
MITMDUMP = HERE / ".cache" / "mitm" / "bin" / "mitmdump"  # benchmarks/install.sh puts it there


# ---------------------------------------------------------------- certificates


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    sans: list[str],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_upstream_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for HOST and *.HOST: (ca file, chain file, key file)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("bench test CA", ca_key, None, ca_key, [])
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert(HOST, key, ca, ca_key, [HOST, f"*.{HOST}"])
    ca_file, chain, key_file = directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, chain, key_file


# ---------------------------------------------------------------- upstream

# Blocking ssl sockets, one thread per connection: OpenSSL does the work with the GIL
# released, so the floor is as high as this machine allows. /bytes/N sends N bytes,
# any request body is read and dropped, everything else gets 1 KiB; keep-alive always.
UPSTREAM_CODE = r"""
import socket, ssl, sys, threading
SMALL = b"x" * 1024
CHUNK = b"\0" * (1 << 20)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
ctx.set_alpn_protocols(["http/1.1"])
def serve(raw):
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        conn = ctx.wrap_socket(raw, server_side=True)
    except OSError:
        raw.close()
        return
    buf = bytearray()
    sink = bytearray(1 << 20)
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, rest = bytes(buf).partition(b"\r\n\r\n")
            buf = bytearray(rest)
            lines = head.split(b"\r\n")
            path = lines[0].split(b" ", 2)[1]
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            take = min(length, len(buf))
            del buf[:take]
            length -= take
            while length > 0:
                n = conn.recv_into(sink, min(len(sink), length))
                if not n:
                    return
                length -= n
            if path.startswith(b"/bytes/"):
                n = int(path[7:])
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                while n > 0:
                    piece = CHUNK if n >= len(CHUNK) else CHUNK[:n]
                    conn.sendall(piece)
                    n -= len(piece)
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + SMALL)
    except OSError:
        pass
    finally:
        conn.close()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(1024)
print(listener.getsockname()[1], flush=True)
while True:
    raw, _ = listener.accept()
    threading.Thread(target=serve, args=(raw,), daemon=True).start()
"""


def upstream(chain: Path, key: Path) -> AbstractContextManager[int]:
    return server_process(UPSTREAM_CODE, str(chain), str(key))


# ---------------------------------------------------------------- bundles and clients


@dataclass
class Route:
    """How a client reaches HOST over TLS for one case."""

    name: str
    context: ssl.SSLContext  # verifies whoever terminates the client's TLS
    proxy_socket: str | None = None  # None: straight to the upstream
    up_port: int = 0
    pid: int = 0  # the bundle's pid (0 for direct)
    proxy_port: int = 0  # a proxy on TCP (mitmdump): CONNECT to the upstream's address

    def open(self, host: str = HOST) -> ssl.SSLSocket:
        if self.proxy_socket is None and not self.proxy_port:
            sock = socket.create_connection(("127.0.0.1", self.up_port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            target = f"{host}:443"
            if self.proxy_port:
                sock = socket.create_connection(("127.0.0.1", self.proxy_port), timeout=30)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                target = f"127.0.0.1:{self.up_port}"  # it resolves no pinned names
            else:
                assert self.proxy_socket is not None
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(30)
                sock.connect(self.proxy_socket)
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head, rest = read_head(sock, bytearray())
            if b" 200" not in head.split(b"\r\n")[0] or rest:
                raise ConnectionError(f"CONNECT refused: {head[:120]!r}")
        return self.context.wrap_socket(sock, server_hostname=host)


def client_context(ca_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["http/1.1"])
    return context


@contextmanager
def bundle(
    up_port: int,
    ca_file: Path,
    hosts: list[str],
    *,
    intercept: bool,
    dlp: bool,
    name: str,
    **extra: Any,
) -> Iterator[Route]:
    with bundle_process(
        up_port,
        tuple(hosts),
        intercept=intercept,
        dlp=dlp,
        upstream_ca_file=str(ca_file),
        **extra,
    ) as (settings, pid):
        trusted = Path(settings.ca_cert) if settings.ca_cert else ca_file
        yield Route(name, client_context(trusted), settings.proxy_socket, pid=pid)


@contextmanager
def mitmdump(up_port: int, ca_file: Path) -> Iterator[Route | None]:
    """mitmdump intercepting TLS (its own CA, the test CA trusted upstream, bodies over
    1 MiB streamed as they come rather than buffered whole); None if not installed."""
    if not MITMDUMP.exists():
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cbbench-mitm-") as tmp:
        argv = [str(MITMDUMP), "-q", "--listen-host", "127.0.0.1", "-p", str(port)]
        for option in (
            f"confdir={tmp}",
            f"ssl_verify_upstream_trusted_ca={ca_file}",
            "stream_large_bodies=1m",
        ):
            argv += ["--set", option]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ca = Path(tmp) / "mitmproxy-ca-cert.pem"
            ok = wait_port(port, 30) and ca.exists()
            context = client_context(ca) if ok else None
            yield (
                Route("mitmdump", context, up_port=up_port, pid=proc.pid, proxy_port=port)
                if context
                else None
            )
        finally:
            proc.terminate()
            proc.wait(10)


def fs_type(path: str) -> str:
    """The filesystem type holding `path` (from /proc/mounts), e.g. ext4 or tmpfs."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    real = os.path.realpath(path)
    for line in mounts:
        parts = line.split()
        if len(parts) < 3 or len(parts[1]) <= len(best):
            continue
        if real == parts[1] or real.startswith(parts[1].rstrip("/") + "/"):
            best, kind = parts[1], parts[2]
    return kind


def git_state() -> dict[str, Any] | None:
    """The commit measured, and which product files differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"head": head[:80], "dirty": [line[3:] for line in status.splitlines()]}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def download(route: Route, size: int) -> tuple[float, float]:
    """MiB/s for one GET of `size` bytes (connection set up before the clock starts),
    and the bundle's CPU use over the transfer as a fraction of one core."""
    with route.open() as sock:
        cpu0, t0 = cpu_seconds(route.pid), time.perf_counter()
        speed = download_bytes(sock, size)
        dt = time.perf_counter() - t0
        return speed, (cpu_seconds(route.pid) - cpu0) / dt


def upload(route: Route, size: int) -> tuple[float, float]:
    """MiB/s for one POST of `size` bytes until its response arrives, and bundle CPU."""
    block = memoryview(b"a" * MIB)  # plain text: the DLP engine scans every byte
    with route.open() as sock:
        cpu0, t0 = cpu_seconds(route.pid), time.perf_counter()
        sock.sendall(
            f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {size}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            sock.sendall(piece)
            left -= len(piece)
        status, _ = read_response(sock, bytearray())
        dt = time.perf_counter() - t0
        if status != 200:
            raise ConnectionError(f"upload status {status}")
        return size / MIB / dt, (cpu_seconds(route.pid) - cpu0) / dt


SMALL_REQUEST = f"GET /small HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def keepalive_latencies(route: Route, count: int) -> list[float]:
    lat: list[float] = []
    with route.open() as sock:
        buf = bytearray()
        for i in range(count + WARMUP):
            t0 = time.perf_counter()
            sock.sendall(SMALL_REQUEST)
            status, buf = read_response(sock, buf)
            dt = time.perf_counter() - t0
            if status != 200:
                raise ConnectionError(f"status {status}")
            if i >= WARMUP:
                lat.append(dt * 1000)
    return lat


def one_new_connection(route: Route, host: str) -> tuple[float, float]:
    """ms for connect + CONNECT + TLS handshake + one 1 KiB GET, and ms until the handshake is done."""
    t0 = time.perf_counter()
    sock = route.open(host)  # wrap_socket handshakes at once (do_handshake_on_connect)
    t1 = time.perf_counter()
    with sock:
        sock.sendall(f"GET /small HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status, _ = read_response(sock, bytearray())
    t2 = time.perf_counter()
    if status != 200:
        raise ConnectionError(f"status {status}")
    return (t2 - t0) * 1000, (t1 - t0) * 1000


def newconn_latencies(route: Route, count: int) -> tuple[list[float], list[float]]:
    total: list[float] = []
    opening: list[float] = []
    for i in range(count + WARMUP):
        t, o = one_new_connection(route, HOST)
        if i >= WARMUP:
            total.append(t)
            opening.append(o)
    return total, opening


# ---------------------------------------------------------------- statistics


def latency_row(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(values, 0.5), 4),
        "p99_ms": round(pct(values, 0.99), 4),
        "min_ms": round(min(values), 4),
        "max_ms": round(max(values), 4),
        "n": len(values),
    }


# ---------------------------------------------------------------- cases


def case_transfer(routes: dict[str, Route], kind: str, size: int, runs: int) -> dict[str, Any]:
    fn: Callable[[Route, int], tuple[float, float]] = download if kind == "download" else upload
    speeds: dict[str, list[float]] = {name: [] for name in routes}
    cpu: dict[str, list[float]] = {name: [] for name in routes}
    errors: dict[str, str] = {}
    for _ in range(runs):  # interleaved, so background load hits every case alike
        for name, route in routes.items():
            if name in errors:
                continue
            try:
                mib_s, busy = fn(route, size)
            except Exception as exc:
                errors[name] = repr(exc)
                print(f"  {kind} {name}: FAILED {exc!r}")
                continue
            speeds[name].append(mib_s)
            cpu[name].append(busy)
    out: dict[str, Any] = {}
    for name in routes:
        if name in errors:
            out[name + "_error"] = errors[name]
            continue
        out[name] = stats(speeds[name], 1)
        if routes[name].pid:
            out[name]["bundle_cpu_cores"] = round(statistics.median(cpu[name]), 3)
        print(
            f"  {kind} {name}: {out[name]['median']:.0f} MiB/s "
            f"({out[name]['min']:.0f}–{out[name]['max']:.0f})"
            + (
                f", bundle CPU {out[name]['bundle_cpu_cores']:.2f} cores"
                if routes[name].pid
                else ""
            )
        )
    return out


def case_small(routes: dict[str, Route], count: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, route in routes.items():
        try:
            cpu0 = cpu_seconds(route.pid)
            out[f"keepalive/{name}"] = latency_row(keepalive_latencies(route, count))
            if route.pid:
                per = (cpu_seconds(route.pid) - cpu0) / (count + WARMUP) * 1000
                out[f"keepalive/{name}"]["bundle_cpu_ms_per_request"] = round(per, 4)
            total, opening = newconn_latencies(route, count)
            out[f"newconn/{name}"] = latency_row(total)
            out[f"newconn/{name}"]["open_p50_ms"] = round(pct(opening, 0.5), 4)
        except Exception as exc:
            out[f"{name}_error"] = repr(exc)
            print(f"  small {name}: FAILED {exc!r}")
            continue
        k, n = out[f"keepalive/{name}"], out[f"newconn/{name}"]
        print(
            f"  small {name}: keep-alive p50 {k['p50_ms']:.3f} p99 {k['p99_ms']:.3f} ms; "
            f"new conn p50 {n['p50_ms']:.3f} p99 {n['p99_ms']:.3f} ms"
        )
    return out


def case_cold(route: Route, names: list[str]) -> dict[str, Any]:
    """First connection to names the bundle has never seen: each mints a leaf certificate."""
    total: list[float] = []
    opening: list[float] = []
    for host in names:
        t, o = one_new_connection(route, host)
        total.append(t)
        opening.append(o)
    row: dict[str, Any] = latency_row(total)
    row["open_p50_ms"] = round(pct(opening, 0.5), 4)
    row["first_ever_ms"] = round(total[0], 4)  # also the bundle's first executor job
    print(
        f"  cold leaf: p50 {row['p50_ms']:.3f} ms p99 {row['p99_ms']:.3f} ms, first {total[0]:.1f} ms"
    )
    return row


def case_mint(count: int) -> dict[str, Any]:
    """Leaf minting alone, in this process: CertificateAuthority.server_context for new names."""
    from claude_bottle.bundle.tls import CertificateAuthority

    authority = CertificateAuthority("bench")
    times: list[float] = []
    for i in range(count):
        t0 = time.perf_counter()
        authority.server_context(f"mint-{i}.{HOST}")
        times.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    authority.server_context(f"mint-0.{HOST}")
    cached = (time.perf_counter() - t0) * 1000
    row: dict[str, Any] = stats(times)
    row["cached_ms"] = round(cached, 4)
    print(f"  leaf mint in-process: {row['median']:.3f} ms (cached {cached:.4f} ms)")
    return row


# ---------------------------------------------------------------- profile

# A sample is charged to the innermost frame that matches a rule (first matching rule wins).
CATEGORIES: list[tuple[str, Callable[[str], bool]]] = [
    ("DLP scan", lambda f: "bundle/scanning.py" in f or "policy/dlp.py" in f),
    ("audit record (JSON, hash chain, write)", lambda f: "bundle/audit" in f),
    ("OpenSSL encrypt/decrypt (SSLObject.read/write)", lambda f: "(ssl.py" in f),
    ("HTTP parse/frame (http1, llhttp)", lambda f: "bundle/http1.py" in f),
    ("asyncio streams", lambda f: "(asyncio/streams.py" in f),
    ("asyncio loop, tasks, timeouts", lambda f: "(asyncio/" in f),
    ("bundle proxy code", lambda f: "claude_bottle/" in f),
]
PROFILE_RATE = 250


def categorize(raw: Path) -> dict[str, Any]:
    """Bucket py-spy raw (collapsed) stacks.

    Recorded with --threads: the event loop's thread (MainThread) is bucketed; other
    threads (audit syncer, executor) only counted, as py-spy's idle detection in
    --nonblocking mode is loose for them. py-spy drops samples of a thread it sees idle;
    a loop thread inside `epoll_wait` that it still counts is reported apart, not as work.
    """
    buckets: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    others: collections.Counter[str] = collections.Counter()
    total = polling = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        thread, _, rest = stack.partition(";")
        if "MainThread" not in thread:
            others[thread.split(": ", 1)[-1]] += count
            continue
        frames = rest.split(";")
        total += count
        if "(selectors.py" in frames[-1]:
            polling += count
            continue
        leaves[frames[-1]] += count
        for frame in reversed(frames):
            label = next((name for name, match in CATEGORIES if match(frame)), None)
            if label:
                buckets[label] += count
                break
        else:
            buckets["other"] += count
    busy = max(1, total - polling)
    return {
        "samples": total,
        "other_thread_samples": dict(others.most_common()),
        "epoll_share": round(polling / max(1, total), 3),
        "busy_share_by_category": {k: round(v / busy, 3) for k, v in buckets.most_common()},
        "top_leaf_frames": [
            {"frame": k, "busy_share": round(v / busy, 3)} for k, v in leaves.most_common(12)
        ],
    }


def _small_burst(route: Route, size: int) -> tuple[float, float]:
    keepalive_latencies(route, 500)
    return 0.0, 0.0


def profile(route: Route, out_dir: Path, size: int, seconds: int) -> dict[str, Any]:
    """py-spy the bundle while the client repeats one kind of work for `seconds`."""
    exe = shutil.which("py-spy")
    if not exe:
        return {"error": "py-spy not installed (pip install py-spy)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    work: dict[str, Callable[[Route, int], tuple[float, float]]] = {
        "download": download,
        "upload": upload,
        "small keep-alive": _small_burst,
    }
    for kind, fn in work.items():
        stem = out_dir / f"{route.name.replace('+', '-')}-{kind.replace(' ', '-')}"
        argv = [exe, "record", "--pid", str(route.pid), "--rate", str(PROFILE_RATE)]
        argv += ["--nonblocking", "--threads", "--duration", str(seconds), "--format", "raw"]
        argv += ["-o", f"{stem}.txt"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # let py-spy attach
        end = time.monotonic() + seconds - 1.5
        while time.monotonic() < end:
            fn(route, size)
        _, err = proc.communicate(timeout=seconds + 30)
        if proc.returncode != 0 or not Path(f"{stem}.txt").exists():
            result[kind] = {"error": err.strip()[-300:]}
            continue
        result[kind] = categorize(Path(f"{stem}.txt"))
        result[kind]["raw_file"] = f"{stem}.txt"
        top = list(result[kind]["busy_share_by_category"].items())[:4]
        print(f"  profile {route.name} {kind}: {top}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 MiB, 3 runs, 200 requests")
    ap.add_argument(
        "--smoke", action="store_true", help="every case once at toy sizes (the harness runs)"
    )
    ap.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write results-tls.json and benchmarks-tls.md here instead of into the repository",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also py-spy the intercepted bundle; raw stacks go to DIR",
    )
    args = ap.parse_args()
    q = args.quick or args.smoke
    runs = 1 if args.smoke else 3 if q else 5
    size_mib = 4 if args.smoke else 32 if q else 256
    count = 30 if args.smoke else 200 if q else 500
    cold_names = [f"cold-{i}.{HOST}" for i in range(3 if args.smoke else 10 if q else 30)]
    results, doc = (
        (RESULTS, DOC) if args.out is None else (args.out / RESULTS.name, args.out / DOC.name)
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": q,
        "machine": {
            **machine(),
            "openssl": ssl.OPENSSL_VERSION,
            "audit_log_fs": fs_type(tempfile.gettempdir()),
        },
        "size_mib": size_mib,
        "runs": runs,
        "count": count,
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    res["loadavg"] = [round(os.getloadavg()[0], 2)]
    res["git"] = git_state()
    hosts = [HOST, *cold_names]
    with tempfile.TemporaryDirectory(prefix="cbbench-tls-ca-") as tmp, ExitStack() as stack:
        ca_file, chain, key = make_upstream_certs(Path(tmp))
        up = stack.enter_context(upstream(chain, key))
        routes: dict[str, Route] = {"direct": Route("direct", client_context(ca_file), up_port=up)}
        for name, intercept, dlp in (
            ("tunnel", False, False),
            ("intercept", True, False),
            ("intercept+dlp", True, True),
        ):
            routes[name] = stack.enter_context(
                bundle(up, ca_file, hosts, intercept=intercept, dlp=dlp, name=name)
            )
        mitm = stack.enter_context(mitmdump(up, ca_file))
        if mitm is None:
            print(f"mitmdump: not installed ({MITMDUMP}; benchmarks/install.sh) - skipped")
        else:
            routes["mitmdump"] = mitm
        print("leaf mint")
        res["mint"] = case_mint(5 if args.smoke else 20 if q else 50)
        print("cold leaf")
        res["cold"] = case_cold(routes["intercept"], cold_names)
        print("bulk download")
        res["download"] = case_transfer(routes, "download", size_mib * MIB, runs)
        print("bulk upload")
        res["upload"] = case_transfer(routes, "upload", size_mib * MIB, runs)
        print("small requests")
        res["small"] = case_small(routes, count)
        if args.profile:
            print("profile")
            res["profile"] = {
                name: profile(routes[name], args.profile, size_mib * MIB, 8 if q else 12)
                for name in ("intercept", "intercept+dlp")
            }
    res["loadavg"].append(round(os.getloadavg()[0], 2))
    results.write_text(json.dumps(res, indent=2) + "\n")
    flag = " --smoke" if args.smoke else " --quick" if q else ""
    command = "python benchmarks/tls_intercept.py" + flag
    if args.profile:
        command += f" --profile {args.profile}"
    doc.write_text(markdown(res, command))
    print(f"wrote {results}, {doc}")


if __name__ == "__main__":
    main()
