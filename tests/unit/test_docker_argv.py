"""The docker wrapper: one function per subcommand, each argv pinned; engine errors explained."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.backend.docker import docker
from claude_bottle.errors import LaunchError, MissingDependency

DOCKER = "/usr/bin/docker"


@dataclass
class FakeRun:
    """Stands in for subprocess.run: records argv, answers with canned output."""

    stdout: str = ""
    stderr: str = ""
    returncode: int = 0
    calls: list[list[str]] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        self.kwargs.append(kwargs)
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, self.stderr)

    @property
    def argv(self) -> list[str]:
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRun]:
    runner = FakeRun()
    monkeypatch.setattr(docker.shutil, "which", lambda name: DOCKER)
    monkeypatch.setattr(docker.subprocess, "run", runner)
    yield runner


# --- engine --------------------------------------------------------------------------


def test_version(fake: FakeRun) -> None:
    fake.stdout = json.dumps({"Client": {"Version": "28.2.2"}, "Server": {"Os": "linux"}})
    assert docker.version()["Server"] == {"Os": "linux"}
    assert fake.argv == [DOCKER, "version", "--format", "{{json .}}"]
    assert fake.kwargs[0]["stdin"] is subprocess.DEVNULL
    assert fake.kwargs[0]["timeout"] == 20


def test_info(fake: FakeRun) -> None:
    fake.stdout = json.dumps({"OSType": "linux", "Driver": "overlay2"})
    assert docker.info()["Driver"] == "overlay2"
    assert fake.argv == [DOCKER, "info", "--format", "{{json .}}"]


def test_info_reports_server_errors_printed_inside_the_json(fake: FakeRun) -> None:
    fake.stdout = json.dumps({"ServerErrors": ["Cannot connect to the Docker daemon at x"]})
    with pytest.raises(docker.DockerError) as caught:
        docker.info()
    assert "Cannot connect" in caught.value.message
    assert caught.value.hint == docker.HINT_DAEMON


# --- images --------------------------------------------------------------------------


def test_image_inspect_found_and_missing(fake: FakeRun) -> None:
    fake.stdout = json.dumps({"Id": "sha256:abc"})
    assert docker.image_inspect("claude-bottle-agent:1") == {"Id": "sha256:abc"}
    assert fake.argv == [
        DOCKER,
        "image",
        "inspect",
        "--format",
        "{{json .}}",
        "claude-bottle-agent:1",
    ]
    fake.calls.clear()
    fake.returncode, fake.stdout = 1, ""
    fake.stderr = "Error: No such image: claude-bottle-agent:1"
    assert docker.image_inspect("claude-bottle-agent:1") is None


def test_image_inspect_other_failures_raise(fake: FakeRun) -> None:
    fake.returncode = 1
    fake.stderr = "permission denied while trying to connect to the Docker daemon socket"
    with pytest.raises(docker.DockerError) as caught:
        docker.image_inspect("x")
    assert caught.value.hint == docker.HINT_PERMISSION


def test_build_argv_streams_output_and_raises_with_the_tail(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[list[str]] = []

    class FakePopen:
        returncode = 0

        def __init__(self, argv: list[str], **kwargs: Any) -> None:
            seen.append(argv)
            assert kwargs["stderr"] is subprocess.STDOUT
            self.stdout = io.StringIO("Step 1/2 : FROM debian:bookworm-slim\nStep 2/2 : RUN x\n")

        def __enter__(self) -> FakePopen:
            return self

        def __exit__(self, *_: object) -> None:
            pass

    monkeypatch.setattr(docker.shutil, "which", lambda name: DOCKER)
    monkeypatch.setattr(docker.subprocess, "Popen", FakePopen)
    out = io.StringIO()
    docker.build(
        tmp_path,
        "claude-bottle-agent:abc",
        build_args={"B": "2", "A": "1"},
        labels={"claude-bottle.image": "agent"},
        output=out,
    )
    assert seen == [
        [
            DOCKER,
            "build",
            "--tag",
            "claude-bottle-agent:abc",
            "--file",
            str(tmp_path / "Dockerfile"),
            "--label",
            "claude-bottle.image=agent",
            "--build-arg",
            "A=1",
            "--build-arg",
            "B=2",
            str(tmp_path),
        ]
    ]
    assert "Step 2/2" in out.getvalue()  # progress is shown as it comes

    FakePopen.returncode = 1
    with pytest.raises(docker.DockerError) as caught:
        docker.build(tmp_path, "t:1", no_cache=True, output=io.StringIO())
    assert seen[-1][-2] == "--no-cache"
    assert "Step 2/2 : RUN x" in caught.value.message
    assert caught.value.hint == "see the build output above"


def test_image_ls_and_rm(fake: FakeRun) -> None:
    fake.stdout = '{"Repository":"claude-bottle-agent","Tag":"abc","Size":"1GB"}\n'
    assert docker.image_ls({"claude-bottle.image": "agent"})[0]["Tag"] == "abc"
    assert fake.calls[-1] == [
        DOCKER,
        "image",
        "ls",
        "--filter",
        "label=claude-bottle.image=agent",
        "--format",
        "{{json .}}",
    ]
    docker.image_rm(["claude-bottle-agent:abc"])
    assert fake.calls[-1] == [DOCKER, "image", "rm", "claude-bottle-agent:abc"]
    count = len(fake.calls)
    docker.image_rm([])
    assert len(fake.calls) == count


# --- volumes and networks ------------------------------------------------------------


def test_volume_create(fake: FakeRun) -> None:
    fake.stdout = "vol\n"
    name = docker.volume_create(
        "vol",
        labels={"b": "2", "a": "1"},
        options={"type": "tmpfs", "device": "tmpfs", "o": "size=1m,uid=1000"},
    )
    assert name == "vol"
    assert fake.argv == [
        DOCKER,
        "volume",
        "create",
        "--driver",
        "local",
        "--label",
        "a=1",
        "--label",
        "b=2",
        "--opt",
        "type=tmpfs",
        "--opt",
        "device=tmpfs",
        "--opt",
        "o=size=1m,uid=1000",
        "vol",
    ]


def test_volume_rm_and_nothing_to_remove(fake: FakeRun) -> None:
    docker.volume_rm([])
    assert fake.calls == []
    docker.volume_rm(["v1", "v2"])
    assert fake.argv == [DOCKER, "volume", "rm", "--force", "v1", "v2"]


def test_volume_ls_parses_json_lines(fake: FakeRun) -> None:
    fake.stdout = '{"Name":"v1","Labels":"claude-bottle.bottle=t,x=y"}\n\n{"Name":"v2"}\n'
    rows = docker.volume_ls({"claude-bottle.bottle": "t"})
    assert [r["Name"] for r in rows] == ["v1", "v2"]
    assert fake.argv == [
        DOCKER,
        "volume",
        "ls",
        "--filter",
        "label=claude-bottle.bottle=t",
        "--format",
        "{{json .}}",
    ]


def test_network_create_rm_ls(fake: FakeRun) -> None:
    fake.stdout = "abc123\n"
    assert docker.network_create("net", labels={"k": "v"}) == "abc123"
    assert fake.calls[-1] == [
        DOCKER,
        "network",
        "create",
        "--driver",
        "bridge",
        "--label",
        "k=v",
        "net",
    ]
    docker.network_rm(["net"])
    assert fake.calls[-1] == [DOCKER, "network", "rm", "net"]
    fake.stdout = '{"Name":"net","Labels":"k=v"}\n'
    assert docker.network_ls({"k": "v", "a": "b"})[0]["Name"] == "net"
    assert fake.calls[-1] == [
        DOCKER,
        "network",
        "ls",
        "--no-trunc",
        "--filter",
        "label=a=b",
        "--filter",
        "label=k=v",
        "--format",
        "{{json .}}",
    ]


# --- containers ----------------------------------------------------------------------


def test_run_detached_returns_the_id_after_warnings(fake: FakeRun) -> None:
    fake.stdout = "WARNING: ignored\ncafe1234\n"
    cid = docker.run(["--name", "c", "--network", "none"], "img:1", ["python3", "-I"])
    assert cid == "cafe1234"
    assert fake.argv == [
        DOCKER,
        "run",
        "--detach",
        "--pull",
        "never",
        "--name",
        "c",
        "--network",
        "none",
        "img:1",
        "python3",
        "-I",
    ]


def test_rm_stop_kill(fake: FakeRun) -> None:
    docker.rm(["a", "b"])
    assert fake.calls[-1] == [DOCKER, "rm", "--force", "--volumes", "a", "b"]
    docker.rm(["a"], force=False)
    assert fake.calls[-1] == [DOCKER, "rm", "--volumes", "a"]
    docker.stop(["b"], timeout=3)
    assert fake.calls[-1] == [DOCKER, "stop", "--time", "3", "b"]
    assert fake.kwargs[-1]["timeout"] == 33  # the engine's own grace, plus slack
    docker.kill("a")
    assert fake.calls[-1] == [DOCKER, "kill", "--signal", "KILL", "a"]
    docker.kill("a", signal="TERM")
    assert fake.calls[-1] == [DOCKER, "kill", "--signal", "TERM", "a"]
    count = len(fake.calls)
    docker.rm([])
    docker.stop([])
    assert len(fake.calls) == count


def test_ps(fake: FakeRun) -> None:
    fake.stdout = '{"Names":"c1","State":"running","Labels":"claude-bottle.role=agent"}\n'
    rows = docker.ps({"claude-bottle.state": "abc"})
    assert rows[0]["Names"] == "c1"
    assert fake.argv == [
        DOCKER,
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        "label=claude-bottle.state=abc",
        "--format",
        "{{json .}}",
    ]
    fake.calls.clear()
    docker.ps({}, all=False)
    assert fake.argv == [DOCKER, "ps", "--no-trunc", "--format", "{{json .}}"]


def test_inspect_found_and_missing(fake: FakeRun) -> None:
    fake.stdout = json.dumps({"State": {"Running": True, "Pid": 42}})
    assert docker.inspect("c")["State"]["Pid"] == 42  # type: ignore[index]
    assert fake.argv == [DOCKER, "container", "inspect", "--format", "{{json .}}", "c"]
    fake.returncode, fake.stderr = 1, "Error: No such container: c"
    assert docker.inspect("c") is None


def test_inspect_all_in_one_call_skips_the_missing(fake: FakeRun) -> None:
    fake.stdout = '{"Name": "/a", "State": {"Pid": 7}}\n'
    fake.returncode, fake.stderr = 1, "Error response from daemon: No such container: b\n"
    assert docker.inspect_all(["a", "b"]) == [{"Name": "/a", "State": {"Pid": 7}}]
    assert fake.argv == [DOCKER, "container", "inspect", "--format", "{{json .}}", "a", "b"]
    fake.stderr = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
    with pytest.raises(docker.DockerError) as caught:
        docker.inspect_all(["a"])
    assert caught.value.hint == docker.HINT_DAEMON
    count = len(fake.calls)
    assert docker.inspect_all([]) == [] and len(fake.calls) == count


def test_logs(fake: FakeRun) -> None:
    fake.stdout, fake.stderr = "out\n", "relay: cannot listen\n"
    assert docker.logs("c", tail=5) == "out\nrelay: cannot listen"
    assert fake.argv == [DOCKER, "logs", "--tail", "5", "c"]


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stderr", "hint"),
    [
        (
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
            "Is the docker daemon running?",
            docker.HINT_DAEMON,
        ),
        (
            "permission denied while trying to connect to the Docker daemon socket at "
            "unix:///var/run/docker.sock: Get ...: dial unix /var/run/docker.sock: "
            "connect: permission denied",
            docker.HINT_PERMISSION,
        ),
        ("Unable to find image 'claude-bottle-agent:1' locally", docker.HINT_IMAGE),
        ("Error: No such image: claude-bottle-agent:1", docker.HINT_IMAGE),
        (
            "pull access denied for debian, repository does not exist: debian:bookworm-slim "
            "registry-1.docker.io",
            docker.HINT_BASE_IMAGE,
        ),
        (
            'Conflict. The container name "/x" is already in use by container "abc"',
            docker.HINT_CONFLICT,
        ),
        ("something else entirely", ""),
    ],
)
def test_hints(stderr: str, hint: str) -> None:
    assert docker.hint_for(stderr) == hint


def test_failure_carries_the_engine_message_and_hint(fake: FakeRun) -> None:
    fake.returncode = 125
    fake.stderr = (
        "WARNING: something harmless\n"
        "docker: Error response from daemon: Cannot connect to the Docker daemon at "
        "unix:///var/run/docker.sock. Is the docker daemon running?\n"
    )
    with pytest.raises(docker.DockerError) as caught:
        docker.run([], "img")
    error = caught.value
    assert isinstance(error, LaunchError)  # exit code 125
    assert error.message == (
        "docker run failed: Cannot connect to the Docker daemon at "
        "unix:///var/run/docker.sock. Is the docker daemon running?"
    )
    assert error.hint == docker.HINT_DAEMON
    assert error.argv[:3] == (DOCKER, "run", "--detach")


def test_missing_flag_recognises_gone_objects() -> None:
    gone = docker.DockerError("x", stderr="Error: No such container: abc")
    assert gone.missing
    net = docker.DockerError("x", stderr="Error: network claude-bottle-t not found")
    assert net.missing
    assert not docker.DockerError("x", stderr="conflict: in use").missing


def test_missing_client_is_a_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker.shutil, "which", lambda name: None)
    with pytest.raises(MissingDependency) as caught:
        docker.version()
    assert "docker client is not installed" in caught.value.message
    assert "docker.io" in caught.value.hint


def test_hung_engine_times_out_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    monkeypatch.setattr(docker.shutil, "which", lambda name: DOCKER)
    monkeypatch.setattr(docker.subprocess, "run", hang)
    with pytest.raises(docker.DockerError) as caught:
        docker.version()
    assert "did not answer within 20s" in caught.value.message
    assert caught.value.hint == docker.HINT_DAEMON


def test_parse_labels() -> None:
    assert docker.parse_labels("a=1,b=x=y,broken") == {"a": "1", "b": "x=y"}
    assert docker.parse_labels({"a": "1"}) == {"a": "1"}
    assert docker.parse_labels(None) == {}
