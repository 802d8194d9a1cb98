"""False positives: benign data that the DLP scanner must let through.

Two corpora, both scanned with every engine available here:

* files installed on this machine, capped to a few MiB: the Python
  standard library, a few well-known packages, npm's own node_modules and
  /usr/share/doc when present;
* generated data that looks random but is not a credential: UUIDs, git
  SHAs, lockfile integrity hashes, base64 images, minified JavaScript,
  numeric CSV.

Excluded on purpose (they hold real, if throwaway, secrets): the standard
library's `test` package (its certdata/*.pem files are real private keys)
and documentation directories of JWT and crypto libraries, whose examples
are real signed tokens and keys. Everything else must produce no finding.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import random
import string
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle.policy.dlp import Scanner, available_engines

MAX_FILE = 192 * 1024
MAX_TOTAL = 6 * 1024 * 1024
TEXT_SUFFIXES = {
    ".py", ".pyi", ".txt", ".rst", ".md", ".json", ".js", ".mjs", ".cjs", ".ts", ".toml",
    ".cfg", ".ini", ".yaml", ".yml", ".html", ".css", ".c", ".h", ".sh", ".xml", ".csv", "",
}  # fmt: skip
SKIP_DIRS = {"__pycache__", "test", "tests"}
# Documentation that quotes real example tokens and keys (see module docstring).
EXCLUDED_DOC_DIRS = {"python3-jwt", "libxmlsec1-dev", "python3-cryptography", "libssl-doc"}


def _files(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS and d not in EXCLUDED_DOC_DIRS)
        for name in sorted(names):
            path = Path(directory) / name
            if path.suffix in TEXT_SUFFIXES and not path.is_symlink():
                yield path


def _sources() -> list[Path]:
    purelib = Path(sysconfig.get_paths()["purelib"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    roots = [stdlib / name for name in ("email", "json", "http", "asyncio", "urllib", "xml")]
    roots += [stdlib / name for name in ("unittest", "logging", "importlib", "tomllib", "re")]
    roots += [purelib / name for name in ("pip", "_pytest", "click", "h11", "pluggy", "mypy")]
    roots += [Path("/usr/lib/node_modules/npm"), Path("/usr/share/doc")]
    return roots


@functools.cache
def corpus_files() -> list[tuple[str, bytes]]:
    """Round-robin over the sources so each contributes, until MAX_TOTAL bytes."""
    iterators = [_files(root) for root in _sources()]
    picked: list[tuple[str, bytes]] = []
    total = 0
    while iterators and total < MAX_TOTAL:
        for iterator in list(iterators):
            path = next(iterator, None)
            if path is None:
                iterators.remove(iterator)
                continue
            try:
                if path.stat().st_size > MAX_FILE:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            picked.append((str(path), data))
            total += len(data)
    return picked


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@functools.cache
def generated_corpus() -> dict[str, bytes]:
    rnd = random.Random(2024)
    ident = string.ascii_letters + "_$"
    uuids = "\n".join(str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(3000))
    shas = "\n".join(
        f"{hashlib.sha1(rnd.randbytes(20)).hexdigest()} commit message {i}" for i in range(3000)
    )
    packages = {}
    for i in range(600):
        name = "".join(rnd.choice(string.ascii_lowercase) for _ in range(rnd.randint(3, 12)))
        packages[f"node_modules/{name}{i}"] = {
            "version": f"{rnd.randint(0, 9)}.{rnd.randint(0, 30)}.{rnd.randint(0, 99)}",
            "resolved": f"https://registry.npmjs.org/{name}/-/{name}-1.0.{i}.tgz",
            "integrity": "sha512-" + _b64(rnd.randbytes(64)),
        }
    lock = json.dumps({"name": "app", "lockfileVersion": 3, "packages": packages}, indent=2)
    go_sum = "\n".join(
        f"github.com/x/mod{i} v1.{i}.0 h1:{_b64(rnd.randbytes(32))}" for i in range(800)
    )
    poetry = "\n".join(
        f'{{file = "pkg-{i}.whl", hash = "sha256:{rnd.randbytes(32).hex()}"}},' for i in range(800)
    )
    png = b"\x89PNG\r\n\x1a\n" + rnd.randbytes(400_000)
    images = "\n".join(
        f'<img src="data:image/png;base64,{_b64(png[i : i + 40_000])}">'
        for i in range(0, len(png), 40_000)
    )
    js_parts = []
    for _ in range(20_000):
        a = "".join(rnd.choice(ident) for _ in range(rnd.randint(1, 3)))
        b = "".join(rnd.choice(ident) for _ in range(rnd.randint(1, 3)))
        js_parts.append(f"function {a}({b}){{return {b}*{rnd.random()}+{rnd.randint(0, 10**9)}}}")
    minified = ";".join(js_parts)
    rows = ["ts,value,id,lat,lon"]
    for _ in range(20_000):
        rows.append(
            f"{rnd.randint(1_600_000_000_000, 1_800_000_000_000)},{rnd.uniform(-1e6, 1e6)},"
            f"{rnd.randint(10**17, 10**19)},{rnd.uniform(-90, 90)},{rnd.uniform(-180, 180)}"
        )
    csv = "\n".join(rows)
    return {
        "uuids": uuids.encode(),
        "git-shas": shas.encode(),
        "package-lock.json": lock.encode(),
        "go.sum": go_sum.encode(),
        "poetry.lock": poetry.encode(),
        "base64-png.html": images.encode(),
        "minified.js": minified.encode(),
        "numbers.csv": csv.encode(),
    }


@pytest.fixture(scope="module", params=available_engines())
def scanner(request: pytest.FixtureRequest) -> Scanner:
    return Scanner(engine=request.param)


def test_installed_files_pass(scanner: Scanner) -> None:
    files = corpus_files()
    assert len(files) >= 100 and sum(len(data) for _, data in files) >= 1 << 20
    flagged = {
        name: sorted({finding.pattern for finding in found})
        for name, data in files
        if (found := scanner.scan(data, name))
    }
    rate = len(flagged) / len(files)
    print(f"\n{scanner.engine}: {len(flagged)} of {len(files)} files flagged ({rate:.4%})")
    assert flagged == {}


@pytest.mark.parametrize("kind", sorted(generated_corpus()))
def test_generated_benign_data_passes(scanner: Scanner, kind: str) -> None:
    data = generated_corpus()[kind]
    assert len(data) > 50_000
    assert scanner.scan(data, kind) == []


def test_corpus_is_not_blind() -> None:
    """The same corpus with one planted token is flagged: the zero above is earned."""
    data = generated_corpus()["package-lock.json"]
    rnd = random.Random(0)
    token = "gh" + "p_" + "".join(rnd.choice(string.ascii_letters) for _ in range(36))
    planted = data[:50_000] + token.encode() + data[50_000:]
    found = Scanner().scan(planted, "lock")
    assert [(finding.pattern, finding.start) for finding in found] == [("github-pat", 50_000)]
