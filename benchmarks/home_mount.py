"""What the sized home (`[bottle] disk`) costs a start, with this user's mechanism: a loop
mount as root, fuse2fs as a user (src/claude_bottle/home_image.py).

    .venv/bin/python benchmarks/home_mount.py [--rounds 10] [--disk 10G] [--for-root]

Each round is a start's part of it: `mount_for_start` (check the image with e2fsck, mount
it) and then `detach` (the host's mount; here no sandbox holds a copy, so the filesystem
goes at once), waiting until nothing holds the image before the next round. The first
round also makes the image (mkfs of `--disk`) and is reported on its own. `--for-root`
mounts as the docker backend does (fuse2fs `allow_other`, which needs `user_allow_other`
in /etc/fuse.conf as a user). Prints medians in ms and the image's size on the host's disk.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

from claude_bottle import home_image
from claude_bottle.limits import parse_size

RELEASE_WAIT = 15.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--disk", default="10G")
    parser.add_argument("--for-root", action="store_true")
    args = parser.parse_args()
    reason = home_image.unavailable(for_root=args.for_root)
    if reason is not None:
        print(f"no sized home here: {reason}", file=sys.stderr)
        return 1
    size = parse_size(args.disk)
    with tempfile.TemporaryDirectory(prefix="home-mount-") as scratch:
        home = Path(scratch) / "home"
        home.mkdir()
        image = home_image.image_of(home)
        first, mounts, detaches = 0.0, [], []
        for round_ in range(args.rounds + 1):
            started = time.perf_counter()
            with contextlib.ExitStack() as stack:
                if args.for_root:  # as the docker backend mounts it
                    stack.callback(home_image.detach, home)
                    home_image.mount(home_image.prepare(home, size), home, for_root=True)
                else:
                    home_image.mount_for_start(home, size, stack)
                mounted = time.perf_counter()
                home_image.detach(home)
                detached = time.perf_counter()
            deadline = time.monotonic() + RELEASE_WAIT
            while home_image.in_use(image):  # a fuse2fs daemon writing its last blocks
                if time.monotonic() > deadline:
                    print("the image was never released", file=sys.stderr)
                    return 1
                time.sleep(0.005)
            if round_ == 0:
                first = mounted - started
            else:
                mounts.append(mounted - started)
                detaches.append(detached - mounted)
        on_disk = image.stat().st_blocks * 512
    print(f"mechanism: {home_image.mounted_how()}; disk {args.disk}; {args.rounds} rounds")
    print(f"first start (mkfs, check, mount): {first * 1000:.1f} ms")
    print(f"later starts (check, mount): p50 {statistics.median(mounts) * 1000:.1f} ms")
    print(f"detach: p50 {statistics.median(detaches) * 1000:.1f} ms")
    print(f"image on the host's disk: {on_disk / (1 << 20):.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
