"""Scale: N bottles started at once, each `sh -c 'echo up; curl an allowed host; sleep S'`.

Called by benchmarks/run.py (the `scale` row); runnable alone on any interpreter that can
import nothing but the standard library:

    python benchmarks/scale.py CLAUDE_BOTTLE [--srt SRT] [--counts 1,5,20] [--sleep 5]

Each wave launches N copies of one contender together and reads their output:
- start-up: from launch to the command's `up` line (the bottle is ready and its command
  runs); `served` adds the curl of a 1 KiB page from a loopback server through the
  contender's proxy;
- memory: once every bottle of the wave has fetched its page (they sleep now), the
  proportional set size (PSS, /proc/PID/smaps_rollup: shared pages divided among the
  processes that map them) of each contender's process tree, without the command's own
  processes (sh, curl, sleep): for claude-bottle the CLI, its bundle, bubblewrap and the
  relay in the bottle; for srt its node process, bubblewrap and socat bridges;
- failures: a non-zero exit, no `up`, or a status other than 200.

Waves alternate between contenders (claude-bottle N=1, srt N=1, claude-bottle N=5, …),
so a slow phase of a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any, NamedTuple

HOST = "bench.test"
COMMAND_PROCESSES = frozenset({"sh", "bash", "curl", "sleep"})  # the workload, not the sandbox
WAVE_TIMEOUT = 120.0


class Contender(NamedTuple):
    name: str
    argv: list[str]  # the command line before the shell script
    env: dict[str, str]
    cwd: Path


def script(url: str, sleep: float) -> str:
    # --noproxy '': srt's sandbox exempts loopback from its proxy in NO_PROXY, where
    # nothing listens; both contenders go through their proxy.
    curl = f"curl -sS --noproxy '' -o /dev/null -w '%{{http_code}}\\n' {url}"
    return f"echo up; {curl}; sleep {sleep}"


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        with suppress(OSError):
            found += [int(k) for k in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo and len(tree) < 10_000:
        current = todo.pop()
        tree.append(current)
        todo += children(current)
    return tree


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def sandbox_pss(pid: int) -> dict[str, int]:
    """PSS in KiB of `pid`'s tree without the command's own processes, by process name."""
    by_name: dict[str, int] = {}
    for member in process_tree(pid):
        name = comm(member)
        if name and name not in COMMAND_PROCESSES:
            by_name[name] = by_name.get(name, 0) + pss_kib(member)
    return by_name


def interpreter_dir(script: str) -> str:
    """Where the interpreter running `script` lives: its `#!` line's (the launcher
    install.sh writes sits outside the venv's bin), else the script's own directory."""
    with suppress(OSError):
        with open(script, "rb") as handle:
            first = handle.readline(4096)
        if first.startswith(b"#!"):
            return os.path.dirname(os.fsdecode(first[2:].split()[0]))
    return os.path.dirname(script)


def warm_processes(bin_dir: str) -> list[int]:
    """The warm processes (src/claude_bottle/cli/warm.py) of the installation in `bin_dir`:
    the runs they serve are their children, not their callers'."""
    found: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with suppress(OSError, IndexError, ValueError):
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            if (
                b"claude_bottle.cli.warm_server" in argv
                and os.path.dirname(os.fsdecode(argv[0])) == bin_dir
            ):
                status = Path(f"/proc/{entry.name}/status").read_text()
                found[int(entry.name)] = int(status.split("\nPPid:")[1].split()[0])
    return [pid for pid, parent in found.items() if parent not in found]


