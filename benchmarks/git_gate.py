"""The git gate against direct git, on one loopback git server (issue 21's speed rows).

Run: python benchmarks/git_gate.py [--quick | --smoke] [--results FILE]
(benchmarks/run.py runs it as its "git gate" case.)

The upstream is real `git http-backend` behind TLS on 127.0.0.1 (a throwaway CA), every
request needing a token, streamed both ways by a small threaded server in its own
process. The repository is generated once with `git fast-import` (5,000 commits of
incompressible content, ~55 MiB packed; kept in benchmarks/.cache). The gate is a real
bundle process (`[git.remotes.origin]`, `credential = "env:…"`) reached through the
bottle's own relay (`bundle/relay.py`: loopback TCP to the bundle's git socket), as git
in a bottle reaches it. Host git is the client for both routes.

Cases, interleaved round by round so a slow phase of the machine hits both routes alike:
- clone: a fresh bundle (empty cache) then a second clone through the same bundle (warm),
  against a direct clone;
- push: 1,000 new commits (fast-import on top of the clone) to a new branch, through the
  gate against direct;
- refused push: one commit to a branch outside the remote's `push` patterns.
Each row: wall seconds (median, min..max) and CPU seconds of everything involved (the
client git, the bundle with its git processes, the server with its http-backends).
A benchmark is not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
HOST = "git.test"
TOKEN_VAR = "GATE_BENCH_TOKEN"
TOKEN = "bench-token-0123456789abcdef"  # a throwaway for the loopback server only
RELAY = ROOT / "src" / "claude_bottle" / "bundle" / "relay.py"


class Sizes(NamedTuple):
    commits: int  # in the generated repository
    blob_bytes: int  # incompressible bytes each commit adds
    pushed: int  # commits in the pushed branch
    rounds: int


FULL = Sizes(5000, 11 * 1024, 1000, 5)
QUICK = Sizes(5000, 11 * 1024, 1000, 3)
SMOKE = Sizes(50, 1024, 20, 1)


# ---------------------------------------------------------------- the loopback git server

# One thread per connection, keep-alive, chunked answers streamed from http-backend as it
# writes them; a chunked request body is decoded into its stdin as it arrives.
SERVER_CODE = r"""
import base64, os, socket, ssl, subprocess, sys, threading
root, chain, key, token = sys.argv[1:5]
expected = b"Basic " + base64.b64encode(b"x-access-token:" + token.encode())
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(chain, key)
def body_chunks(f, headers):
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                f.readline()
                return
            yield f.read(size)
            f.readline()
    left = int(headers.get(b"content-length", b"0"))
    while left > 0:
        data = f.read(min(left, 1 << 20))
        if not data:
            return
        left -= len(data)
        yield data
def feed(chunks, stdin):
    try:
        for chunk in chunks:
            stdin.write(chunk)
    finally:
        stdin.close()
