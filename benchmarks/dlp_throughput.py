"""DLP scan throughput on an 8 MiB mixed corpus, side by side with detect-secrets.

Run: python benchmarks/dlp_throughput.py [--size-mib 8] [--runs 5] [--all-engines] [--results F]

The corpus mixes Python source from the standard library, JSON API
responses, base64 blobs, lockfile text and a few planted secrets. Our
scanner's time is the median of --runs one-shot `Scanner.scan` calls (and
the same for `StreamScan` fed 256 KiB chunks); detect-secrets, when
installed, scans the same bytes written to a temporary file, once (it is
two orders of magnitude slower). Results go to benchmarks/results-dlp.json (or --results).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import platform
import random
import statistics
import string
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from claude_bottle.policy.dlp import Scanner, available_engines

MIB = 1 << 20
RESULTS = Path(__file__).with_name("results-dlp.json")


def _source_code(limit: int) -> bytes:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out: list[bytes] = []
    size = 0
    for path in sorted(stdlib.glob("*.py")):
        data = path.read_bytes()
        out.append(data)
        size += len(data)
        if size >= limit:
            break
    return b"".join(out)[:limit]


def _json_responses(rnd: random.Random, limit: int) -> bytes:
    out: list[bytes] = []
    size = 0
    while size < limit:
        record = {
            "id": rnd.randint(1, 10**12),
            "uuid": str(hashlib.md5(rnd.randbytes(8)).hexdigest()),
            "name": "".join(rnd.choice(string.ascii_lowercase) for _ in range(12)),
            "score": rnd.random(),
            "tags": [rnd.choice(["alpha", "beta", "prod", "dev"]) for _ in range(3)],
            "sha": hashlib.sha1(rnd.randbytes(8)).hexdigest(),
            "created_at": f"2024-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}T12:00:00Z",
        }
        line = json.dumps(record).encode() + b"\n"
        out.append(line)
        size += len(line)
    return b"".join(out)[:limit]


def _base64_blobs(rnd: random.Random, limit: int) -> bytes:
    raw = base64.b64encode(rnd.randbytes(limit * 3 // 4 + 3))
    return b"\n".join(raw[i : i + 76] for i in range(0, len(raw), 76))[:limit]


def _lockfile(rnd: random.Random, limit: int) -> bytes:
    out: list[bytes] = []
    size = 0
    index = 0
    while size < limit:
        name = "".join(rnd.choice(string.ascii_lowercase) for _ in range(8))
        integrity = base64.b64encode(rnd.randbytes(64)).decode()
        entry = (
            f'    "node_modules/{name}{index}": {{\n'
            f'      "version": "1.{index % 50}.{index % 7}",\n'
            f'      "resolved": "https://registry.npmjs.org/{name}/-/{name}-1.0.0.tgz",\n'
            f'      "integrity": "sha512-{integrity}"\n    }},\n'
        ).encode()
        out.append(entry)
        size += len(entry)
        index += 1
    return b"".join(out)[:limit]


def _planted(rnd: random.Random) -> list[bytes]:
    def token(size: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(rnd.choice(alphabet) for _ in range(size))

    return [
        ("gh" + "p_" + token(36)).encode(),
        ("sk-ant-" + "api03-" + token(93) + "AA").encode(),
        ("AKIA" + token(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")).encode(),
        ("xo" + "xb-" + "123456789012-1234567890123-" + token(24)).encode(),
        ("AIza" + token(35)).encode(),
    ]


def build_corpus(size: int, seed: int = 8) -> tuple[bytes, int]:
    rnd = random.Random(seed)
    quarter = size // 4
    parts = [
        _source_code(quarter),
        _json_responses(rnd, quarter),
        _base64_blobs(rnd, quarter),
        _lockfile(rnd, size - 3 * quarter),
    ]
    secrets = _planted(rnd)
    body = bytearray()
    for index, part in enumerate(parts):
        body += part
        body += b"\nconfig = '" + secrets[index] + b"'\n"
    body += b"token=" + secrets[-1] + b"\n"
    return bytes(body), len(secrets)


def _median_time(action: Any, runs: int) -> tuple[float, Any]:
    result = action()  # warm-up (first scan allocates scratch space)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def bench_engine(engine: str, corpus: bytes, runs: int) -> dict[str, Any]:
    started = time.perf_counter()
    scanner = Scanner(engine=engine)
    build = time.perf_counter() - started
    seconds, found = _median_time(lambda: scanner.scan(corpus, "bench"), runs)

    def streamed() -> list[Any]:
        stream = scanner.stream("bench")
        hits = []
        for offset in range(0, len(corpus), 256 * 1024):
            hits.extend(stream.feed(corpus[offset : offset + 256 * 1024]))
        hits.extend(stream.finish())
        return hits

    stream_seconds, stream_found = _median_time(streamed, runs)
    assert stream_found == found, "stream and one-shot scans disagree"
    size_mib = len(corpus) / MIB
    return {
        "engine": engine,
        "patterns": len(scanner.pattern_names),
        "build_seconds": round(build, 3),
        "scan_seconds_median": round(seconds, 4),
        "mib_per_s": round(size_mib / seconds, 1),
        "stream_mib_per_s": round(size_mib / stream_seconds, 1),
        "findings": sorted({finding.pattern for finding in found}),
        "finding_count": len(found),
    }


def bench_detect_secrets(corpus: bytes) -> dict[str, Any] | None:
    try:
        from detect_secrets import SecretsCollection  # type: ignore[import-not-found]
        from detect_secrets.settings import default_settings  # type: ignore[import-not-found]
    except ImportError:
        return None
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as handle:
        handle.write(corpus)
        path = handle.name
    try:
        with default_settings():
            collection = SecretsCollection()
            started = time.perf_counter()
            collection.scan_file(path)
            seconds = time.perf_counter() - started
        found = [secret for _, secret in collection]
    finally:
        Path(path).unlink()
    from importlib.metadata import version

    return {
        "tool": "detect-secrets",
        "version": version("detect-secrets"),
        "scan_seconds": round(seconds, 3),
        "mib_per_s": round(len(corpus) / MIB / seconds, 2),
        "finding_count": len(found),
        "finding_types": sorted({secret.type for secret in found}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--all-engines", action="store_true", help="also time the slow pure-Python fallback"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the figures")
    args = parser.parse_args()
    corpus, planted = build_corpus(int(args.size_mib * MIB))
    engines = [engine for engine in available_engines() if args.all_engines or engine != "re"]
    results: dict[str, Any] = {
        "corpus_mib": round(len(corpus) / MIB, 2),
        "planted_secrets": planted,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "engines": [bench_engine(engine, corpus, args.runs) for engine in engines],
        "detect_secrets": bench_detect_secrets(corpus),
    }
    for row in results["engines"]:
        print(
            f"claude-bottle DLP [{row['engine']}]: {row['mib_per_s']} MiB/s one-shot, "
            f"{row['stream_mib_per_s']} MiB/s streamed, {row['finding_count']} findings, "
            f"{row['patterns']} patterns, built in {row['build_seconds']} s"
        )
    other = results["detect_secrets"]
    if other is None:
        print("detect-secrets: not installed (pip install detect-secrets) - skipped")
    else:
        print(
            f"detect-secrets {other['version']}: {other['mib_per_s']} MiB/s, "
            f"{other['finding_count']} findings"
        )
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
