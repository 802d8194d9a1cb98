"""Precision of the full DLP rule set on real files installed on this machine.

At least 3,000 benign files, each scanned raw and as the JSON body an API
request would carry it in (quotes escaped, newlines as \\n): the Python
standard library (without its test package, whose certdata holds real
throwaway keys), the Python packages installed beside it (this project's own
code aside), the global npm packages, lockfiles with integrity hashes,
minified JavaScript, and base64 images inside JSON. At most 0.1% of the
files may be refused. Sources absent here are skipped; the test is skipped
with the reason when fewer than 3,000 files can be found.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.policy.dlp import Scanner

MIN_FILES = 3000
MAX_REFUSED = 0.001
MAX_FILE = 128 * 1024  # a file is scanned by its first 128 KiB (a request body's worth)
TEXT = {".py", ".js", ".mjs", ".cjs", ".ts", ".json", ".md", ".yaml", ".yml", ".lock", ".txt"}
# The standard library's tests ship real (throwaway) private keys and tokens on purpose.
SKIP_DIRS = {"__pycache__", "test", "tests", "idle_test", "site-packages", "claude_bottle"}


def _walk(root: Path, suffixes: set[str]) -> Iterator[Path]:
    if not root.is_dir():
        return
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
        for name in sorted(names):
            path = Path(directory) / name
            if (path.suffix in suffixes or name.endswith(".min.js")) and not path.is_symlink():
                yield path


def _generated(rnd: random.Random) -> list[tuple[str, bytes]]:
    """Lockfile text and base64 images in JSON: random-looking, never credentials."""
    made: list[tuple[str, bytes]] = []
    for index in range(40):
        packages = {
            f"node_modules/pkg{index}-{n}": {
                "version": f"1.{n}.0",
                "resolved": f"https://registry.npmjs.org/pkg{n}/-/pkg{n}-1.{n}.0.tgz",
                "integrity": "sha512-" + base64.b64encode(rnd.randbytes(64)).decode(),
            }
            for n in range(60)
        }
        made.append((f"generated-lock-{index}.json", json.dumps({"packages": packages}).encode()))
        image = b"\x89PNG\r\n\x1a\n" + bytes(200) + rnd.randbytes(3000) + bytes(300)
        body = {
            "type": "image",
            "media_type": "image/png",
            "data": base64.b64encode(image).decode(),
        }
        made.append((f"generated-image-{index}.json", json.dumps(body).encode()))
    return made


@functools.cache
def benign_files() -> tuple[list[tuple[str, bytes]], list[str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    roots = {
        "python standard library": (stdlib, {".py"}),
        "installed python packages": (Path(sysconfig.get_paths()["purelib"]), {".py", ".json"}),
        "global npm packages": (Path("/usr/lib/node_modules"), TEXT),
        "global npm packages (/usr/local)": (Path("/usr/local/lib/node_modules"), TEXT),
        "Debian node packages": (Path("/usr/share/nodejs"), TEXT),
    }
    files: list[tuple[str, bytes]] = []
    missing: list[str] = []
    for label, (root, suffixes) in roots.items():
        if not root.is_dir():
            missing.append(label)
            continue
        for path in _walk(root, suffixes):
            try:
                data = path.read_bytes()[:MAX_FILE]
            except OSError:
                continue
            files.append((str(path), data))
    files.extend(_generated(random.Random(25)))
    return files, missing


def test_benign_files_are_not_refused() -> None:
    files, missing = benign_files()
    if len(files) < MIN_FILES:
        pytest.skip(f"only {len(files)} benign files here (absent: {', '.join(missing)})")
    scanner = Scanner()
    refused: list[str] = []
    for name, data in files:
        as_json = json.dumps({"content": data.decode("utf-8", "replace")}).encode()
        found = scanner.scan(data, "body") or scanner.scan(as_json, "body")
        if found:
            refused.append(f"{name}: {sorted({finding.pattern for finding in found})}")
    allowed = int(len(files) * MAX_REFUSED)
    assert len(refused) <= allowed, f"{len(refused)} of {len(files)} refused:\n" + "\n".join(
        refused[:40]
    )
