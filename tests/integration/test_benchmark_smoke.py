"""The benchmark harness still runs end to end: `benchmarks/run.py --smoke`.

A benchmark is not a test: nothing here looks at a timing. What is checked is that every
case produced its figures for claude-bottle (a real bottle, a real bundle, the docker
backend where an engine runs), that the report was written where `--out` says and
nowhere else, and that a missing anchor is recorded rather than fatal.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import backend_unavailable

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = (
    "benchmarks/results.json",
    "benchmarks/results-dlp.json",
    "benchmarks/results-tls.json",
    "docs/benchmarks.md",
    "docs/benchmarks-tls.md",
)


def _digests() -> dict[str, str]:
    return {name: hashlib.sha256((ROOT / name).read_bytes()).hexdigest() for name in COMMITTED}


@pytest.mark.timeout(600)
def test_smoke_run_measures_every_case_and_writes_only_into_out(tmp_path: Path) -> None:
    before = _digests()
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _digests() == before, "a smoke run must not replace the measured figures"

    res = json.loads((out / "results.json").read_text())
    assert res["smoke"] is True
    startup = res["startup"]
    assert "claude-bottle_error" not in startup, startup
    assert startup["claude-bottle"]["median"] > 0
    assert startup["bwrap (floor)"]["median"] > 0
    assert "srt" in startup or "srt_error" in startup

    docker = res["startup_docker"]
    if backend_unavailable("docker") is None:
        for case in (
            "claude-bottle (host bundle)",
            "claude-bottle (bundle container)",
            "container topology floor (sh)",
            "docker run",
        ):
            assert docker[case]["median"] > 0, docker
    else:
        assert "error" in docker

    assert res["bulk"]["claude-bottle"]["median"] > 0, res["bulk"]
    assert res["bulk"]["direct"]["median"] > 0
    for mode in ("keepalive", "newconn"):
        ours = res["small"][f"{mode}/claude-bottle"]
        assert ours["n"] > 0 and "p50_added_ms" in ours, res["small"]
        for anchor in ("tinyproxy", "mitmdump"):
            assert f"{mode}/{anchor}" in res["small"] or f"{mode}/{anchor}_error" in res["small"]
    tunnels = res["concurrency"]["claude-bottle"]
    assert (tunnels["tunnels"], tunnels["errors"], tunnels["stalls_over_5s"]) == (50, 0, 0)
    assert 0 < tunnels["rss_idle_mib"] <= tunnels["rss_loaded_mib"]

    dlp = res["dlp"]
    assert "error" not in dlp, dlp
    assert json.loads((out / "results-dlp.json").read_text()) == dlp
    assert dlp["engines"] and all(engine["finding_count"] > 0 for engine in dlp["engines"])

    git = res["git_gate"]
    assert "error" not in git, git
    assert json.loads((out / "results-git.json").read_text()) == git
    assert git["failures"] == [] and git["refused_as_expected"], git
    for case in ("clone/gate (cold cache)", "clone/direct", "push/gate", "refused push/gate"):
        assert git["cases"][case]["wall_s"]["median"] > 0, git
    assert res["tls"] == {}, res["tls"]  # tls_intercept.py ran
    tls = json.loads((out / "results-tls.json").read_text())
    for kind in ("download", "upload"):
        for case in ("tunnel", "intercept", "intercept+dlp"):
            assert tls[kind][case]["median"] > 0, tls[kind]
    assert "TLS interception" in (out / "benchmarks.md").read_text()
    scale = res["scale"]
    assert scale["counts"] == [2]
    two = scale["claude-bottle"]["2"]
    assert two["failures"] == 0 and two["up_p50_ms"] > 0, two
    assert 0 < two["pss_by_process_mib"]["claude-bottle"] <= two["pss_per_bottle_mib"], two
    assert "srt" in scale or "srt_error" in scale
    soak = res["soak"]
    assert soak["counts"]["small"] > 0 and soak["counts"]["dlp_refused"] > 0, soak
    assert soak["counts"]["downloads"] > 0 and soak["counts"]["errors"] == 0, soak
    assert soak["audit_ok"] and soak["audit_records"] > soak["counts"]["small"], soak

    cases = {row["case"] for row in res["ratios"]}
    assert "bulk vs direct" in cases
    assert ("start-up vs srt" in cases) == ("srt" in startup)
    assert res["chart_error"] is None
    assert (out / "ratios.png").read_bytes().startswith(b"\x89PNG")
    table = (out / "benchmarks.md").read_text()
    assert "Command: `bash benchmarks/run.sh --smoke`" in table
    assert "| start-up `run -- true` | " in table
    assert "| bulk 4 MiB via CONNECT (intercept off) | " in table
    assert "| git push of 20 new commits through the gate | " in table
    assert "| scale: N bottles at once" in table
    assert "| soak: one bundle, " in table
