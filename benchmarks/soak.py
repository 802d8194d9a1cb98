"""Soak: one bundle, mixed traffic for a long time; does it leak or slow down?

Called by benchmarks/run.py (the `soak` row, 30 minutes in the full run, 10 seconds in
the CI smoke); alone:

    python benchmarks/soak.py [--minutes 30]

A real bundle process with DLP on (the one run.py's other cases use, reached over its unix
socket as from inside a bottle) and the benchmark's loopback upstream. The loop, until
the time is up:
- a block of 1 KiB GETs on one kept-alive connection through the bundle, and the same
  number straight to the upstream (the anchor for "added" latency);
- every few seconds a 10 MiB download through the bundle;
- every second a POST whose body carries a token-shaped secret: DLP must refuse it (403).
Every 5 s it samples the bundle's resident set (VmRSS) and open descriptors (/proc/PID/fd).

Goals (issue 24), after a warm-up: the peak RSS of the last window at most 10 % above
the first's; no more open descriptors at the last window's peak than at the first's; the
audit log's hash chain verifies after the bundle stops; p99 added latency (bundle p99 −
direct p99) in the last window within 1.2× the first. A window is 5 minutes, or a third
of a shorter run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple

MIB = 1 << 20
HOST = "bench.test"
DOWNLOAD = 10 * MIB
BLOCK = 50  # small requests per block and path
DOWNLOAD_EVERY_S = 5.0
DLP_EVERY_S = 1.0
SAMPLE_EVERY_S = 5.0
WINDOW_S = 300.0
# The audit log grows ~1.7 MiB/s here on an idle machine (~4,300 records a second, ~400
# bytes each), past the defaults of `[bottle] audit_rate` (64 MiB a minute) and, ten
# minutes in, `audit_max` (1 GiB): the bundle then fails closed and stops, as it must for
# a bottle. An agent writes well under 1 MiB a minute; the soak's bundle gets room for
# this load for the whole run.
AUDIT_BYTES_PER_S = 6 * MIB
# Shaped like a GitHub token, issued by nobody; built here so no scanner flags this file.
SECRET = "ghp_" + "S0akT3stT0k3nSh4p3dL1k3Gh1ssu3dByN0" + "b"


class Sample(NamedTuple):
    at: float  # seconds since the start
    rss_kib: int
    fds: int


class Latency(NamedTuple):
    at: float
    via_bundle_ms: float
    direct_ms: float


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def stop(pid: int) -> None:
    """SIGTERM the bundle and wait until it has exited (a zombie until its parent reaps it)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                return
        except OSError:
            return
        time.sleep(0.05)


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytearray]:
    """One HTTP/1.1 response with a Content-Length; (status, what follows it)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the head")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    body = bytearray(rest)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = sock.recv(max(65536, length - len(body)))
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return status, body[length:]


def timed_block(sock: socket.socket, target: str, count: int) -> list[float]:
    """`count` GETs of /small on a kept-alive connection; each one's time in ms."""
    request = f"GET {target}/small HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    buf = bytearray()
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        sock.sendall(request)
        status, buf = read_response(sock, buf)
        times.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise ConnectionError(f"small request answered {status}")
    return times


def one_shot(connect: Callable[[], socket.socket], request: bytes) -> int:
    with connect() as sock:
        sock.sendall(request)
        status, _ = read_response(sock, bytearray())
        return status


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def window_figures(latencies: list[Latency], start: float, end: float) -> dict[str, float]:
    inside = [x for x in latencies if start <= x.at < end]
    if not inside:
        return {}
    ours = [x.via_bundle_ms for x in inside]
    direct = [x.direct_ms for x in inside]
    return {
        "requests": len(inside),
        "p50_added_ms": round(statistics.median(ours) - statistics.median(direct), 3),
        "p99_added_ms": round(p99(ours) - p99(direct), 3),
        "p99_ms": round(p99(ours), 3),
        "direct_p99_ms": round(p99(direct), 3),
    }


