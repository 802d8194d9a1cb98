"""Fixtures for tests that run real bottles.

Each test gets its own state, runtime and config dirs (so nothing touches
the user's), a workspace, and loopback upstreams pinned with
[egress.resolve]. Bottles run through the real CLI in a subprocess, the
way a person runs them. Parametrize `backend` to run the same suite on
every backend.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.upstream import RecordingHTTPServer

BACKENDS = os.environ.get("CLAUDE_BOTTLE_TEST_BACKENDS", "namespace,docker,smolmachines").split(",")
# The docker backend runs the suite once per bundle placement: "docker:host" and
# "docker:container" (a plain "docker" param means the configured placement, auto).
DOCKER_PLACEMENTS = ("host", "container")
VARIANTS = [
    variant
    for name in BACKENDS
    for variant in ([f"docker:{p}" for p in DOCKER_PLACEMENTS] if name == "docker" else [name])
]


def backend_unavailable(name: str) -> str | None:
    from claude_bottle.backend import registry

    problems = registry.get(name).preflight()
    return "; ".join(problems) if problems else None


@dataclass
class BottleEnv:
    backend: str
    root: Path
    workspace: Path
    env: dict[str, str]
    config: Path
    upstream: RecordingHTTPServer
    docker_bundle: str | None = None  # --docker-bundle for run and plan (docker only)

    def write_config(self, text: str) -> None:
        self.config.write_text(textwrap.dedent(text))

    def cli(
        self, *args: str, timeout: float = 60, input: bytes | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        if self.docker_bundle and args and args[0] in ("run", "plan"):
            args = (args[0], "--docker-bundle", self.docker_bundle, *args[1:])
        result = subprocess.run(
            [sys.executable, "-m", "claude_bottle", *args],
            env=self.env,
            cwd=self.workspace,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input.decode() if input else None,
            stdin=None if input else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"claude-bottle {' '.join(args)} failed: {result.stderr}")
        return result

    def run(
        self,
        *command: str,
        name: str = "t",
        extra: Sequence[str] = (),
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return self.cli(
            "run",
            "--backend",
            self.backend,
            "--name",
            name,
            *extra,
            "--",
            *command,
            timeout=timeout,
        )

    def start(self, script: str, name: str = "t") -> subprocess.Popen[str]:
        """`run -- /bin/sh -c script` in the background, with text pipes for stdout/stderr."""
        argv = [sys.executable, "-m", "claude_bottle", "run", "--backend", self.backend]
        if self.docker_bundle:
            argv += ["--docker-bundle", self.docker_bundle]
        return subprocess.Popen(
            [*argv, "--name", name, "--", "/bin/sh", "-c", script],
            env=self.env,
            cwd=self.workspace,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def sh(
        self, script: str, name: str = "t", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-c", script, name=name, timeout=timeout)

    def py(
        self, code: str, name: str = "t", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run Python inside the bottle (the interpreter claude-bottle itself runs on)."""
        probe = self.workspace / f"probe_{name}.py"
        probe.write_text(textwrap.dedent(code))
        python = "python3" if self.backend == "docker" else real_python()  # the image has its own
        return self.run(python, "-I", "-S", str(probe), name=name, timeout=timeout)

    def state_dir(self, name: str = "t") -> Path:
        return self.root / "state" / "bottles" / name


def real_python() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


@pytest.fixture(params=VARIANTS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend's name; its variant (`docker:host`) is read by `bottle_env`."""
    name = str(request.param).partition(":")[0]
    reason = backend_unavailable(name)
    if reason:
        pytest.skip(f"{name} backend unavailable here: {reason}")
    return name


@pytest.fixture
def upstream() -> Iterator[RecordingHTTPServer]:
    server = RecordingHTTPServer()
    yield server
    server.close()


@pytest.fixture
def bottle_env(
    tmp_path: Path, backend: str, upstream: RecordingHTTPServer, request: pytest.FixtureRequest
) -> Iterator[BottleEnv]:
    root = tmp_path
    workspace = root / "workspace"
    workspace.mkdir()
    runtime = Path(f"/tmp/cbt-{os.getpid()}-{abs(hash(str(tmp_path))) % 100000}")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "CLAUDE_BOTTLE_STATE_DIR": str(root / "state"),
        "CLAUDE_BOTTLE_RUNTIME_DIR": str(runtime),
        "CLAUDE_BOTTLE_CONFIG": str(root / "config.toml"),
        "XDG_DATA_HOME": str(root / "data"),
    }
    config = root / "config.toml"
    callspec = getattr(request.node, "callspec", None)
    variant = str(callspec.params.get("backend", "")) if callspec else ""
    placement = variant.partition(":")[2] or None
    be = BottleEnv(backend, root, workspace, env, config, upstream, placement)
    be.write_config(f"""
        [egress]
        allow = ["allowed.test", "*.wild.test"]
        [egress.resolve]
        "allowed.test" = "127.0.0.1:{upstream.port}"
        "a.wild.test" = "127.0.0.1:{upstream.port}"
        "denied.test" = "127.0.0.1:{upstream.port}"
    """)
    yield be
    subprocess.run(
        [sys.executable, "-m", "claude_bottle", "stop", "--all"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    shutil.rmtree(runtime, ignore_errors=True)