def wave(who: Contender, command: str, n: int) -> dict[str, Any]:
    """N bottles of `who` at once: start-up times, PSS while they all sleep, failures."""
    selector = selectors.DefaultSelector()
    procs: list[subprocess.Popen[bytes]] = []
    lines: dict[int, list[tuple[float, str]]] = {}
    buffers: dict[int, bytes] = {}
    t0 = time.perf_counter()
    for _ in range(n):
        proc = subprocess.Popen(
            [*who.argv, command],
            cwd=who.cwd,
            env=who.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        selector.register(proc.stdout, selectors.EVENT_READ, proc.pid)
        lines[proc.pid], buffers[proc.pid] = [], b""
    pss: dict[str, int] = {}
    deadline = t0 + WAVE_TIMEOUT
    open_streams = n
    while open_streams and time.perf_counter() < deadline:
        for key, _ in selector.select(timeout=0.2):
            pid = key.data
            chunk = os.read(key.fd, 4096)
            now = time.perf_counter() - t0
            if not chunk:
                selector.unregister(key.fileobj)
                open_streams -= 1
                continue
            buffers[pid] += chunk
            while b"\n" in buffers[pid]:
                line, _, buffers[pid] = buffers[pid].partition(b"\n")
                lines[pid].append((now, line.decode(errors="replace").strip()))
        if not pss and all(len(got) >= 2 for got in lines.values()):
            # Every bottle has its page and sleeps: the steady state of a running bottle.
            # A warm process and what it serves count too (it serves only these runs).
            warm = warm_processes(interpreter_dir(who.argv[0]))
            for root in [proc.pid for proc in procs] + warm:
                for name, kib in sandbox_pss(root).items():
                    pss[name] = pss.get(name, 0) + kib
    selector.close()
    failures: list[str] = []
    up: list[float] = []
    served: list[float] = []
    for proc in procs:
        try:
            proc.wait(max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        got = lines[proc.pid]
        if proc.returncode != 0 or len(got) < 2 or got[0][1] != "up" or got[1][1] != "200":
            error = proc.stderr.read().decode(errors="replace").strip()[-200:]
            failures.append(f"exit {proc.returncode}, output {[line for _, line in got]}: {error}")
            continue
        up.append(got[0][0] * 1000)
        served.append(got[1][0] * 1000)
    for proc in procs:
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    result: dict[str, Any] = {"n": n, "failures": len(failures), "failure_examples": failures[:3]}
    if up:
        result.update(
            up_p50_ms=round(statistics.median(up), 1),
            up_max_ms=round(max(up), 1),
            served_p50_ms=round(statistics.median(served), 1),
        )
    if pss:
        total = sum(pss.values())
        result["pss_per_bottle_mib"] = round(total / n / 1024, 1)
        result["pss_by_process_mib"] = {k: round(v / n / 1024, 1) for k, v in sorted(pss.items())}
    return result


def run_scale(
    claude_bottle: str,
    srt: str | None,
    counts: tuple[int, ...],
    sleep: float,
    upstream: AbstractContextManager[int],
    also: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """Every wave of every contender, interleaved; {contender: {N: figures}}. `also`
    names more claude-bottle console scripts to run alike (an A/B of two trees)."""
    out: dict[str, Any] = {"counts": list(counts), "sleep_s": sleep, "load_before": os.getloadavg()}
    with upstream as port, tempfile.TemporaryDirectory(prefix="cbbench-scale-") as tmp:
        ws = Path(tmp) / "ws"
        ws.mkdir()
        config = Path(tmp) / "c.toml"
        config.write_text(
            f'[egress]\nallow = ["{HOST}"]\n[egress.resolve]\n"{HOST}" = "127.0.0.1:{port}"\n'
        )
        runtime = f"/tmp/cbbench-scale-{os.getpid()}"
        env = dict(
            os.environ,
            CLAUDE_BOTTLE_STATE_DIR=f"{tmp}/state",
            CLAUDE_BOTTLE_RUNTIME_DIR=runtime,
            CLAUDE_BOTTLE_CONFIG=str(config),
        )
        ours = Contender("claude-bottle", [claude_bottle, "run", "--", "sh", "-c"], env, ws)
        contenders = [(ours, script(f"http://{HOST}/small", sleep))]
        for name, other in also:
            contenders.append(
                (ours._replace(name=name, argv=[other, *ours.argv[1:]]), contenders[0][1])
            )
        if srt is not None:
            settings = Path(tmp) / "srt.json"
            settings.write_text(
                json.dumps(
                    {
                        "network": {"allowedDomains": [f"127.0.0.1:{port}"], "deniedDomains": []},
                        "filesystem": {"denyRead": [], "allowWrite": ["."], "denyWrite": []},
                    }
                )
            )
            theirs = Contender("srt", [srt, "-s", str(settings), "-c"], dict(os.environ), ws)
            contenders.append((theirs, script(f"http://127.0.0.1:{port}/small", sleep)))
        else:
            out["srt_error"] = "srt not installed (npm install failed or not run)"
        # One bottle of each first, as the start-up case drops its first round: caches,
        # and claude-bottle's pool of CAs minted ahead, are warm after a user's first bottle.
        for who, _ in contenders:
            subprocess.run(
                [*who.argv, "true"],
                cwd=ws,
                env=who.env,
                capture_output=True,
                stdin=subprocess.DEVNULL,  # as the waves run it: the warm process starts
                timeout=60,
            )
        time.sleep(3)  # the pool's refiller and the warm process start in the background
        for n in counts:
            for who, command in contenders:
                figures = wave(who, command, n)
                out.setdefault(who.name, {})[str(n)] = figures
                print(f"  scale {who.name} N={n}: {figures}", flush=True)
        out["load_after"] = os.getloadavg()
        subprocess.run([claude_bottle, "stop", "--all"], env=env, capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", runtime], check=False)
    return out


PSS_GOAL_MIB = 30.0
SPREAD_GOAL = 4.0  # p50 start-up of the largest N ÷ that of N=1


def markdown_rows(res: dict[str, Any]) -> list[str]:
    """The scale row of docs/benchmarks.md."""
    ours, theirs = res.get("claude-bottle", {}), res.get("srt", {})
    counts = [str(n) for n in res["counts"]]

    def describe(figures: dict[str, Any]) -> str:
        parts = []
        for n in counts:
            f = figures.get(n)
            if f is None:
                continue
            up = f"{f['up_p50_ms']:.0f}" if "up_p50_ms" in f else "–"
            pss = f", {f['pss_per_bottle_mib']} MiB" if "pss_per_bottle_mib" in f else ""
            failed = f", {f['failures']} failed" if f["failures"] else ""
            parts.append(f"N={n}: {up} ms{pss}{failed}")
        return "; ".join(parts) or "n/a"

    first, last = counts[0], counts[-1]
    spread = None
    if "up_p50_ms" in ours.get(first, {}) and "up_p50_ms" in ours.get(last, {}):
        spread = ours[last]["up_p50_ms"] / ours[first]["up_p50_ms"]
    pss = ours.get(last, {}).get("pss_per_bottle_mib")
    failures = sum(f["failures"] for f in ours.values())
    met = (
        spread is not None
        and (len(counts) == 1 or spread <= SPREAD_GOAL)
        and pss is not None
        and pss <= PSS_GOAL_MIB
        and failures == 0
    )
    anchor = f"srt {describe(theirs)}" if theirs else f"srt: {res.get('srt_error', 'not run')}"
    ratio = f"N={last} ÷ N={first} {spread:.1f}×" if spread and len(counts) > 1 else "–"
    return [
        f"| scale: N bottles at once, p50 start-up, PSS per running bottle "
        f"(`run -- sh -c 'curl …; sleep 5'`) | {describe(ours)} | {anchor} | {ratio} | "
        f"N={last} p50 ≤ {SPREAD_GOAL:.0f}× N={first}, ≤ {PSS_GOAL_MIB:.0f} MiB PSS, no failures | "
        f"{'yes' if met else 'no'} |"
    ]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import upstream  # the benchmark's loopback server

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("claude_bottle", help="the console script to measure")
    ap.add_argument("--srt", help="srt, the anchor (benchmarks/install.sh installs it)")
    ap.add_argument("--counts", default="1,5,20")
    ap.add_argument("--sleep", type=float, default=5.0)
    ap.add_argument("--also", action="append", default=[], help="NAME=SCRIPT, another tree")
    args = ap.parse_args()
    counts = tuple(int(c) for c in args.counts.split(","))
    also = tuple((name, script) for name, _, script in (a.partition("=") for a in args.also))
    result = run_scale(args.claude_bottle, args.srt, counts, args.sleep, upstream(1 << 20), also)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
