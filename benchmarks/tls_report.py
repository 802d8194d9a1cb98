# ruff: noqa: E501  (markdown table rows are long lines)
"""The report of `benchmarks/tls_intercept.py`: docs/benchmarks-tls.md from its results.

Which cases there are and how they are labelled, the tables, the method, and the notes
(what was measured and changed, with the A/B figures) that every run writes again.
"""

from __future__ import annotations

from typing import Any

WARMUP = 20
CASES = ("direct", "tunnel", "intercept", "intercept+dlp", "mitmdump")
LABELS = {
    "direct": "direct TLS (floor)",
    "tunnel": "CONNECT tunnel (intercept off)",
    "intercept": "intercepted",
    "intercept+dlp": "intercepted + DLP",
    "mitmdump": "mitmdump intercepting",
}


def fmt(d: dict[str, Any] | None, unit: str = "MiB/s") -> str:
    if not d:
        return "n/a"
    return f"{d['median']:.0f} {unit} ({d['min']:.0f}–{d['max']:.0f})"


def lat(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    return f"{d['p50_ms']:.3f} / {d['p99_ms']:.3f}"


def markdown(res: dict[str, Any], command: str) -> str:
    m = res["machine"]
    size = res["size_mib"]
    L = [
        "# Benchmarks: TLS interception",
        "",
        f"Command: `{command}` (writes `benchmarks/results-tls.json` and this file).",
        f"Machine: {m['cores']} cores, {m['platform']}, Python {m['python']}, {m['openssl']}; run {res['when']}.",
        f"Load average (1 min) at start / end: {res['loadavg'][0]:.2f} / {res['loadavg'][1]:.2f} (other work on the machine",
        "shows here; the cases interleave so it hits them alike, but spreads widen).",
        "",
        "What interception costs on top of a plain CONNECT tunnel: the bundle terminates the client's TLS",
        "with a leaf certificate minted by its per-bottle CA, parses every request and response with llhttp",
        "(and with DLP on scans every request body), and speaks TLS to the upstream itself. Direct TLS",
        "from the client to the upstream is the floor. Throughput: median MiB/s (min–max) over",
        f"{res['runs']} runs; latency: p50 / p99 ms over {res['count']} requests after {WARMUP} warm-ups.",
        "",
    ]
    head = (
        "| case | "
        + " | ".join(LABELS[c] for c in CASES)
        + " | intercepted ÷ tunnel (with DLP); ÷ mitmdump |"
    )
    L += [head, "|---" * (len(CASES) + 2) + "|"]
    for kind, label in (
        ("download", f"bulk download {size} MiB (GET), MiB/s"),
        ("upload", f"bulk upload {size} MiB (POST), MiB/s"),
    ):
        row = res[kind]
        t, i, d = row.get("tunnel"), row.get("intercept"), row.get("intercept+dlp")
        ratio = f"{i['median'] / t['median']:.2f}×" if t and i else "n/a"
        if t and d:
            ratio += f" ({d['median'] / t['median']:.2f}×)"
        if i and row.get("mitmdump"):
            ratio += f"; {i['median'] / row['mitmdump']['median']:.1f}×"
        cells = [fmt(row.get(c)) for c in CASES]
        L.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
        cpu = [
            f"{row[c]['bundle_cpu_cores']:.2f}"
            if row.get(c) and "bundle_cpu_cores" in row[c]
            else "–"
            for c in CASES
        ]
        L.append("| … proxy CPU during it, cores | " + " | ".join(cpu) + " | |")
    small = res["small"]
    for mode, label in (
        ("keepalive", "1 KiB GET, one kept-alive TLS connection, p50 / p99 ms"),
        ("newconn", "1 KiB GET, new connection + TLS handshake each (warm leaf), p50 / p99 ms"),
    ):
        cells = [lat(small.get(f"{mode}/{c}")) for c in CASES]
        t, i = small.get(f"{mode}/tunnel"), small.get(f"{mode}/intercept")
        added = (
            f"{i['p50_ms'] - t['p50_ms']:+.3f} / {i['p99_ms'] - t['p99_ms']:+.3f} ms"
            if t and i
            else "n/a"
        )
        L.append(f"| {label} | " + " | ".join(cells) + f" | {added} |")
    cpu = [
        f"{small[f'keepalive/{c}']['bundle_cpu_ms_per_request']:.3f}"
        if "bundle_cpu_ms_per_request" in small.get(f"keepalive/{c}", {})
        else "–"
        for c in CASES
    ]
    L.insert(
        -1,
        "| … proxy CPU per kept-alive request (all its threads), ms | " + " | ".join(cpu) + " | |",
    )
    cold = res.get("cold")
    warm = small.get("newconn/intercept")
    if cold:
        extra = (
            f"{cold['p50_ms'] - warm['p50_ms']:+.3f} / {cold['p99_ms'] - warm['p99_ms']:+.3f} ms over warm"
            if warm
            else ""
        )
        L.append(
            f"| 1 KiB GET, new connection to a name never seen (cold leaf, {cold['n']} names), p50 / p99 ms | – | – | "
            f"{lat(cold)} (first after start {cold['first_ever_ms']:.1f}) | – | – | {extra} |"
        )
    mint = res.get("mint")
    if mint:
        L.append(
            f"| leaf mint alone (`CertificateAuthority.server_context`, in-process), ms | – | – | "
            f"{mint['median']:.2f} ({mint['min']:.2f}–{mint['max']:.2f}); cached {mint['cached_ms']:.4f} | – | – | |"
        )
    if res.get("git"):
        g = res["git"]
        dirty = f"; uncommitted changes in {', '.join(g['dirty'])}" if g["dirty"] else ""
        L.insert(4, f"Code: commit {g['head'].split()[0]}{dirty}.")
    prof = res.get("profile")
    if prof:
        L += ["", "## Where the time goes (intercepted bundle, py-spy)", ""]
        L += [
            "py-spy `record --nonblocking --threads --rate 250` on the intercepted bundles while they serve",
            "back-to-back work; each sample of the event loop's thread is charged to the innermost frame in",
            "one of these buckets, as a share of its busy samples (py-spy drops most samples of a thread",
            "waiting in `epoll`; the rest are shown apart). OpenSSL's work shows as the `SSLObject.read` /",
            "`write` calls; uvloop's transports, its TLS protocol and their socket calls are native code,",
            "charged to the Python frame that called them; 'asyncio streams' is mostly copying into and",
            "out of `StreamReader`'s buffer. 'small keep-alive' is the",
            "1 KiB GET loop of the latency case. Raw stacks: `--profile DIR`.",
            "",
        ]
        for name, p in prof.items():
            for kind, r in p.items():
                if not isinstance(r, dict) or "busy_share_by_category" not in r:
                    L.append(
                        f"- {name} {kind}: {r.get('error', 'n/a') if isinstance(r, dict) else r}"
                    )
                    continue
                parts = ", ".join(
                    f"{k} {v * 100:.0f}%"
                    for k, v in r["busy_share_by_category"].items()
                    if v >= 0.01
                )
                L.append(
                    f"- **{name}, {kind}**: {parts} (plus {r['epoll_share'] * 100:.0f}% of all"
                    " samples in `epoll_wait`)."
                )
    L += [
        "",
        "## Method",
        "",
        "- Upstream: its own process, blocking `ssl` sockets, a thread per connection (OpenSSL works with the",
        "  GIL released), a throwaway EC P-256 CA and a leaf for `bench.test` and `*.bench.test`; TLS 1.3,",
        "  ALPN http/1.1, 127.0.0.1 only. It serves `/bytes/N`, reads and drops any request body, and answers",
        "  anything else with 1 KiB.",
        "- Bundles: real bundle processes (`python -m claude_bottle.bundle.server`), reached over their unix",
        "  proxy socket as inside a bottle; `bench.test` (and the cold names) pinned to the upstream as with",
        "  `[egress.resolve]`; `upstream_ca_file` is the test CA. Three run side by side (interception off;",
        "  on; on with `dlp_enabled`, built-in patterns, hyperscan engine) and are idle when not measured.",
        "- Client: Python `ssl` with ALPN http/1.1; CONNECT `bench.test:443` on the bundle socket, then TLS",
        "  verified with the test CA (tunnel: end-to-end with the upstream) or with the CA the bundle",
        "  publishes (`ca_cert`; intercepted: the bundle terminates it). No TLS session resumption.",
        "- Bulk: the connection and handshake happen before the clock starts; download = one `GET` read with",
        "  `recv_into` a 4 MiB buffer; upload = one `POST` with `Content-Length` sent in 1 MiB writes of",
        "  plain text, until the response arrives. Runs interleave the cases. Bundle CPU = its utime + stime",
        "  over the transfer ÷ wall time (1.00 = one core saturated; the bundle's proxy is single-threaded).",
        "- Small: 20 warm-ups dropped. New connection = unix connect + CONNECT + TLS handshake + GET + close,",
        "  per request; the bundle opens a new upstream TLS connection for each, so intercepted pays two",
        "  handshakes. Cold leaf: the first connection to each of several names the bundle has never seen",
        "  (pinned and allowlisted), so each mints a leaf in the bundle's executor.",
        f"- Audit logs (written per record, `fsync`'d) in the system temp directory, on {m['audit_log_fs']}.",
        "- Client, bundle and upstream share the machine's cores; with 2 cores the intercepted case has three",
        "  busy processes doing crypto, so the absolute numbers are lower bounds for a bigger host.",
        "",
    ]
    return "\n".join(L) + NOTES


NOTES = r"""
## Reading the numbers

- DLP scans what leaves the bottle: request heads and request bodies, not responses. A download
  with DLP on differs from one without only by the head scan (noise); the upload row carries the
  streaming body scan.
- Inside an intercepted tunnel every request is parsed and re-framed twice (client side and
  upstream side) and is an egress decision with its own audit record; a plain tunnel relays opaque
  bytes and writes one record when it closes. The bundles' audit logs live in the system temp
  directory (its filesystem type is in the Method section).
- A new intercepted connection pays the TLS handshake with the bottle (the minted leaf) and two
  audit records (the CONNECT and the request). The handshake with the upstream is paid once: the
  bundle parks an upstream connection its client left idle and hands it to the next request for
  the same host (`bundle/pool.py`). Before the pool, this row was 11.30 ms against 6.07 through
  a plain tunnel (11:18 run).
- mitmdump intercepts with its own CA, trusts the test CA upstream and streams bodies over
  1 MiB (`stream_large_bodies=1m`); by default it would hold each 256 MiB body whole first.
  It is reached over TCP (CONNECT to the upstream's address, SNI `bench.test`), the bundles
  over their unix socket.

## Issue 24 (second round): where the bulk time went, what changed, A/B

Measured first: `perf record` (cpu-clock; this VM has no hardware counters) of the
intercepting bundle during back-to-back 64 MiB downloads. OpenSSL (decrypting the upstream's
records, encrypting the bottle's) 32 %, the kernel 33 % (loopback TCP and unix-socket copies,
waking the peer), libc `memmove` 17.5 %, CPython 8.5 %, uvloop 2 %. So the bundle moved each
256 KiB piece through about seven user-space copies: uvloop's TLS decrypted each 16 KiB record
into a new bytes object and joined them, `StreamReader` copied that into its buffer, its
`read` sliced the buffer into a bytearray and that into bytes, llhttp's body callback copied
it again, and the response loop gathered it into a bytearray and copied that into bytes.
Changes (each A/B'd interleaved with `benchmarks/tls_ab.py`, bundles of both trees side by
side):

1. `bundle/http1.py`: a Content-Length body goes around llhttp once its head is parsed (the
   reader counts its bytes; a read that is all body is passed on as the object it came in;
   what follows goes to a fresh parser, as llhttp would continue). Tests: pipelined requests
   with a request inside a Content-Length body read alike at every cut.
2. `bundle/proxy.py`: a response piece of 16 KiB or more is written as it is, not gathered
   (small responses still leave in one write, head and body together).
3. `bundle/tls_stream.py`: uvloop's TLS decrypts straight into one buffer all connections
   share (a buffered protocol in front of the stream's), for the bottle's side after the
   CONNECT and for upstream connections. (The bundle already ran on uvloop, whose TLS layer
   is its Cython port of asyncio's SSLProtocol over `ssl.MemoryBIO`: with a plain stream
   protocol it takes the copying path, with a buffered one it does not.)
4. `bundle/connection.StreamReader`: `read` copies once (Python 3.11's copies twice).
5. `bundle/scanning.BodyGuard`: a plain body chunk is copied once on its way out (it was
   three times); the trailing window that is held back is unchanged, so a secret split
   across reads is still found before any of it leaves whole (tests in
   `tests/unit/test_dlp_body_stream.py`).
6. A 1 MiB send buffer towards the bottle on an intercepted connection (as the splice
   tunnel has): fewer, larger writes. Against 1-5, 5 × 128 MiB, load 9-10: 170 → 200
   MiB/s, 1.32 → 1.26 CPU s/GiB.

All of it against the tree before: `python benchmarks/tls_ab.py BASE/src` (256 MiB, both
trees' bundles side by side, interleaved), four runs on 2026-12-07 while the load average
(1 min) was 9.6-11.9, 12.5-8.9, 8.9-6.8 and 4.5-5.1 on 2 cores shared with other work.
Medians of 5, 5, 7 and 7 transfers; CPU = the bundle's utime + stime per GiB moved; ratio = ÷ the tunnel
in the same run:

| case | before: ratio (CPU s/GiB) | after: ratio (CPU s/GiB) |
|---|---|---|
| download, intercepted | 0.62×, 0.51×, 0.55×, 0.52× (1.39, 1.28, 1.16, 1.24) | 0.80×, 0.72×, 0.73×, 0.54× (1.18, 1.12, 1.04, 1.16) |
| download, intercepted + DLP | 0.63×, 0.54×, 0.54×, 0.51× (1.47, 1.24, 1.20, 1.32) | 0.85×, 0.66×, 0.72×, 0.66× (1.28, 1.16, 1.04, 1.16) |
| upload, intercepted | 0.79×, 0.84×, 0.71×, 0.83× (1.35, 1.00, 1.00, 1.12) | 0.85×, 1.00×, 0.81×, 0.93× (1.23, 1.00, 1.00, 1.08) |
| upload, intercepted + DLP | 0.59×, 0.75×, 0.77×, 0.71× (1.71, 1.20, 1.24, 1.28) | 0.67×, 0.75×, 0.58×, 0.81× (1.56, 1.16, 1.24, 1.24) |
| new TLS connection + 1 KiB GET, p50 (tunnel) | 4.31 ms (7.22), 1.67 ms (2.24), 1.85 ms (2.43) | 4.14 ms, 1.61 ms, 1.78 ms |

Intercepted downloads cost 6-15 % less bundle CPU per GiB and ran up to a third faster
(least when the machine was least loaded); uploads with DLP moved within the noise: what they add over a plain intercepted upload (~0.2 CPU s/GiB) is
the Hyperscan scan itself. Hyperscan releases the GIL (checked: a Python thread keeps
running during a scan), so the scan could run beside the loop on another core, but an
executor hop per 128-256 KiB piece costs about what the scan does on a saturated machine;
not done.

The tunnel took 0.20-0.23 CPU s/GiB down and ~0.5 up in those runs; mitmdump intercepting
took 2.23 CPU s/GiB for the same downloads (128 MiB, against 1.25 for the bundle). What is
left per GiB is mostly OpenSSL (~0.5 s: two AES-GCM passes) and the kernel; the next step would be moving the two OpenSSL passes onto threads (`_ssl`
releases the GIL), which uvloop's TLS layer does not do. kTLS is not available here.
On this machine the ratios move with the load: the client, the upstream and the bundle all
do crypto on 2 cores shared with other work, so a loaded phase costs the intercepted case
(three crypto passes) more than the tunnel (one).

A new intercepted connection already costs less than a tunnel's here: the bundle's handshake
with the bottle uses one P-256 leaf key per bundle (made with the CA) and a leaf cached per
name, and the upstream handshake is skipped through the pool. OpenSSL issues its default two
TLS 1.3 session tickets per handshake, so a client that resumes skips the certificate
signature; this benchmark's client does not resume.

DLP, cards and IBANs (the two patterns without a literal): thread CPU time of one Hyperscan
scan of the 8 MiB corpus, medians of 9 (05:24). All 116 patterns 904 MiB/s; without these
two 2878 MiB/s; either one alone beside the others ~960; card and IBAN filters alone ~1500.
Any filter without a literal costs the same, whatever its form: `[^0-9A-Za-z_.][2-6]\d`
(three bytes) 1104 alone, 780 beside the others; a card filter anchored on the first four
contiguous digits every valid card has, 971 beside the others; an IBAN filter starting with
the 88 country codes (literals), 559-770 (worse: two capitals are common in base64). Hyperscan
runs one automaton over every byte as soon as one pattern lacks a literal, so the two still
take about two thirds of the scan; they were kept as they are (recall first). The whole scan
measured 739 MiB/s one-shot with `benchmarks/dlp_throughput.py` in the same session.
"""
