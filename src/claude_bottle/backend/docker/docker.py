"""Thin wrapper over the docker CLI: one function per subcommand the backend uses.

Each function builds an argv, runs it, and returns parsed output. A failing
command raises `DockerError` carrying the engine's own message and a hint
that says how to fix the common causes (daemon not running, no permission
on the socket, image missing). Nothing here knows about bottles.

The client may be newer than the engine (e.g. a 28.x client against a 20.10
engine): the client negotiates the API version by itself, so no
DOCKER_API_VERSION is set here; a user who pins it too high gets a hint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from claude_bottle.errors import LaunchError, MissingDependency

DOCKER = "docker"
DEFAULT_TIMEOUT = 120.0
BUILD_TAIL_LINES = 15

HINT_NOT_INSTALLED = (
    "install Docker: sudo apt-get install docker.io (Debian/Ubuntu), Docker Desktop "
    "(macOS), or run scripts/install-docker.sh"
)
HINT_DAEMON = (
    "start the Docker daemon: sudo systemctl start docker (Docker Desktop: open it; "
    "without systemd: sudo dockerd &)"
)
HINT_PERMISSION = (
    "your user may not use the Docker socket: sudo usermod -aG docker $USER, then log in again"
)
HINT_IMAGE = "build the images: claude-bottle image build"
HINT_BASE_IMAGE = (
    "the base image debian:bookworm-slim could not be pulled; without Docker Hub, "
    "run scripts/install-docker.sh to import it from debootstrap"
)
HINT_CONFLICT = "leftovers of an earlier bottle are in the way: claude-bottle cleanup"


class DockerError(LaunchError):
    """A docker command failed; `message` holds the engine's words, `hint` the fix."""

    def __init__(
        self, message: str, hint: str = "", *, argv: Sequence[str] = (), stderr: str = ""
    ) -> None:
        super().__init__(message, hint)
        self.argv = tuple(argv)
        self.stderr = stderr

    @property
    def missing(self) -> bool:
        """The object named does not exist (no such container, network, volume or image)."""
        text = self.stderr.lower()
        return "no such" in text or "not found" in text


def hint_for(stderr: str) -> str:
    """The fix for the usual causes of a failing docker command, judged by its message."""
    text = stderr.lower()
    if "permission denied" in text and ("docker.sock" in text or "daemon socket" in text):
        return HINT_PERMISSION
    if (
        "cannot connect to the docker daemon" in text
        or "is the docker daemon running" in text
        or "error during connect" in text
    ):
        return HINT_DAEMON
    if "client version" in text and "too new" in text:
        return "unset DOCKER_API_VERSION (the client negotiates the engine's version by itself)"
    if "debian:bookworm-slim" in text and ("pull" in text or "registry" in text):
        return HINT_BASE_IMAGE
    if "no such image" in text or "unable to find image" in text or "pull access denied" in text:
        return HINT_IMAGE
    if "conflict" in text and "already in use" in text:
        return HINT_CONFLICT
    if "already exists" in text:
        return HINT_CONFLICT
    return ""


def _engine_message(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if not line.upper().startswith("WARNING")]
    text = (errors or lines or ["no output"])[-1]
    stripped = None
    while stripped != text:
        stripped = text
        for prefix in ("docker: ", "Error response from daemon: ", "Error: "):
            text = text.removeprefix(prefix)
    return text[:500]


def _binary() -> str:
    found = shutil.which(DOCKER)
    if found is None:
        raise MissingDependency("the docker client is not installed", HINT_NOT_INSTALLED)
    return found