def serve(raw):
    try:
        conn = ctx.wrap_socket(raw, server_side=True)
        f = conn.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                return
            method, target, _ = line.split(b" ", 2)
            headers = {}
            while (h := f.readline()) not in (b"\r\n", b""):
                name, _, value = h.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if headers.get(b"authorization") != expected:
                for _ in body_chunks(f, headers):
                    pass
                conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=t\r\n"
                             b"Content-Length: 0\r\n\r\n")
                continue
            path, _, query = target.decode().partition("?")
            env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": root,
                   "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": "bench", "REMOTE_ADDR": "127.0.0.1",
                   "REQUEST_METHOD": method.decode(), "PATH_INFO": path, "QUERY_STRING": query,
                   "CONTENT_TYPE": headers.get(b"content-type", b"").decode(),
                   "GIT_PROTOCOL": headers.get(b"git-protocol", b"").decode(),
                   "HTTP_CONTENT_ENCODING": headers.get(b"content-encoding", b"").decode(),
                   "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
            cgi = subprocess.Popen(["git", "-c", "http.receivepack=true", "http-backend"], env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            feeder = threading.Thread(target=feed, args=(body_chunks(f, headers), cgi.stdin))
            feeder.start()
            status, out_headers = b"200 OK", []
            while (h := cgi.stdout.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = h.partition(b":")
                if name.lower() == b"status":
                    status = value.strip()
                else:
                    out_headers.append(h.rstrip(b"\r\n"))
            head = b"".join(x + b"\r\n" for x in out_headers)
            conn.sendall(b"HTTP/1.1 " + status + b"\r\n" + head
                         + b"Transfer-Encoding: chunked\r\n\r\n")
            while data := cgi.stdout.read1(1 << 18):
                conn.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
            conn.sendall(b"0\r\n\r\n")
            feeder.join()
            cgi.wait()
    except (OSError, ValueError, ssl.SSLError):
        pass
    finally:
        raw.close()
listener = socket.create_server(("127.0.0.1", 0), backlog=128)
print(listener.getsockname()[1], flush=True)
while True:
    raw, _ = listener.accept()
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(raw,), daemon=True).start()
"""


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for HOST and 127.0.0.1: (ca file, chain file, key file)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(name: str, key: Any, issuer: Any, issuer_key: Any, leaf: bool) -> Any:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=not leaf, path_length=None), critical=True)
        )
        if leaf:
            names = [x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("git gate bench CA", ca_key, None, ca_key, False)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = cert(HOST, key, ca, ca_key, True)
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


@contextlib.contextmanager
def git_server(root: Path, chain: Path, key: Path) -> Iterator[tuple[int, int]]:
    """The loopback git server: (port, pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_CODE, str(root), str(chain), str(key), TOKEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    try:
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(5)


# ---------------------------------------------------------------- repositories


def quiet_git_env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Bench",
        "GIT_AUTHOR_EMAIL": "bench@example.test",
        "GIT_COMMITTER_NAME": "Bench",
        "GIT_COMMITTER_EMAIL": "bench@example.test",
        "GIT_TERMINAL_PROMPT": "0",
    }


def fast_import(repo: Path, commits: int, blob_bytes: int, branch: str, parent: str | None) -> None:
    """`commits` commits on `branch` (from `parent`), each adding one file of random bytes
    under a two-level tree (so trees stay small), written by `git fast-import`."""
    proc = subprocess.Popen(
        ["git", "-C", str(repo), "fast-import", "--quiet", "--done"],
        stdin=subprocess.PIPE,
        env=quiet_git_env(),
    )
    assert proc.stdin is not None
    write = proc.stdin.write
    stamp = 1_700_000_000
    tag = branch.replace("/", "-")
    for i in range(commits):
        data = os.urandom(blob_bytes)
        message = f"{tag} commit {i}\n".encode()
        write(f"commit refs/heads/{branch}\n".encode())
        write(f"committer Bench <bench@example.test> {stamp + i} +0000\n".encode())
        write(b"data %d\n%s" % (len(message), message))
        if i == 0 and parent:
            write(f"from {parent}\n".encode())
        write(f"M 644 inline {tag}/d{i // 100:03d}/f{i % 100:02d}.bin\n".encode())
        write(b"data %d\n%s\n" % (len(data), data))
    write(b"done\n")
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")


def source_repository(sizes: Sizes) -> Path:
    """The generated bare repository (made once per size, kept in benchmarks/.cache)."""
    repo = CACHE / f"gitgate-{sizes.commits}x{sizes.blob_bytes}.git"
    if (repo / "refs" / "heads" / "main").exists() or (repo / "packed-refs").exists():
        return repo
    shutil.rmtree(repo, ignore_errors=True)
    repo.parent.mkdir(parents=True, exist_ok=True)
    env = quiet_git_env()
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True, env=env)
    fast_import(repo, sizes.commits, sizes.blob_bytes, "main", None)
    subprocess.run(["git", "-C", str(repo), "repack", "-adq"], check=True, env=env)
    return repo


def pack_mib(repo: Path) -> float:
    return sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack")) / (1 << 20)


# ---------------------------------------------------------------- the two routes


class Route(NamedTuple):
    name: str
    url: str
    env: dict[str, str]
    pids: tuple[int, ...]  # processes whose CPU counts (with their waited children)


def client_env(ca_file: Path) -> dict[str, str]:
    env = quiet_git_env()
    env[TOKEN_VAR] = TOKEN
    config = [
        ("http.sslCAInfo", str(ca_file)),
        (
            "credential.helper",
            f"!f() {{ echo username=x-access-token; echo password=${TOKEN_VAR}; }}; f",
        ),
    ]
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for i, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    return env


@contextlib.contextmanager
def gate(port: int, ca_file: Path, work: Path) -> Iterator[tuple[int, int]]:
    """A real bundle serving [git.remotes.origin] for the loopback server, and the bottle's
    relay in front of its git socket: (relay port, bundle pid). Its cache starts empty."""
    from run import bundle_process, free_port, wait_port

    from claude_bottle.bundle.git_policy import GateRemote

    os.environ[TOKEN_VAR] = TOKEN  # the bundle's (host-side) environment only
    cache = Path(tempfile.mkdtemp(prefix="gitcache-", dir=work))
    sock = str(cache.parent / f"{cache.name}.sock")
    remote = GateRemote("origin", f"https://{HOST}/repo.git", credential=f"env:{TOKEN_VAR}")
    with bundle_process(
        port,
        (HOST,),
        dlp=True,  # a push's content is scanned, as in a bottle with the default config
        upstream_ca_file=str(ca_file),
        git_socket=sock,
        git_cache=str(cache),
        git_remotes=(remote,),
    ) as (_, pid):
        relay_port = free_port()
        relay = subprocess.Popen(
            [sys.executable, "-I", "-S", str(RELAY), "--listen", f"{relay_port}={sock}", "--hold"]
        )
        try:
            wait_port(relay_port)
            yield relay_port, pid
        finally:
            relay.terminate()
            relay.wait(5)
            shutil.rmtree(cache, ignore_errors=True)


