"""The docker bottle's `docker run` options are its security boundary: pin them, and the plan."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from claude_bottle.backend.base import LaunchRequest
from claude_bottle.backend.docker.backend import DockerBackend, state_label
from claude_bottle.backend.docker.bottle_plan import (
    AgentSpec,
    BundleSpec,
    Mount,
    agent_command,
    agent_run_args,
    bundle_command,
    bundle_run_args,
    sockets_volume_options,
)
from claude_bottle.config.model import (
    BottleSection,
    Config,
    DockerSection,
    EgressConfig,
    ResolvePin,
)
from claude_bottle.errors import ConfigError

LABELS = (
    ("claude-bottle.bottle", "proj-abcde"),
    ("claude-bottle.instance", "0a1b2c"),
    ("claude-bottle.state", "5e5e5e5e5e5e"),
)

AGENT = AgentSpec(
    container="claude-bottle-proj-abcde-0a1b2c-agent",
    image="claude-bottle-agent:0123456789abcdef",
    hostname="proj-abcde",
    user="1000:1000",
    uid=1000,
    gid=1000,
    workspace="/home/alice/proj",
    home="/home/alice",
    home_source="/home/alice/.local/state/claude-bottle/bottles/proj-abcde/home",
    sockets=Mount("volume", "claude-bottle-proj-abcde-0a1b2c-sockets", "/run/claude-bottle/bundle"),
    exec_dir="/run/user/1000/claude-bottle/proj-abcde/exec",
    seccomp_profile="/run/user/1000/claude-bottle/proj-abcde/seccomp.json",
    read_only=("/home/alice/src/lib",),
    relay_port=3128,
    pids_limit=4096,
    memory="8589934592",
    labels=(*LABELS, ("claude-bottle.role", "agent")),
    cpus=1.5,
    tmpfs_size=67108864,
)

BUNDLE = BundleSpec(
    container="claude-bottle-proj-abcde-0a1b2c-bundle",
    image="claude-bottle-bundle:fedcba9876543210",
    user="1000:1000",
    network="claude-bottle-proj-abcde-0a1b2c",
    volume="claude-bottle-proj-abcde-0a1b2c-sockets",
    control_dir="/run/user/1000/claude-bottle/proj-abcde/control",
    settings_file="/run/user/1000/claude-bottle/proj-abcde/bundle.json",
    env=(("HOME", "/home/alice"),),
    state_dir="/home/alice/.local/state/claude-bottle/bottles/proj-abcde",
    mounts=(),
    labels=(*LABELS, ("claude-bottle.role", "bundle")),
)


def test_agent_run_args_are_pinned() -> None:
    assert agent_run_args(AGENT) == [
        "--name",
        "claude-bottle-proj-abcde-0a1b2c-agent",
        "--hostname",
        "proj-abcde",
        "--label",
        "claude-bottle.bottle=proj-abcde",
        "--label",
        "claude-bottle.instance=0a1b2c",
        "--label",
        "claude-bottle.state=5e5e5e5e5e5e",
        "--label",
        "claude-bottle.role=agent",
        "--network",
        "none",
        "--dns",
        "127.0.0.1",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--security-opt",
        "seccomp=/run/user/1000/claude-bottle/proj-abcde/seccomp.json",
        "--pids-limit",
        "4096",
        "--memory",
        "8589934592",
        "--memory-swap",
        "8589934592",
        "--cpus",
        "1.5",
        "--user",
        "1000:1000",
        "--workdir",
        "/home/alice/proj",
        "--tmpfs",
        "/tmp:exec,mode=1777,size=67108864",
        "--tmpfs",
        "/var/tmp:exec,mode=1777,size=67108864",
        "--mount",
        "type=bind,source=/home/alice/.local/state/claude-bottle/bottles/proj-abcde/home,"
        "target=/home/alice",
        "--mount",
        "type=bind,source=/home/alice/proj,target=/home/alice/proj",
        "--mount",
        "type=bind,source=/home/alice/src/lib,target=/home/alice/src/lib,readonly",
        "--mount",
        "type=volume,source=claude-bottle-proj-abcde-0a1b2c-sockets,"
        "target=/run/claude-bottle/bundle,readonly",
        "--mount",
        "type=bind,source=/run/user/1000/claude-bottle/proj-abcde/exec,"
        "target=/run/claude-bottle/exec",
    ]


def test_agent_command_is_the_relay_holding_the_bottle_open() -> None:
    assert agent_command(3128, 3129) == [
        "python3",
        "-I",
        "-S",
        "/usr/local/lib/claude-bottle/relay.py",
        "--listen",
        "3128=/run/claude-bottle/bundle/proxy.sock",
        "--listen",
        "3129=/run/claude-bottle/bundle/gateway.sock",
        "--listen",
        "3130=/run/claude-bottle/bundle/git.sock",
        "--listen",
        "3131=/run/claude-bottle/bundle/hook.sock",
        "--exec-socket",
        "/run/claude-bottle/exec/exec.sock",
        "--hold",
    ]


def test_bundle_run_args_are_pinned() -> None:
    assert bundle_run_args(BUNDLE) == [
        "--name",
        "claude-bottle-proj-abcde-0a1b2c-bundle",
        "--label",
        "claude-bottle.bottle=proj-abcde",
        "--label",
        "claude-bottle.instance=0a1b2c",
        "--label",
        "claude-bottle.state=5e5e5e5e5e5e",
        "--label",
        "claude-bottle.role=bundle",
        "--network",
        "claude-bottle-proj-abcde-0a1b2c",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        "1000:1000",
        "--memory",
        "1073741824",
        "--memory-swap",
        "1073741824",
        "--pids-limit",
        "512",
        "--ulimit",
        "nofile=8192:8192",
        "--entrypoint",
        "/opt/claude-bottle/venv/bin/python3",
        "--tmpfs",
        "/tmp",
        "--mount",
        "type=volume,source=claude-bottle-proj-abcde-0a1b2c-sockets,"
        "target=/run/claude-bottle/bundle",
        "--mount",
        "type=bind,source=/run/user/1000/claude-bottle/proj-abcde/control,"
        "target=/run/claude-bottle/control",
        "--mount",
        "type=bind,source=/run/user/1000/claude-bottle/proj-abcde/bundle.json,"
        "target=/run/claude-bottle/bundle.json,readonly",
        "--mount",
        "type=bind,source=/home/alice/.local/state/claude-bottle/bottles/proj-abcde,"
        "target=/var/lib/claude-bottle",
        "--env",  # plain settings only: every secret is handed over the control socket
        "HOME=/home/alice",
    ]


def test_bundle_extra_mounts_come_last() -> None:
    spec = dataclasses.replace(
        BUNDLE,
        env=(),
        mounts=(
            Mount("bind", "/home/alice/test-ca.pem", "/run/claude-bottle/upstream-ca.pem", True),
            Mount("bind", "/home/alice/.claude", "/home/alice/.claude"),
        ),
    )
    assert bundle_run_args(spec)[-4:] == [
        "--mount",
        "type=bind,source=/home/alice/test-ca.pem,target=/run/claude-bottle/upstream-ca.pem,"
        "readonly",
        "--mount",
        "type=bind,source=/home/alice/.claude,target=/home/alice/.claude",
    ]


def test_bundle_command_serves_its_settings_and_reads_no_secret_file() -> None:
    assert bundle_command() == [
        "-m",
        "claude_bottle.bundle.server",
        "/run/claude-bottle/bundle.json",
    ]


def test_mount_fields_with_commas_are_quoted() -> None:
    mount = Mount("bind", "/work/a,b", "/work/a,b", readonly=True)
    assert mount.arg() == 'type=bind,"source=/work/a,b","target=/work/a,b",readonly'
    assert Mount("bind", '/x"y', "/z").arg() == 'type=bind,"source=/x""y",target=/z'


def test_sockets_volume_is_a_small_tmpfs_owned_by_the_user() -> None:
    assert sockets_volume_options(1000, 100) == {
        "type": "tmpfs",
        "device": "tmpfs",
        "o": "size=8m,uid=1000,gid=100,mode=0755",
    }


# --- the plan ------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLAUDE_BOTTLE_RUNTIME_DIR", str(tmp_path / "rt"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", "/opt/host-only/bin:/usr/bin")
    monkeypatch.setenv("MY_API_KEY", "not-for-the-bottle")
    (tmp_path / "home").mkdir()
    (tmp_path / "ws").mkdir()
    return tmp_path


def _request(root: Path, config: Config, detach: bool = False) -> LaunchRequest:
    """A request; "auto" placement becomes "container" (auto asks the engine)."""
    if config.docker.bundle == "auto":
        config = config._replace(docker=config.docker._replace(bundle="container"))
    return LaunchRequest(
        name="proj-abcde",
        workspace=root / "ws",
        config=config,
        command=("claude",),
        detach=detach,
    )


def test_plan_names_labels_and_bridge_network(dirs: Path) -> None:
    plan = DockerBackend().plan(_request(dirs, Config()))
    prefix = f"claude-bottle-proj-abcde-{plan.instance}"
    assert len(plan.instance) == 6
    assert plan.agent.container == f"{prefix}-agent"
    assert plan.bundle.container == f"{prefix}-bundle"
    assert plan.volume == f"{prefix}-sockets"
    assert plan.network == "claude-bottle" and plan.bundle.network == "claude-bottle"
    assert plan.labels() == {
        "claude-bottle.bottle": "proj-abcde",
        "claude-bottle.state": state_label(),
        "claude-bottle.instance": plan.instance,
    }
    assert plan.agent.workspace == str((dirs / "ws").resolve())
    assert plan.agent.home == str((dirs / "home").resolve())
    assert plan.agent.exec_dir == str(dirs / "rt" / "proj-abcde" / "exec")
    assert plan.bundle.state_dir == str(dirs / "state" / "bottles" / "proj-abcde")
    assert plan.agent.image.startswith("claude-bottle-agent:")
    assert plan.bundle.image.startswith("claude-bottle-bundle:")


def test_a_second_plan_is_a_new_launch(dirs: Path) -> None:
    one = DockerBackend().plan(_request(dirs, Config()))
    two = DockerBackend().plan(_request(dirs, Config()))
    assert one.instance != two.instance
    assert one.agent.container != two.agent.container


def test_loopback_pin_puts_the_bundle_on_the_host_network(dirs: Path) -> None:
    config = Config(
        egress=EgressConfig(
            allow=("api.test",), resolve=(ResolvePin("api.test", "127.0.0.1", 8443),)
        )
    )
    plan = DockerBackend().plan(_request(dirs, config))
    assert plan.network is None
    assert plan.bundle.network == "host"
    args = agent_run_args(plan.agent)
    assert args[args.index("--network") + 1] == "none"  # the agent never leaves none
    rendered = plan.render()
    assert "host (a pin, the gateway or an ssh remote is on the host's loopback)" in rendered


def test_non_loopback_pin_keeps_the_bridge(dirs: Path) -> None:
    config = Config(egress=EgressConfig(resolve=(ResolvePin("api.test", "10.1.2.3", None),)))
    plan = DockerBackend().plan(_request(dirs, config))
    assert plan.network is not None and plan.bundle.network == plan.network


def test_environment_is_the_image_s_not_the_host_s(dirs: Path) -> None:
    plan = DockerBackend().plan(_request(dirs, Config(egress=EgressConfig(intercept=True))))
    env = plan.env
    assert "/opt/host-only/bin" not in env["PATH"]
    assert env["PATH"].startswith("/usr/local/sbin:/usr/local/bin")
    assert env["HOME"] == plan.agent.home
    assert env["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert "MY_API_KEY" not in env
    assert env["SSL_CERT_FILE"] == "/run/claude-bottle/bundle/ca-bundle.pem"
    assert env["GIT_SSL_CAINFO"] == "/run/claude-bottle/bundle/ca-bundle.pem"
    assert env["NODE_EXTRA_CA_CERTS"] == "/run/claude-bottle/bundle/ca.pem"


def test_without_interception_tools_use_the_image_trust_store(dirs: Path) -> None:
    plan = DockerBackend().plan(_request(dirs, Config(egress=EgressConfig(intercept=False))))
    assert plan.env["NODE_EXTRA_CA_CERTS"] == "/etc/ssl/certs/ca-certificates.crt"
    assert "SSL_CERT_FILE" not in plan.env


def test_read_only_grants_are_checked(dirs: Path) -> None:
    (dirs / "home" / ".ssh").mkdir()
    (dirs / "lib").mkdir()
    ok = Config(bottle=BottleSection(read_only=(str(dirs / "lib"),)))
    assert DockerBackend().plan(_request(dirs, ok)).agent.read_only == (str(dirs / "lib"),)
    with pytest.raises(ConfigError, match=r"\.ssh"):
        DockerBackend().plan(_request(dirs, Config(bottle=BottleSection(read_only=("~",)))))
    with pytest.raises(ConfigError, match="does not exist"):
        DockerBackend().plan(
            _request(dirs, Config(bottle=BottleSection(read_only=(str(dirs / "nope"),))))
        )


def test_workspace_docker_cannot_mount_is_refused(dirs: Path) -> None:
    odd = dirs / "a:b"
    odd.mkdir()
    request = _request(dirs, Config())._replace(workspace=odd)
    with pytest.raises(ConfigError, match="docker cannot mount"):
        DockerBackend().plan(request)


def test_plan_prints_what_a_person_needs_to_judge_it(dirs: Path) -> None:
    plan = DockerBackend().plan(_request(dirs, Config(), detach=True))
    text = plan.render()
    for expected in (
        "agent container (docker)",
        "none (loopback only)",
        "all capabilities dropped, no-new-privileges, seccomp profile",
        "docker (the agent container's cgroup)",
        f"{plan.network} (bridge, outbound access)",
        'chosen: [docker] bundle = "container"',
        f"volume {plan.volume}",
        "audit.jsonl",
    ):
        assert expected in text, expected
    data = json.loads(plan.to_json())
    assert data["backend"] == "docker" and data["detach"] is True
    assert data["agent"]["container"] == plan.agent.container
    assert data["limits"]["pids"] == 4096 and data["limits"]["disk"] == 10 * 1024**3


def test_state_label_names_the_state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "a"))
    first = state_label()
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "b"))
    assert state_label() != first
    assert len(first) == 12


def test_injected_secrets_reach_the_bundle_container_by_handover_only(dirs: Path) -> None:
    from claude_bottle.backend.docker.handover import resolve
    from claude_bottle.backend.docker.launch import _settings
    from claude_bottle.bundle.settings import InjectionSpec
    from claude_bottle.config.model import CredentialsConfig

    secret = "ghp_" + "Zq8Xw2Lk9Vb4Nm7Rt1Yp3Hs6Jd5Fg0Ca8Ue2Wo"[:36]
    (dirs / "token").write_text(secret)
    injection = InjectionSpec(("api.github.com",), "GITHUB_TOKEN", f"file:{dirs / 'token'}")
    config = Config(credentials=CredentialsConfig(inject=(injection,)))
    plan = DockerBackend().plan(_request(dirs, config))
    placeholder = plan.env["GITHUB_TOKEN"]
    assert placeholder.startswith("ghp_") and placeholder != secret
    settings = _settings(plan)
    (spec,) = settings.injections
    assert spec.secret == "handed" and spec.placeholder == placeholder
    assert settings.handed_secrets
    assert secret not in plan.to_json() and secret not in json.dumps(settings._asdict())
    assert plan.bundle is not None and secret not in " ".join(bundle_run_args(plan.bundle))
    handover = resolve(plan.injections, plan.anthropic_credential, {}, Path(plan.agent.home))
    assert handover.injected == {"GITHUB_TOKEN": secret}


def test_host_placement_has_no_bundle_container_network_or_volume(dirs: Path) -> None:
    config = Config(docker=DockerSection(bundle="host"))
    plan = DockerBackend().plan(_request(dirs, config))
    assert plan.placement == "host" and plan.runs_host_bundle()
    assert plan.bundle is None and plan.network is None and plan.volume is None
    sockets = dirs / "rt" / "proj-abcde" / "bundle"
    assert plan.agent.sockets == Mount("bind", str(sockets), "/run/claude-bottle/bundle", True)
    args = agent_run_args(plan.agent)
    # The agent container keeps every restriction; the socket dir is bound read-only.
    for flag in ("--read-only", "--cap-drop", "no-new-privileges", "--pids-limit", "--memory"):
        assert flag in args
    assert args[args.index("--network") + 1] == "none"
    assert f"type=bind,source={sockets},target=/run/claude-bottle/bundle,readonly" in args
    text = plan.render()
    assert "bundle (host process)" in text and 'chosen: [docker] bundle = "host"' in text
    assert json.loads(plan.to_json())["placement"] == "host"


def test_only_a_bundle_container_hashes_the_bundle_image_inputs(
    dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle image's tag reads ~90 files; a host bundle's start has no use for it."""
    from claude_bottle.backend.docker import images

    def unreadable() -> object:
        raise OSError("bundle inputs read")

    monkeypatch.setattr(images, "bundle_image", unreadable)
    host = DockerBackend().plan(_request(dirs, Config(docker=DockerSection(bundle="host"))))
    assert host.bundle is None
    with pytest.raises(ConfigError, match="cannot read the image build inputs"):
        DockerBackend().plan(_request(dirs, Config()))


