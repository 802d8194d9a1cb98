"""What one `[[egress.rules]]` rule and one `[[credentials.inject]]` injection add to a
kept-alive 1 KiB request through TLS interception with DLP.

Run: python benchmarks/l7_overhead.py [--count N] [--rounds R]

Two bundle processes front one loopback TLS upstream (tls_intercept.py's): both
intercept with DLP on; the second also has a rule for the host (GET on the two paths
the client uses) and an injection for it. Three rows, rounds interleaved so background
load hits each alike: the plain bundle; the l7 bundle with a request that carries no
placeholder (what every other request pays); the l7 bundle with `Authorization: Bearer
<placeholder>` (swapped, DLP-masked, and its 1 KiB answer scanned for the secret), next to
the plain bundle with the Authorization header DLP then scans (the masked one), which
any authenticated request pays; and a second plain bundle as a noise control.
Prints the p50 of each row and the added p50 against the plain bundle. A benchmark is
not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from run import pct, read_response
from tls_intercept import (
    HOST,
    WARMUP,
    Route,
    bundle,
    cpu_seconds,
    make_upstream_certs,
    upstream,
)

SECRET = "ghp_" + "Bz7Qw1Er4Ty8Ui2Op5As9Df3Gh6Jk0Lz1Xc4Vb"[:36]  # shaped, issued by nobody
PLACEHOLDER = "ghp_" + "Mn2Bv5Cx8Za1Sd4Fg7Hj0Kl3Qw6Er9Ty2Ui5Op"[:36]


def latencies(route: Route, request: bytes, count: int) -> list[float]:
    out: list[float] = []
    with route.open() as sock:
        buf = bytearray()
        for i in range(count + WARMUP):
            t0 = time.perf_counter()
            sock.sendall(request)
            status, buf = read_response(sock, buf)
            dt = time.perf_counter() - t0
            if status != 200:
                raise ConnectionError(f"status {status}")
            if i >= WARMUP:
                out.append(dt * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from claude_bottle.bundle.settings import InjectionSpec, RuleSpec

    os.environ["CB_BENCH_TOKEN"] = SECRET  # the bundle reads it (env:), as from the host
    plain_request = f"GET /small HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    injected_request = (
        f"GET /small HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {PLACEHOLDER}\r\n\r\n"
    ).encode()
    # What DLP scans of the injected request: its placeholder masked (injection.MASK).
    masked_request = injected_request.replace(
        PLACEHOLDER.encode(), b"claude-bottle-injected-credential"
    )
    l7 = {
        "egress_rules": (RuleSpec(HOST, ("GET",), ("/small", "/bytes/*")),),
        "injections": (
            InjectionSpec((HOST,), "GITHUB_TOKEN", "env:CB_BENCH_TOKEN", (), PLACEHOLDER),
        ),
    }
    with tempfile.TemporaryDirectory(prefix="cbbench-l7-") as tmp:
        ca_file, chain, key = make_upstream_certs(Path(tmp))
        with (
            upstream(chain, key) as up_port,
            bundle(up_port, ca_file, [HOST], intercept=True, dlp=True, name="plain") as plain,
            bundle(up_port, ca_file, [HOST], intercept=True, dlp=True, name="same") as same,
            bundle(up_port, ca_file, [HOST], intercept=True, dlp=True, name="l7", **l7) as ruled,
        ):
            cases = {
                "intercept+dlp": (plain, plain_request),
                "intercept+dlp again (noise control)": (same, plain_request),
                "intercept+dlp, with an Authorization header": (plain, masked_request),
                "+rule+injection, no placeholder": (ruled, plain_request),
                "+rule+injection, placeholder swapped": (ruled, injected_request),
            }
            samples: dict[str, list[float]] = {name: [] for name in cases}
            cpu: dict[str, float] = dict.fromkeys(cases, 0.0)
            for _ in range(args.rounds):
                for name, (route, request) in cases.items():
                    before = cpu_seconds(route.pid)
                    samples[name] += latencies(route, request, args.count)
                    cpu[name] += cpu_seconds(route.pid) - before
    base = pct(samples["intercept+dlp"], 0.5)
    for name, values in samples.items():
        p50 = pct(values, 0.5)
        print(
            f"{name:40s} p50 {p50:.4f} ms  p99 {pct(values, 0.99):.4f} ms  "
            f"added p50 {p50 - base:+.4f} ms  (n={len(values)}, "
            f"mean {statistics.fmean(values):.4f}; bundle CPU "
            f"{cpu[name] / (args.rounds * (args.count + WARMUP)) * 1000:.4f} ms/request)"
        )


if __name__ == "__main__":
    main()