def soak(
    seconds: float,
    up_port: int,
    bundle: AbstractContextManager[tuple[Any, int]],
    via_bundle: Callable[[str], socket.socket],
) -> dict[str, Any]:
    """Drive `bundle` (its settings and pid; `via_bundle(proxy_socket)` connects to it)
    for `seconds`; the figures and whether each goal was met."""
    from claude_bottle.bundle.audit_chain import verify

    window = min(WINDOW_S, seconds / 3)
    samples: list[Sample] = []
    latencies: list[Latency] = []
    counts = {"small": 0, "downloads": 0, "dlp_refused": 0, "dlp_missed": 0, "errors": 0}
    errors: list[str] = []

    def direct() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", up_port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    with bundle as (settings, pid):
        proxied = lambda: via_bundle(settings.proxy_socket)  # noqa: E731
        download = f"GET http://{HOST}/bytes/{DOWNLOAD} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        body = f"v={SECRET}".encode()
        leak = (
            f"POST http://{HOST}/small HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        ours_conn, direct_conn = proxied(), direct()
        # Warm up first: the bundle loads its DLP engine and proxy on first use, and the
        # samples compare a warm bundle's first window with its last.
        timed_block(ours_conn, f"http://{HOST}", BLOCK)
        timed_block(direct_conn, "", BLOCK)
        one_shot(proxied, download)
        one_shot(proxied, leak)
        t0 = time.monotonic()
        next_sample = next_download = next_leak = 0.0
        try:
            while (now := time.monotonic() - t0) < seconds:
                if now >= next_sample:  # between requests: nothing in flight
                    samples.append(Sample(round(now, 1), rss_kib(pid), open_fds(pid)))
                    next_sample = now + SAMPLE_EVERY_S
                try:
                    ours = timed_block(ours_conn, f"http://{HOST}", BLOCK)
                    plain = timed_block(direct_conn, "", BLOCK)
                    latencies += [Latency(now, a, b) for a, b in zip(ours, plain, strict=True)]
                    counts["small"] += BLOCK
                    if now >= next_download:
                        status = one_shot(proxied, download)
                        counts["downloads"] += status == 200
                        next_download = now + DOWNLOAD_EVERY_S
                    if now >= next_leak:
                        refused = one_shot(proxied, leak) == 403
                        counts["dlp_refused" if refused else "dlp_missed"] += 1
                        next_leak = now + DLP_EVERY_S
                except (OSError, ValueError) as exc:
                    counts["errors"] += 1
                    errors.append(repr(exc)[:200])
                    for conn in (ours_conn, direct_conn):
                        conn.close()
                    ours_conn, direct_conn = proxied(), direct()
                    if counts["errors"] > 100:
                        break
            samples.append(Sample(round(time.monotonic() - t0, 1), rss_kib(pid), open_fds(pid)))
        finally:
            ours_conn.close()
            direct_conn.close()
        elapsed = time.monotonic() - t0
        stop(pid)  # it writes its last record; the context then removes its directory
        chain = verify(Path(settings.audit_log))
    first = [s for s in samples if s.at < window]
    last = [s for s in samples if s.at >= elapsed - window]
    first_lat = window_figures(latencies, 0, window)
    last_lat = window_figures(latencies, elapsed - window, elapsed + 1)
    # Peaks per window: a sample may fall during a download's buffers or beside a parked
    # upstream connection; a leak raises the last window's peak above the first's.
    rss_first = max(s.rss_kib for s in first)
    rss_last = max(s.rss_kib for s in last)
    rss_growth = rss_last / rss_first - 1
    fds_first = max(s.fds for s in first)
    fds_last = max(s.fds for s in last)
    fd_growth = fds_last - fds_first
    # The added p99 of a window can be ~0 or negative on a quiet loopback: compare the
    # bundle's own p99 when it is.
    base = first_lat.get("p99_added_ms", 0.0)
    key = "p99_added_ms" if base > 0.05 else "p99_ms"
    latency_ratio = last_lat.get(key, 0.0) / first_lat[key] if first_lat.get(key) else None
    return {
        "seconds": round(elapsed, 1),
        "window_s": round(window, 1),
        "counts": counts,
        "error_examples": errors[:3],
        "rss_first_window_mib": round(rss_first / 1024, 1),
        "rss_last_window_mib": round(rss_last / 1024, 1),
        "rss_growth": round(rss_growth, 3),
        "fds_first_window": fds_first,
        "fds_last_window": fds_last,
        "fd_growth": fd_growth,
        "audit_records": chain.records,
        "audit_ok": chain.ok,
        "audit_problem": chain.problem,
        "latency_first_window": first_lat,
        "latency_last_window": last_lat,
        "latency_compared": key,
        "latency_ratio_last_to_first": None if latency_ratio is None else round(latency_ratio, 3),
        "goals_met": {
            "rss_growth_le_10pct": rss_growth <= 0.10,
            "no_fd_growth": fd_growth <= 0,
            "audit_chain_verifies": chain.ok,
            "p99_last_le_1.2x_first": latency_ratio is not None and latency_ratio <= 1.2,
            "dlp_refused_every_leak": counts["dlp_missed"] == 0 and counts["dlp_refused"] > 0,
            "no_errors": counts["errors"] == 0,
        },
    }


def markdown_rows(res: dict[str, Any]) -> list[str]:
    """The soak row of docs/benchmarks.md."""
    if "goals_met" not in res:
        return [f"| soak | {res.get('error', 'not run')} | – | – | – | – |"]
    counts, met = res["counts"], res["goals_met"]
    ratio = res["latency_ratio_last_to_first"]
    what = (
        f"RSS {res['rss_first_window_mib']} → {res['rss_last_window_mib']} MiB "
        f"({res['rss_growth']:+.1%}); fds {res['fds_first_window']} → {res['fds_last_window']}; "
        f"audit chain {'verifies' if res['audit_ok'] else 'BROKEN: ' + res['audit_problem']} "
        f"({res['audit_records']} records); p99 {res['latency_compared'].replace('_', ' ')} "
        f"last ÷ first window {ratio}×; {counts['small']} small requests, "
        f"{counts['downloads']} × 10 MiB, DLP refused {counts['dlp_refused']} of "
        f"{counts['dlp_refused'] + counts['dlp_missed']}, {counts['errors']} errors"
    )
    return [
        f"| soak: one bundle, {res['seconds'] / 60:.1f} min of mixed traffic "
        f"({res['window_s'] / 60:.1f} min windows) | {what} | – | – | "
        "RSS growth ≤ 10 %, no fd growth, chain verifies, p99 last ≤ 1.2× first | "
        f"{'yes' if all(met.values()) else 'no'} |"
    ]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run  # the benchmark's loopback upstream and bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    args = ap.parse_args()
    with run.upstream(DOWNLOAD) as port:
        result = run_soak(args.minutes * 60, port, run.bundle_process, run.unix)
    print(json.dumps(result, indent=2))


def run_soak(
    seconds: float,
    up_port: int,
    bundle_process: Callable[..., AbstractContextManager[tuple[Any, int]]],
    unix: Callable[[str], Callable[[], socket.socket]],
) -> dict[str, Any]:
    """The soak against run.py's `bundle_process` (DLP on) and `unix` connector."""

    def via_bundle(path: str) -> socket.socket:
        return unix(path)()

    audit_max = max(1 << 30, int(seconds * AUDIT_BYTES_PER_S))
    bundle = bundle_process(
        up_port, (HOST,), dlp=True, audit_max=audit_max, audit_rate=AUDIT_BYTES_PER_S * 60
    )
    return soak(seconds, up_port, bundle, via_bundle)


if __name__ == "__main__":
    main()
