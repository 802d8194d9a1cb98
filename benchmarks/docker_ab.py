"""A/B of the docker start-up case: installed claude-bottle trees against a plain `docker run`.

    python benchmarks/docker_ab.py --rounds 20 A=/path/to/venvA/bin/claude-bottle B=...

Each round runs, in turn, the plain `docker run --rm --network none AGENT_IMAGE true`, every
tree's `run --backend docker --docker-bundle host -- true` and `... container -- true`
(unless `--placements` says otherwise) and the container topology's engine-only floor
(`run.py`'s script), so a slow phase of a shared machine hits each alike. The first round
warms caches and is dropped. Printed: medians, and the median of each round's ratio to the
plain run of the same round (paired), with the load average before and after, and the
median CPU time of each command's process tree (user+sys of it and its reaped children).
With `--exec-times`, each tree's runs find a `docker` shim first on PATH that logs when
`docker run` is exec'd (it adds one `sh` exec to those runs): printed as the median time
from the start to that exec, the part of a start before the engine is asked for anything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CONTAINER_FLOOR_SCRIPT, HOST

ANCHOR = "docker run"
FLOOR = "floor (sh)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", help="NAME=path of an installed claude-bottle")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--placements", default="host,container")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--exec-times", action="store_true", help="time start to `docker run`")
    args = ap.parse_args()
    from claude_bottle.backend.docker.images import agent_image, bundle_image

    image, bundle = agent_image().tag, bundle_image().tag
    placements = [p for p in args.placements.split(",") if p]
    with tempfile.TemporaryDirectory(prefix="cbbench-dab-") as tmp:
        ws = Path(tmp) / "ws"
        ws.mkdir()
        env = dict(os.environ)
        env.update(
            CLAUDE_BOTTLE_STATE_DIR=f"{tmp}/state",
            CLAUDE_BOTTLE_RUNTIME_DIR=f"/tmp/cbbench-dab-{os.getpid()}",
            CLAUDE_BOTTLE_CONFIG=f"{tmp}/c.toml",
        )
        (Path(tmp) / "c.toml").write_text(f'[egress]\nallow = ["{HOST}"]\n')
        commands: dict[str, list[str]] = {
            ANCHOR: ["docker", "run", "--rm", "--network", "none", image, "true"]
        }
        for tree in args.trees:
            name, _, path = tree.partition("=")
            for placement in placements:
                commands[f"{name} {placement}"] = [
                    *(path, "run", "--backend", "docker", "--docker-bundle", placement),
                    *("--", "true"),
                ]
        if not args.no_floor:
            commands[FLOOR] = ["sh", "-c", CONTAINER_FLOOR_SCRIPT, "sh", bundle, image]
        trees = {name for name in commands if name not in (ANCHOR, FLOOR)}
        shim_env = _shim_env(Path(tmp), env) if args.exec_times else env
        log = Path(shim_env.get("CBBENCH_EXEC_LOG", os.devnull))
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        to_exec: dict[str, list[float]] = {name: [] for name in trees}
        load_before = os.getloadavg()
        for _ in range(args.rounds + 1):
            for name, argv in commands.items():
                if name in trees and args.exec_times:
                    log.write_text("")
                started = time.time_ns()
                t0 = time.perf_counter()
                with tempfile.TemporaryFile() as stderr:
                    process = subprocess.Popen(
                        argv,
                        cwd=ws,
                        env=shim_env if name in trees else env,
                        stdin=subprocess.DEVNULL,  # as a script runs it (warm start)
                        stdout=subprocess.DEVNULL,
                        stderr=stderr,
                    )
                    # wait4: the process tree's CPU (it and its reaped children)
                    _, status, usage = os.wait4(process.pid, 0)
                    process.returncode = os.waitstatus_to_exitcode(status)
                    wall = (time.perf_counter() - t0) * 1000
                    if status:
                        stderr.seek(0)
                        print(f"{name} failed: {stderr.read().decode(errors='replace')[-400:]}")
                        return 1
                times[name].append(wall)
                cpu[name].append((usage.ru_utime + usage.ru_stime) * 1000)
                if name in trees and args.exec_times:
                    execs = log.read_text().split()
                    to_exec[name].append((int(execs[0]) - started) / 1e6 if execs else wall)
        load_after = os.getloadavg()
    print(f"{args.rounds} rounds; load average before {load_before}, after {load_after}")
    anchor = times[ANCHOR][1:]
    for name, values in times.items():
        kept = values[1:]
        ratio = statistics.median(v / a for v, a in zip(kept, anchor, strict=True))
        extra = (
            f", start to `docker run` {statistics.median(to_exec[name][1:]):.1f} ms"
            if (to_exec.get(name))
            else ""
        )
        print(
            f"{name:24} median {statistics.median(kept):7.1f} ms "
            f"(min {min(kept):7.1f}, max {max(kept):7.1f})  paired ratio {ratio:.2f}x  "
            f"CPU {statistics.median(cpu[name][1:]):.1f} ms{extra}"
        )
    return 0


def _shim_env(tmp: Path, env: dict[str, str]) -> dict[str, str]:
    """An environment whose PATH starts with a `docker` that logs each `docker run`'s exec."""
    real = shutil.which("docker", path=env.get("PATH"))
    if real is None:
        raise SystemExit("docker_ab.py: no docker on PATH")
    shim_dir = tmp / "shim"
    shim_dir.mkdir()
    shim = shim_dir / "docker"
    shim.write_text(
        '#!/bin/sh\nif [ "$1" = run ]; then date +%s%N >> "$CBBENCH_EXEC_LOG"; fi\n'
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    return {
        **env,
        "PATH": f"{shim_dir}:{env.get('PATH', '')}",
        "CBBENCH_EXEC_LOG": str(tmp / "exec-times.log"),
    }


if __name__ == "__main__":
    sys.exit(main())