def _run(
    args: Sequence[str],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    argv = [_binary(), *args]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DockerError(
            f"docker {' '.join(args[:2])} did not answer within {timeout:.0f}s",
            HINT_DAEMON,
            argv=argv,
        ) from exc
    if check and result.returncode != 0:
        raise DockerError(
            f"docker {args[0]} failed: {_engine_message(result.stderr)}",
            hint_for(result.stderr),
            argv=argv,
            stderr=result.stderr,
        )
    return result


def _label_args(labels: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in sorted(labels.items()):
        args += ["--label", f"{key}={value}"]
    return args


def _filter_args(labels: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in sorted(labels.items()):
        args += ["--filter", f"label={key}={value}"]
    return args


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    rows = []
    for line in stdout.splitlines():
        if line.strip():
            row = json.loads(line)
            if isinstance(row, dict):
                rows.append(row)
    return rows


def parse_labels(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """Labels as `ls --format '{{json .}}'` prints them ("k=v,k2=v2"), or already a dict."""
    if not text:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    labels = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep:
            labels[key] = value
    return labels


# --- engine ---------------------------------------------------------------------------


def version() -> dict[str, Any]:
    """`docker version`: {"Client": {...}, "Server": {...}}; raises if the engine is unreachable."""
    result = _run(["version", "--format", "{{json .}}"], timeout=20)
    data = json.loads(result.stdout)
    return data if isinstance(data, dict) else {}


def info() -> dict[str, Any]:
    """`docker info`: the engine's configuration (storage driver, cgroups, OS...)."""
    result = _run(["info", "--format", "{{json .}}"], timeout=20)
    data = json.loads(result.stdout)
    if not isinstance(data, dict):
        return {}
    # Older clients print server errors inside the JSON and exit 0.
    errors = data.get("ServerErrors")
    if errors:
        message = "; ".join(str(e) for e in errors)
        raise DockerError(f"docker info failed: {message}", hint_for(message), stderr=message)
    return data


# --- images ---------------------------------------------------------------------------


def build(
    context: Path,
    tag: str,
    *,
    dockerfile: str = "Dockerfile",
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    no_cache: bool = False,
    output: IO[str] | None = None,
) -> None:
    """`docker build`, streaming its progress to `output` (stderr by default)."""
    args = ["build", "--tag", tag, "--file", str(context / dockerfile)]
    args += _label_args(labels or {})
    for key, value in sorted((build_args or {}).items()):
        args += ["--build-arg", f"{key}={value}"]
    if no_cache:
        args.append("--no-cache")
    args.append(str(context))
    argv = [_binary(), *args]
    stream = output if output is not None else sys.stderr
    tail: list[str] = []
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    assert process.stdout is not None
    with process:
        for line in process.stdout:
            stream.write(line)
            stream.flush()
            tail = [*tail[-(BUILD_TAIL_LINES - 1) :], line.rstrip("\n")]
    if process.returncode != 0:
        text = "\n".join(tail)
        raise DockerError(
            f"docker build of {tag} failed: {_engine_message(text)}",
            hint_for(text) or "see the build output above",
            argv=argv,
            stderr=text,
        )


def _inspect(
    kind: str,
    ref: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    missing: tuple[str, ...] = ("no such",),
) -> dict[str, Any] | None:
    """`docker KIND inspect REF`: the object's metadata, or None when the engine says
    (in words of `missing`) there is none."""
    args = [kind, "inspect", "--format", "{{json .}}", ref]
    result = _run(args, check=False, timeout=timeout)
    if result.returncode != 0:
        text = result.stderr.lower()
        if any(words in text for words in missing):
            return None
        raise DockerError(
            f"docker {kind} inspect failed: {_engine_message(result.stderr)}",
            hint_for(result.stderr),
            argv=["docker", *args],
            stderr=result.stderr,
        )
    data = json.loads(result.stdout)
    return data if isinstance(data, dict) else None


def image_inspect(ref: str) -> dict[str, Any] | None:
    """`docker image inspect`: the image's metadata, or None when there is no such image."""
    return _inspect("image", ref, timeout=30)


def image_ls(labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """`docker image ls`: images carrying every label given."""
    result = _run(["image", "ls", *_filter_args(labels), "--format", "{{json .}}"])
    return _json_lines(result.stdout)


def image_rm(refs: Iterable[str]) -> None:
    """`docker image rm`: untag (and delete) images; refuses images a container uses."""
    refs = list(refs)
    if refs:
        _run(["image", "rm", *refs])


# --- volumes --------------------------------------------------------------------------


def volume_create(
    name: str, *, labels: Mapping[str, str] | None = None, options: Mapping[str, str] | None = None
) -> str:
    args = ["volume", "create", "--driver", "local"]
    args += _label_args(labels or {})
    for key, value in (options or {}).items():
        args += ["--opt", f"{key}={value}"]
    args.append(name)
    return _run(args).stdout.strip()


def volume_rm(names: Iterable[str], *, force: bool = True) -> None:
    names = list(names)
    if names:
        _run(["volume", "rm", *(["--force"] if force else []), *names])


def volume_ls(labels: Mapping[str, str]) -> list[dict[str, Any]]:
    result = _run(["volume", "ls", *_filter_args(labels), "--format", "{{json .}}"])
    return _json_lines(result.stdout)


# --- networks -------------------------------------------------------------------------


def network_create(
    name: str, *, labels: Mapping[str, str] | None = None, options: Mapping[str, str] | None = None
) -> str:
    args = ["network", "create", "--driver", "bridge", *_label_args(labels or {})]
    for key, value in (options or {}).items():
        args += ["--opt", f"{key}={value}"]
    args.append(name)
    return _run(args).stdout.strip()


def network_inspect(name: str) -> dict[str, Any] | None:
    """`docker network inspect`: the network (driver, options, labels, containers), or None
    when it does not exist."""
    return _inspect("network", name, missing=("no such", "not found"))


def network_rm(names: Iterable[str]) -> None:
    names = list(names)
    if names:
        _run(["network", "rm", *names])


def network_ls(labels: Mapping[str, str]) -> list[dict[str, Any]]:
    result = _run(["network", "ls", "--no-trunc", *_filter_args(labels), "--format", "{{json .}}"])
    return _json_lines(result.stdout)


# --- containers -----------------------------------------------------------------------


def run(options: Sequence[str], image: str, command: Sequence[str] = ()) -> str:
    """`docker run --detach OPTIONS IMAGE COMMAND`: the new container's id.

    Never pulls: the images are built locally, and a missing one must fail at once.
    """
    result = _run(["run", "--detach", "--pull", "never", *options, image, *command])
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_attached(
    options: Sequence[str], image: str, command: Sequence[str] = (), timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`docker run OPTIONS IMAGE COMMAND` in the foreground (never pulled): its result."""
    return _run(["run", "--pull", "never", *options, image, *command], check=False, timeout=timeout)


def run_process(
    options: Sequence[str], image: str, command: Sequence[str], output: IO[bytes]
) -> subprocess.Popen[bytes]:
    """`docker run --rm OPTIONS IMAGE COMMAND`, attached, in the background (never pulled):
    the client ends once the container has ended and the engine has removed it. In its own
    session, so a signal for the CLI's process group does not end it early."""
    argv = [_binary(), "run", "--rm", "--pull", "never", *options, image, *command]
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True
    )


def run_once(
    image: str, command: Sequence[str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `command` in a throwaway container of `image`: no network, never pulled."""
    options = ["--rm", "--network", "none", "--pull", "never", "--cap-drop", "ALL"]
    options += ["--security-opt", "no-new-privileges", "--entrypoint", command[0]]
    return _run(["run", *options, image, *command[1:]], check=False, timeout=timeout)


def rm(containers: Iterable[str], *, force: bool = True) -> None:
    """`docker rm`: remove containers (with --force, running ones are killed first)."""
    containers = list(containers)
    if containers:
        _run(["rm", *(["--force"] if force else []), "--volumes", *containers])


def stop(containers: Iterable[str], *, timeout: int = 5) -> None:
    """`docker stop`: SIGTERM, then SIGKILL after `timeout` seconds."""
    containers = list(containers)
    if containers:
        _run(["stop", "--time", str(timeout), *containers], timeout=timeout + 30)


def kill(container: str, *, signal: str = "KILL") -> None:
    _run(["kill", "--signal", signal, container])


def ps(labels: Mapping[str, str], *, all: bool = True) -> list[dict[str, Any]]:
    """`docker ps`: containers carrying every label given (running and stopped with all)."""
    args = ["ps", *(["--all"] if all else []), "--no-trunc", *_filter_args(labels)]
    result = _run([*args, "--format", "{{json .}}"])
    return _json_lines(result.stdout)


def inspect(container: str) -> dict[str, Any] | None:
    """`docker container inspect`: the container's state, or None when it does not exist."""
    return _inspect("container", container)


def inspect_all(containers: Iterable[str]) -> list[dict[str, Any]]:
    """`docker container inspect A B ...` in one call: the states of those that exist."""
    containers = list(containers)
    if not containers:
        return []
    args = ["container", "inspect", "--format", "{{json .}}", *containers]
    result = _run(args, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        if not lines or not all("no such" in line.lower() for line in lines):
            raise DockerError(
                f"docker inspect failed: {_engine_message(result.stderr)}",
                hint_for(result.stderr),
                argv=["docker", *args],
                stderr=result.stderr,
            )
    return _json_lines(result.stdout)


def logs(container: str, *, tail: int = 20) -> str:
    """`docker logs --tail N`: the container's last output lines (stdout and stderr)."""
    result = _run(["logs", "--tail", str(tail), container], check=False)
    return (result.stdout + result.stderr).strip()
