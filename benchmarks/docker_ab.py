"""A/B of the docker start-up case: installed claude-bottle trees against a plain `docker run`.

    python benchmarks/docker_ab.py --rounds 20 A=/path/to/venvA/bin/claude-bottle B=...

Each round runs, in turn, the plain `docker run --rm --network none AGENT_IMAGE true`, every
tree's `run --backend docker --docker-bundle host -- true` and `... container -- true`
(unless `--placements` says otherwise) and the container topology's engine-only floor
(`run.py`'s script), so a slow phase of a shared machine hits each alike. The first round
warms caches and is dropped. Printed: medians, and the median of each round's ratio to the
plain run of the same round (paired), with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
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
        times: dict[str, list[float]] = {name: [] for name in commands}
        load_before = os.getloadavg()
        for _ in range(args.rounds + 1):
            for name, argv in commands.items():
                t0 = time.perf_counter()
                done = subprocess.run(argv, cwd=ws, env=env, capture_output=True, timeout=120)
                if done.returncode:
                    print(f"{name} failed: {done.stderr.decode(errors='replace')[-400:]}")
                    return 1
                times[name].append((time.perf_counter() - t0) * 1000)
        load_after = os.getloadavg()
    print(f"{args.rounds} rounds; load average before {load_before}, after {load_after}")
    anchor = times[ANCHOR][1:]
    for name, values in times.items():
        kept = values[1:]
        ratio = statistics.median(v / a for v, a in zip(kept, anchor, strict=True))
        print(
            f"{name:24} median {statistics.median(kept):7.1f} ms "
            f"(min {min(kept):7.1f}, max {max(kept):7.1f})  paired ratio {ratio:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
