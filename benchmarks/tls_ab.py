"""Interleaved A/B of intercepting bundles: two source trees, the same run, the same upstream.

Run: python benchmarks/tls_ab.py BASE_SRC [--size-mib 256] [--runs 5] [--newconn 200]

BASE_SRC is the `src` directory of the tree to compare against (for instance
`git archive main src | tar -x -C /tmp/base` gives /tmp/base/src); B is this tree.
Five bundles run side by side: a plain CONNECT tunnel, and A and B each intercepting
without and with DLP. Each round runs every bundle once (so a slow phase of a shared
machine hits them alike) and reports per case the median MiB/s, the bundle's CPU
seconds per GiB (utime + stime, all its threads; clock ticks, so use large transfers)
and the ratio to the tunnel. Nothing is written; the load average is printed, as it
moves the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import tls_intercept as tls  # this script's directory is first on sys.path

GIB = 1 << 30


@contextmanager
def source_tree(src: str | None) -> Iterator[None]:
    """Bundles started inside import claude_bottle from `src` (None: this tree)."""
    old = os.environ.get("PYTHONPATH")
    if src:
        os.environ["PYTHONPATH"] = src
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base_src", help="the src directory of the tree to compare against")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--newconn", type=int, default=0, help="new-connection requests per round")
    args = ap.parse_args()
    size = args.size_mib << 20
    load = os.getloadavg()[0]
    cases = [
        ("tunnel", False, False, args.base_src),
        ("A", True, False, args.base_src),
        ("B", True, False, None),
        ("A+dlp", True, True, args.base_src),
        ("B+dlp", True, True, None),
    ]
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        ca_file, chain, key = tls.make_upstream_certs(Path(tmp))
        up = stack.enter_context(tls.upstream(chain, key))
        routes: dict[str, tls.Route] = {}
        for name, intercept, dlp, src in cases:
            with source_tree(src):
                routes[name] = stack.enter_context(
                    tls.bundle(up, ca_file, [tls.HOST], intercept=intercept, dlp=dlp, name=name)
                )
        for kind, transfer in (("download", tls.download), ("upload", tls.upload)):
            speed: dict[str, list[float]] = {name: [] for name in routes}
            cpu: dict[str, list[float]] = {name: [] for name in routes}
            for _ in range(args.runs):
                for name, route in routes.items():
                    before = tls.cpu_seconds(route.pid)
                    mib_s, _ = transfer(route, size)
                    speed[name].append(mib_s)
                    cpu[name].append((tls.cpu_seconds(route.pid) - before) / (size / GIB))
            tunnel = statistics.median(speed["tunnel"])
            for name in routes:
                median = statistics.median(speed[name])
                print(
                    f"{kind:8} {name:6} {median:6.0f} MiB/s ({min(speed[name]):.0f}-"
                    f"{max(speed[name]):.0f}), {statistics.median(cpu[name]):.2f} CPU s/GiB, "
                    f"{median / tunnel:.2f}x tunnel"
                )
        if args.newconn:
            latencies: dict[str, list[float]] = {name: [] for name in routes}
            for _ in range(4):
                for name, route in routes.items():
                    latencies[name] += tls.newconn_latencies(route, args.newconn)[0]
            for name in routes:
                p50, p99 = (tls.pct(latencies[name], q) for q in (0.5, 0.99))
                print(f"newconn  {name:6} p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    print(f"load average (1 min) at start {load:.2f}, at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