def wait_idle(pid: int, limit: float = 120.0) -> None:
    """Until the bundle runs no git (the mirror's refresh it starts WARM_DELAY after a
    fetch has ended), so the next measured step has the machine to itself."""
    from claude_bottle.bundle.git_gate import WARM_DELAY

    time.sleep(WARM_DELAY + 0.5)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        tasks = Path(f"/proc/{pid}/task")
        if not any((t / "children").read_text().strip() for t in tasks.iterdir()):
            return
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its children it waited for, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Timing(NamedTuple):
    wall: float
    cpu: float
    ok: bool
    output: str


def timed(route: Route, argv: list[str], cwd: Path) -> Timing:
    before = children_cpu() + sum(cpu_seconds(p) for p in route.pids)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=route.env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    cpu = children_cpu() + sum(cpu_seconds(p) for p in route.pids) - before
    return Timing(wall, cpu, done.returncode == 0, (done.stdout + done.stderr)[-400:])


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


def run(sizes: Sizes) -> dict[str, Any]:
    repo = source_repository(sizes)
    result: dict[str, Any] = {
        "commits": sizes.commits,
        "pack_mib": round(pack_mib(repo), 1),
        "pushed_commits": sizes.pushed,
        "rounds": sizes.rounds,
    }
    with tempfile.TemporaryDirectory(prefix="cbgitbench-") as tmp:
        work = Path(tmp)
        root = work / "server"
        root.mkdir()
        ca_file, chain, key = make_certs(work)
        env = client_env(ca_file)
        samples: dict[str, list[Timing]] = {}
        failures: list[str] = []

        def note(case: str, timing: Timing) -> None:
            samples.setdefault(case, []).append(timing)
            if not timing.ok:
                failures.append(f"{case}: {timing.output}")

        with git_server(root, chain, key) as (port, server_pid):
            direct = Route("direct", f"https://127.0.0.1:{port}/repo.git", env, (server_pid,))
            for n in range(sizes.rounds):
                # a fresh upstream copy per round: pushes of earlier rounds do not pile up
                shutil.rmtree(root / "repo.git", ignore_errors=True)
                subprocess.run(
                    ["git", "clone", "-q", "--bare", str(repo), str(root / "repo.git")],
                    check=True,
                    env=quiet_git_env(),
                )
                with gate(port, ca_file, work) as (relay_port, bundle_pid):
                    through = Route(
                        "gate",
                        f"http://127.0.0.1:{relay_port}/origin.git",
                        env,
                        (server_pid, bundle_pid),
                    )
                    clones = work / f"clones-{n}"
                    clones.mkdir()
                    order = [
                        ("clone/gate (cold cache)", through, "gate-cold"),
                        ("clone/direct", direct, "direct"),
                        ("clone/gate (warm cache)", through, "gate-warm"),
                    ]
                    if n % 2:  # alternate who goes first
                        order = [order[1], order[0], order[2]]
                    for case, route, into in order:
                        note(case, timed(route, ["git", "clone", "-q", route.url, into], clones))
                        wait_idle(bundle_pid)
                    for route in (direct, through) if n % 2 == 0 else (through, direct):
                        checkout = clones / ("direct" if route is direct else "gate-warm")
                        branch = f"bottle/bench-{route.name}-{n}"
                        fast_import(checkout, sizes.pushed, 2048, branch, "refs/heads/main")
                        note(
                            f"push/{route.name}",
                            timed(route, ["git", "push", "-q", route.url, branch], checkout),
                        )
                        wait_idle(bundle_pid)
                    refused = clones / "gate-warm"
                    note(
                        "refused push/gate",
                        timed(
                            through,
                            ["git", "push", "-q", through.url, f"bottle/bench-gate-{n}:main"],
                            refused,
                        ),
                    )
        result["cases"] = {
            case: {
                "wall_s": summary([t.wall for t in timings]),
                "cpu_s": summary([t.cpu for t in timings]),
            }
            for case, timings in samples.items()
        }
        expected_failure = [f for f in failures if f.startswith("refused push")]
        result["failures"] = [f for f in failures if not f.startswith("refused push")]
        result["refused_as_expected"] = len(expected_failure) == len(samples["refused push/gate"])
        result["ratios"] = {
            "clone (cold) vs direct": ratio(samples, "clone/gate (cold cache)", "clone/direct"),
            "clone (warm) vs direct": ratio(samples, "clone/gate (warm cache)", "clone/direct"),
            "push vs direct": ratio(samples, "push/gate", "push/direct"),
        }
    return result


def ratio(samples: dict[str, list[Timing]], ours: str, anchor: str) -> dict[str, float]:
    """Median of the per-round ratios (each round's pair ran back to back)."""
    walls = [a.wall / b.wall for a, b in zip(samples[ours], samples[anchor], strict=True)]
    cpus = [a.cpu / b.cpu for a, b in zip(samples[ours], samples[anchor], strict=True) if b.cpu]
    return {
        "wall": round(statistics.median(walls), 2),
        "cpu": round(statistics.median(cpus), 2) if cpus else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, one round")
    ap.add_argument("--results", type=Path, help="write the figures here (JSON)")
    args = ap.parse_args()
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    sys.path.insert(0, str(HERE))
    result = run(sizes)
    text = json.dumps(result, indent=2) + "\n"
    if args.results:
        args.results.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
