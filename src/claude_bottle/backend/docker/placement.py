"""Where a docker bottle's bundle runs: a host process, or a container beside the agent.

host       the bundle is a host process, started exactly as for the namespace backend,
           and its socket directory is bound read-only into the agent container. No
           network, no volume, no second container: the fastest start.
container  the bundle is a container on the engine's `claude-bottle` network, its
           sockets in a tmpfs volume both containers mount. For engines whose containers
           cannot reach a host unix socket (a VM, a remote engine, a rootless daemon under
           another uid).
auto       host when the engine is local (a unix socket), runs on this host's kernel (not
           Docker Desktop's VM, per `docker info`) and a socket bound into a throwaway
           container can be connected to from inside; else container. The answer is
           cached per engine (its socket's identity), so only the first plan pays for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

from claude_bottle import paths
from claude_bottle.backend.docker import docker

HOST = "host"
CONTAINER = "container"
AUTO = "auto"
SETTINGS = (AUTO, HOST, CONTAINER)
DEFAULT_SOCKET = "/var/run/docker.sock"
PROBE_TIMEOUT = 60.0
PROBE_MESSAGE = b"claude-bottle placement probe"
PROBE_DIR = "/run/claude-bottle-probe"
CACHE_FILE = "docker-placement.json"
# Connects to the probe socket from inside and says the message: bytes, no shell.
PROBE_CODE = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_UNIX)\n"
    f"s.connect('{PROBE_DIR}/probe.sock')\n"
    f"s.sendall({PROBE_MESSAGE!r})\n"
)


class Placement(NamedTuple):
    kind: str  # HOST | CONTAINER
    reason: str  # why, for `plan` and `doctor`


def choose(setting: str, probe_image: str, uid: int, gid: int) -> Placement:
    """The placement `setting` ([docker] bundle or --docker-bundle) means on this engine."""
    if setting == HOST:
        return Placement(HOST, 'chosen: [docker] bundle = "host"')
    if setting == CONTAINER:
        return Placement(CONTAINER, 'chosen: [docker] bundle = "container"')
    return detect(probe_image, uid, gid)


def engine_socket() -> str | None:
    """The engine's unix socket, or None when the client talks to it some other way."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :]
    return None


def _engine_key(sock: str) -> str | None:
    """Names one engine process: its socket is made anew each time the daemon starts."""
    try:
        st = os.stat(sock)
    except OSError:
        return None
    context = os.environ.get("DOCKER_CONTEXT", "")
    return f"{sock}|{context}|{st.st_dev}|{st.st_ino}|{st.st_ctime_ns}"


def detect(probe_image: str, uid: int, gid: int) -> Placement:
    """`auto`: host if this engine can reach a host socket, else container (cached)."""
    sock = engine_socket()
    if sock is None:
        host = os.environ.get("DOCKER_HOST", "")
        return Placement(CONTAINER, f"auto: the engine is not local (DOCKER_HOST={host})")
    key = _engine_key(sock)
    if key is None:
        return Placement(CONTAINER, f"auto: the engine's socket {sock} is not visible here")
    cached = _read_cache(key)
    if cached is not None:
        return cached
    found, cache = _examine(probe_image, uid, gid)
    if cache:
        _write_cache(key, found)
    return found


def _examine(probe_image: str, uid: int, gid: int) -> tuple[Placement, bool]:
    """The engine's answer and whether it may be cached (a missing image may be built)."""
    try:
        info = docker.info()
    except docker.DockerError as exc:
        return Placement(CONTAINER, f"auto: docker info failed ({exc.message})"), False
    system = str(info.get("OperatingSystem", ""))
    kernel = str(info.get("KernelVersion", ""))
    if "docker desktop" in system.lower():
        return Placement(CONTAINER, f"auto: the engine runs in a VM ({system})"), True
    if kernel != os.uname().release:
        reason = f"auto: the engine's kernel ({kernel}) is not this host's ({os.uname().release})"
        return Placement(CONTAINER, reason), True
    if docker.image_inspect(probe_image) is None:
        reason = (
            "auto: the socket test needs the agent image, which is not built yet "
            "(`claude-bottle image build`, then the next bottle is checked again)"
        )
        return Placement(CONTAINER, reason), False
    problem = probe_bind(probe_image, uid, gid)
    if problem is not None:
        return Placement(CONTAINER, f"auto: a host socket bound into a container: {problem}"), True
    reason = "auto: local engine on this host's kernel; a host socket is reachable from inside"
    return Placement(HOST, reason), True


def probe_bind(image: str, uid: int, gid: int) -> str | None:
    """Bind a listening host socket into a throwaway container and connect to it from
    inside, as the bottle would; None when that works, else what went wrong."""
    with tempfile.TemporaryDirectory(prefix="claude-bottle-probe-") as directory:
        os.chmod(directory, 0o755)
        path = Path(directory) / "probe.sock"
        received: list[bytes] = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(path))
            os.chmod(path, 0o666)
            server.listen(1)
            server.settimeout(PROBE_TIMEOUT)

            def accept() -> None:
                with contextlib.suppress(OSError):
                    peer, _ = server.accept()
                    with peer:
                        peer.settimeout(PROBE_TIMEOUT)
                        received.append(peer.recv(len(PROBE_MESSAGE)))

            thread = threading.Thread(target=accept, daemon=True)
            thread.start()
            options = [
                "--rm",
                *("--network", "none", "--read-only"),
                *("--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
                *("--user", f"{uid}:{gid}", "--entrypoint", "python3"),
                *("--label", "claude-bottle.role=probe"),
                "--mount",
                f"type=bind,source={directory},target={PROBE_DIR},readonly",
            ]
            try:
                result = docker.run_attached(options, image, ["-I", "-S", "-c", PROBE_CODE])
            except docker.DockerError as exc:
                return exc.message
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines()
                return lines[-1] if lines else f"exit status {result.returncode}"
            thread.join(5)
    return None if received == [PROBE_MESSAGE] else "nothing arrived on the host side"


def _cache_path() -> Path:
    return paths.cache_root() / CACHE_FILE


def _read_cache(key: str) -> Placement | None:
    try:
        data = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("engine") != key:
        return None
    kind, reason = data.get("kind"), data.get("reason")
    if kind not in (HOST, CONTAINER) or not isinstance(reason, str):
        return None
    return Placement(kind, f"{reason} (cached)")


def _write_cache(key: str, placement: Placement) -> None:
    """Best effort: without a cache the next plan asks the engine again."""
    path = _cache_path()
    data = {"engine": key, "kind": placement.kind, "reason": placement.reason}
    with contextlib.suppress(OSError):
        paths.make_private_dir(path.parent)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(data))
        os.replace(partial, path)
