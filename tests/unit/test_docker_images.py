"""Images are tagged by what they are built from: same inputs, same tag; any change, a new one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.backend.docker import docker, images
from claude_bottle.backend.docker.images import ImageSpec, pinned_requirements


def _spec(**changes: Any) -> ImageSpec:
    base: dict[str, Any] = {
        "role": "agent",
        "repo": "claude-bottle-agent",
        "files": {"Dockerfile": b"FROM debian:bookworm-slim\n", "relay.py": b"print()\n"},
        "build_args": {"CLAUDE_CODE_VERSION": "latest"},
    }
    base.update(changes)
    return ImageSpec(**base)


def test_tag_is_repo_and_sixteen_hex_of_the_inputs() -> None:
    tag = _spec().tag
    repo, _, digest = tag.partition(":")
    assert repo == "claude-bottle-agent"
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert _spec().tag == tag  # deterministic
    files = dict(reversed(list(_spec().files.items())))
    assert _spec(files=files).tag == tag  # order of the inputs does not matter


@pytest.mark.parametrize(
    "change",
    [
        {"files": {"Dockerfile": b"FROM debian:bookworm-slim\n", "relay.py": b"print(1)\n"}},
        {"files": {"Dockerfile": b"FROM debian:bookworm-slim\n", "relay2.py": b"print()\n"}},
        {"build_args": {"CLAUDE_CODE_VERSION": "2.1.0"}},
        {"files": {"Dockerfile": b"FROM debian:bookworm-slim\nrelay.py", "": b"print()\n"}},
    ],
)
def test_any_change_of_the_inputs_changes_the_tag(change: dict[str, Any]) -> None:
    assert _spec(**change).tag != _spec().tag


def test_write_context_materialises_every_file(tmp_path: Path) -> None:
    spec = _spec(files={"Dockerfile": b"x", "claude_bottle/bundle/a.py": b"y"})
    spec.write_context(tmp_path)
    assert (tmp_path / "Dockerfile").read_bytes() == b"x"
    assert (tmp_path / "claude_bottle" / "bundle" / "a.py").read_bytes() == b"y"


def test_agent_image_is_built_from_the_shipped_dockerfile_and_relay() -> None:
    spec = images.agent_image()
    assert spec.files["Dockerfile"] == (images.HERE / "Dockerfile.agent").read_bytes()
    assert spec.files["relay.py"] == images.RELAY_SCRIPT.read_bytes()
    text = spec.files["Dockerfile"].decode()
    assert text.startswith("#") and "FROM debian:bookworm-slim" in text
    for needed in ("nodejs", "git", "python3", "ca-certificates", "curl"):
        assert needed in text
    assert "@anthropic-ai/claude-code" in text
    assert "useradd" in text and "COPY relay.py /usr/local/lib/claude-bottle/relay.py" in text
    assert images.agent_image("2.0.0").tag != spec.tag


def test_bundle_image_carries_only_what_the_bundle_imports() -> None:
    spec = images.bundle_image()
    names = set(spec.files)
    assert "claude_bottle/bundle/server.py" in names
    assert "claude_bottle/policy/allowlist.py" in names
    assert "claude_bottle/errors.py" in names and "claude_bottle/__init__.py" in names
    assert not any(n.startswith(("claude_bottle/cli/", "claude_bottle/backend/")) for n in names)
    assert not any("__pycache__" in n for n in names)
    requirements = spec.files["requirements.txt"].decode().splitlines()
    assert any(r.startswith("httptools==") for r in requirements)
    assert any(r.startswith("cryptography==") for r in requirements)
    assert not any("pytest" in r for r in requirements)  # no test extras


def test_requirements_are_pinned_to_the_host_s_versions_markers_kept() -> None:
    installed = {"h11": "0.16.0", "hyperscan": "0.9.1"}
    pinned = pinned_requirements(
        [
            "h11>=0.14",
            'hyperscan>=0.7; sys_platform == "linux"',
            "brotli>=1.0",
            "",
        ],
        installed.get,
    )
    assert pinned == ["h11==0.16.0", 'hyperscan==0.9.1; sys_platform == "linux"', "brotli>=1.0"]


def test_declared_requirements_drop_extras() -> None:
    declared = images.declared_requirements()
    assert declared and not any("extra" in r for r in declared)


def test_installed_metadata_is_read_as_importlib_metadata_reads_it() -> None:
    """The launch reads dist-info directories itself (importlib.metadata costs ~25 ms)."""
    from importlib import metadata

    assert images.declared_requirements() == [
        r for r in metadata.requires(images.DISTRIBUTION) or [] if "extra ==" not in r
    ]
    for requirement in images.declared_requirements():
        match = images._NAME.match(requirement)
        assert match is not None
        assert images._installed_version(match.group(0)) == metadata.version(match.group(0))
    assert images._installed_version("no-such-project-here") is None


def test_extra_ca_files(tmp_path: Path) -> None:
    cas = tmp_path / "cas"
    (cas / "corp").mkdir(parents=True)
    (cas / "proxy.crt").write_bytes(b"PEM-1")
    (cas / "corp" / "root.crt").write_bytes(b"PEM-2")
    (cas / "ignored.txt").write_bytes(b"not a cert")
    extra = tmp_path / "extra.pem"
    extra.write_bytes(b"PEM-3")
    files = images.extra_ca_files(cas, str(extra))
    assert files == {
        "ca/README": images.CA_PLACEHOLDER,
        "ca/corp_root.crt": b"PEM-2",
        "ca/proxy.crt": b"PEM-1",
        "ca/claude-bottle-extra.crt": b"PEM-3",
    }
    assert images.extra_ca_files(tmp_path / "none", "") == {"ca/README": images.CA_PLACEHOLDER}


def test_ensure_builds_only_when_the_tag_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    present: set[str] = set()
    builds: list[tuple[str, dict[str, str], bool, list[str]]] = []

    def inspect(ref: str) -> dict[str, str] | None:
        return {"Id": "x"} if ref in present else None

    def build(context: Path, tag: str, **kwargs: Any) -> None:
        files = sorted(p.name for p in context.iterdir())
        builds.append((tag, kwargs["labels"], kwargs["no_cache"], files))
        present.add(tag)

    monkeypatch.setattr(docker, "image_inspect", inspect)
    monkeypatch.setattr(docker, "build", build)
    spec = _spec()
    out = io.StringIO()
    assert images.ensure(spec, output=out) is True
    assert "building image " + spec.tag in out.getvalue()
    assert builds == [
        (spec.tag, {"claude-bottle.image": "agent"}, False, ["Dockerfile", "relay.py"])
    ]
    assert images.ensure(spec, output=out) is False  # cached: nothing to do
    assert images.ensure(spec, rebuild=True, output=out) is True
    assert builds[-1][2] is True  # --no-cache: refresh what the inputs do not pin


def test_an_agent_image_on_a_base_is_tagged_by_the_bases_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inspected = {
        "Id": "sha256:" + "ab" * 32,
        "Config": {"Env": ["PATH=/opt/team/bin:/usr/bin:/bin", "LANG=C.UTF-8"]},
    }
    monkeypatch.setattr(docker, "image_inspect", lambda ref: inspected if ref == "team:1" else None)
    base = images.base_image("team:1")
    assert base == images.BaseImage("team:1", inspected["Id"], "/opt/team/bin:/usr/bin:/bin")
    on_base = images.agent_image(base=base)
    assert b"FROM ${BASE_IMAGE}" in on_base.files["Dockerfile"]
    assert on_base.build_args["BASE_IMAGE"] == "team:1"
    assert on_base.tag != images.agent_image().tag
    rebuilt = base._replace(image_id="sha256:" + "cd" * 32)
    assert images.agent_image(base=rebuilt).tag != on_base.tag  # the base changed: new tag
    with pytest.raises(images.MissingDependency, match="docker pull other:2"):
        images.base_image("other:2")


@pytest.mark.parametrize(
    ("output", "shell_ran", "named"),
    [
        ("", False, "has no /bin/sh"),
        ("no-python3\nchecked\n", True, "has no python3"),
        ("python-too-old 3.7.3\nchecked\n", True, "has Python 3.7.3"),
        ("no-node\nchecked\n", True, "neither `claude` nor Node.js"),
    ],
)
def test_a_base_lacking_what_a_bottle_needs_is_named_with_the_fix(
    output: str, shell_ran: bool, named: str
) -> None:
    problems = images.base_problems("team:1", output, shell_ran)
    assert len(problems) == 1 and named in problems[0] and "fix:" in problems[0]
    assert images.base_problems("team:1", "checked\n", True) == []


def test_building_on_a_base_checks_it_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def fake_run_once(image: str, command: list[str], timeout: float = 60) -> Any:
        assert image == "team:1" and command[0] == "/bin/sh"
        return subprocess.CompletedProcess(command, 0, "no-python3\nno-node\nchecked\n", "")

    built: list[str] = []
    monkeypatch.setattr(docker, "image_inspect", lambda ref: None)
    monkeypatch.setattr(docker, "run_once", fake_run_once)
    monkeypatch.setattr(docker, "build", lambda *a, **k: built.append("built"))
    spec = images.agent_image(base=images.BaseImage("team:1", "sha256:00", "/usr/bin"))
    with pytest.raises(images.MissingDependency) as caught:
        images.ensure(spec, output=io.StringIO())
    assert "no python3" in caught.value.message and "Node.js" in caught.value.message
    assert caught.value.exit_code == 3 and built == []


def test_image_build_builds_on_the_configured_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from claude_bottle.cli.main import cli

    config = tmp_path / "config.toml"
    config.write_text('[docker]\nbase_image = "team:1"\n')
    monkeypatch.setenv("CLAUDE_BOTTLE_CONFIG", str(config))
    (tmp_path / "ws").mkdir()
    monkeypatch.chdir(tmp_path / "ws")
    asked: list[str | None] = []

    def fake_build(self: images.DockerImages, *, rebuild: bool, base_ref: str | None) -> list[str]:
        asked.append(base_ref)
        return ["claude-bottle-agent:0123456789abcdef"]

    monkeypatch.setattr(images.DockerImages, "build", fake_build)
    result = CliRunner().invoke(cli, ["image", "build"])
    assert result.exit_code == 0, result.output
    assert asked == ["team:1"] and "claude-bottle-agent:0123456789abcdef" in result.output