def test_container_placement_does_not_run_a_host_bundle(dirs: Path) -> None:
    plan = DockerBackend().plan(_request(dirs, Config()))
    assert plan.placement == "container" and not plan.runs_host_bundle()
    assert plan.bundle is not None and plan.agent.sockets.kind == "volume"


def test_disk_sizes_the_home_as_root_with_the_local_engine(
    dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from claude_bottle import home_image
    from claude_bottle.backend.docker import backend as docker_backend

    monkeypatch.setattr(home_image, "unavailable", lambda **_: None)
    monkeypatch.setattr(docker_backend, "_engine_mounts_problem", lambda: None)
    plan = DockerBackend().plan(_request(dirs, Config()))
    assert plan.home_image == str(Path(plan.state_dir) / "home.img")
    assert "the home: an ext4 image" in plan.limits.disk_mechanism
    assert not plan.limits.unapplied
    monkeypatch.setattr(docker_backend, "_engine_mounts_problem", lambda: "remote engine")
    plan = DockerBackend().plan(_request(dirs, Config()))
    assert plan.home_image is None and "the home: not bounded" in plan.limits.disk_mechanism
    assert [u.key for u in plan.limits.unapplied] == ["disk"]
    assert "remote engine" in plan.limits.unapplied[0].reason


def test_only_an_engine_in_our_mount_namespace_gets_the_home_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from claude_bottle.backend.docker import backend as docker_backend

    pid_file = tmp_path / "docker.pid"
    monkeypatch.setattr(docker_backend, "ENGINE_PID_FILES", (pid_file,))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    pid_file.write_text(str(os.getpid()))  # an engine that shares our mounts
    assert docker_backend._engine_mounts_problem() is None
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2376")
    assert "not the local one" in str(docker_backend._engine_mounts_problem())
    monkeypatch.delenv("DOCKER_HOST")
    pid_file.write_text("999999999")  # no such process: cannot tell, so not bounded
    assert "another mount namespace" in str(docker_backend._engine_mounts_problem())


def test_a_user_who_may_not_read_the_engines_namespace_compares_the_root_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user may not read root's /proc/PID/ns/mnt; the id of the mount at `/` in both
    mount tables tells the same (each namespace's copy of a mount has its own id)."""
    from claude_bottle.backend.docker import backend as docker_backend

    stat = os.stat

    def no_namespace_links(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if str(path).endswith("/ns/mnt"):
            raise PermissionError(13, "Permission denied", str(path))
        return stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", no_namespace_links)
    assert docker_backend._same_mount_namespace(os.getpid())
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 27 0:21 / /proc rw - proc proc rw\n"
        "999998 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "999999 27 8:1 / / rw - ext4 /dev/sda1 rw\n"  # the last mount at / is the one in view
    )
    assert docker_backend._root_mount_id(table) == "999999"
    ours = docker_backend._root_mount_id(Path("/proc/self/mountinfo"))
    assert ours is not None and ours != "999999"
    monkeypatch.setattr(
        docker_backend, "_root_mount_id", lambda path: "999999" if "self" not in str(path) else ours
    )
    assert not docker_backend._same_mount_namespace(os.getpid())  # another namespace's copy
