"""The docker backend's two images, tagged by a content hash of everything they are built from.

agent  (Dockerfile.agent): Debian, Node.js, Claude Code, git, python3 (venv, pip), curl, relay.py
       or, with `[docker] base_image` (Dockerfile.agent-on-base): the user's image plus the
       relay and Claude Code, its tag also hashing the base image's id
bundle (Dockerfile.bundle): Debian, python3 + the runtime requirements, the claude_bottle package

A tag is `<repo>:<16 hex of sha256(build inputs)>`, so an image is built
once per distinct input and reused from the engine's cache afterwards;
`claude-bottle image build --rebuild` refreshes what the inputs do not pin
(the Debian packages, the latest Claude Code).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, NamedTuple

from claude_bottle.backend.base import AgentImages
from claude_bottle.backend.docker import docker
from claude_bottle.errors import MissingDependency

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parents[1]  # src/claude_bottle
RELAY_SCRIPT = PACKAGE_ROOT / "bundle" / "relay.py"
AGENT_REPO = "claude-bottle-agent"
BUNDLE_REPO = "claude-bottle-bundle"
BASE_IMAGE = "debian:bookworm-slim"
IMAGE_LABEL = "claude-bottle.image"  # its value: the image's role
ROLES = ("agent", "bundle")
# Debian's place for locally added CAs: a TLS-inspecting proxy's root lives here, and the
# image needs it both to build (npm) and at run time. Extra PEM file: $CLAUDE_BOTTLE_EXTRA_CA.
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
CA_PLACEHOLDER = b"# certificates the host trusts beyond Debian's are copied next to this file\n"
BUNDLE_SUBPACKAGES = ("bundle", "policy")
DISTRIBUTION = "claude-bottle"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """An image as its build inputs: context files (path -> bytes) and build args."""

    role: str  # agent | bundle
    repo: str
    files: Mapping[str, bytes]
    build_args: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(b"claude-bottle-image-v1\0")
        for name in sorted(self.files):
            data = self.files[name]
            h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
        for key in sorted(self.build_args):
            h.update(b"arg\0" + key.encode() + b"\0" + self.build_args[key].encode() + b"\0")
        return h.hexdigest()

    @property
    def tag(self) -> str:
        return f"{self.repo}:{self.digest[:16]}"

    def write_context(self, directory: Path) -> None:
        for name, data in self.files.items():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def _package_files(root: Path = PACKAGE_ROOT) -> dict[str, bytes]:
    """What the bundle imports, as `claude_bottle/<relative path>`: the top-level modules
    and the bundle and policy subpackages (not the CLI, config or backends)."""
    paths = [p for p in root.glob("*.py")]
    for sub in BUNDLE_SUBPACKAGES:
        paths += [p for p in (root / sub).rglob("*.py") if "__pycache__" not in p.parts]
    return {
        f"claude_bottle/{path.relative_to(root).as_posix()}": path.read_bytes()
        for path in sorted(paths)
    }


def extra_ca_files(ca_dir: Path = HOST_CA_DIR, extra: str | None = None) -> dict[str, bytes]:
    """`ca/<name>.crt` per CA the host added to its trust store (and $CLAUDE_BOTTLE_EXTRA_CA)."""
    files = {"ca/README": CA_PLACEHOLDER}
    if ca_dir.is_dir():
        for path in sorted(ca_dir.rglob("*.crt")):
            if path.is_file():
                name = path.relative_to(ca_dir).as_posix().replace("/", "_")
                files[f"ca/{name}"] = path.read_bytes()
    extra = os.environ.get("CLAUDE_BOTTLE_EXTRA_CA") if extra is None else extra
    if extra:
        files["ca/claude-bottle-extra.crt"] = Path(extra).read_bytes()
    return files


class BaseImage(NamedTuple):
    """The user's image the agent image is built on (`[docker] base_image`)."""

    ref: str  # as configured
    image_id: str  # what it is now: a rebuilt base gives the agent image a new tag
    path: str  # its PATH: the bottle runs the image's toolchain


def base_image(ref: str) -> BaseImage:
    """The configured base image as the engine has it; MissingDependency when it has not."""
    found = docker.image_inspect(ref)
    if found is None:
        raise MissingDependency(
            f"[docker] base_image {ref} is not on this Docker engine",
            f"pull or build it first: docker pull {ref}",
        )
    env = (found.get("Config") or {}).get("Env") or []
    paths = [str(e).partition("=")[2] for e in env if str(e).startswith("PATH=")]
    return BaseImage(ref, str(found.get("Id", "")), paths[-1] if paths else "")


def agent_image(claude_code_version: str = "latest", base: BaseImage | None = None) -> ImageSpec:
    if base is None:
        return ImageSpec(
            role="agent",
            repo=AGENT_REPO,
            files={
                "Dockerfile": (HERE / "Dockerfile.agent").read_bytes(),
                "relay.py": RELAY_SCRIPT.read_bytes(),
                **extra_ca_files(),
            },
            build_args={"CLAUDE_CODE_VERSION": claude_code_version},
        )
    return ImageSpec(
        role="agent",
        repo=AGENT_REPO,
        files={
            "Dockerfile": (HERE / "Dockerfile.agent-on-base").read_bytes(),
            "relay.py": RELAY_SCRIPT.read_bytes(),
            **extra_ca_files(),
        },
        build_args={
            "CLAUDE_CODE_VERSION": claude_code_version,
            "BASE_IMAGE": base.ref,
            "BASE_IMAGE_ID": base.image_id,
        },
    )


# Run with the base image's /bin/sh before building on it: one line per missing piece.
BASE_CHECK = """\
if command -v python3 >/dev/null 2>&1; then
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null \
    || echo "python-too-old $(python3 -c 'import platform; print(platform.python_version())')"
else
  echo no-python3
fi
if ! command -v claude >/dev/null 2>&1; then
  { command -v node && command -v npm; } >/dev/null 2>&1 || echo no-node
fi
echo checked
"""


def base_problems(ref: str, output: str, shell_ran: bool) -> list[str]:
    """What the base image lacks for a bottle, each with its fix, from BASE_CHECK's output."""
    if not shell_ran:
        return [
            f"the base image {ref} has no /bin/sh, which the relay and the bottle's commands "
            "need; fix: build it FROM an image with a shell (Debian, Ubuntu, Alpine, …)"
        ]
    problems = []
    for line in output.splitlines():
        word, _, detail = line.partition(" ")
        if word == "no-python3":
            problems.append(
                f"the base image {ref} has no python3, which the bottle's relay runs on; "
                "fix: install Python >= 3.9 in it (Debian/Ubuntu: apt-get install python3)"
            )
        elif word == "python-too-old":
            problems.append(
                f"the base image {ref} has Python {detail}; the bottle's relay needs >= 3.9; "
                "fix: install a newer python3 in it"
            )
        elif word == "no-node":
            problems.append(
                f"the base image {ref} has neither `claude` nor Node.js with npm to install it; "
                "fix: install nodejs and npm in it, or Claude Code's native build (claude on "
                "PATH)"
            )
    return problems


def check_base(ref: str) -> None:
    """Name everything the base image lacks at once (MissingDependency), before a build."""
    result = docker.run_once(ref, ["/bin/sh", "-c", BASE_CHECK])
    shell_ran = "checked" in result.stdout.splitlines()
    problems = base_problems(ref, result.stdout, shell_ran)
    if problems:
        raise MissingDependency("; ".join(problems))


def _project(name: str) -> str:
    """A project's name as PEP 503 normalises it (`Foo_bar.baz` -> `foo-bar-baz`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _dist_infos() -> dict[str, Path]:
    """Each installed project's `.dist-info` directory, the first on sys.path winning, as
    importlib.metadata finds it (without its import and scan: ~25 ms of every launch)."""
    found: dict[str, Path] = {}
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info"):
                project = _project(name.removesuffix(".dist-info").partition("-")[0])
                found.setdefault(project, Path(entry or ".", name))
    return found


def _metadata(project: str) -> list[tuple[str, str]] | None:
    """The header fields of an installed project's METADATA; None when it is not found so."""
    directory = _dist_infos().get(_project(project))
    if directory is None:
        return None
    try:
        text = (directory / "METADATA").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = []
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep and not line[:1].isspace():
            fields.append((key.strip(), value.strip()))
    return fields


def declared_requirements() -> list[str]:
    """The package's runtime requirements (no extras), from its metadata or pyproject.toml."""
    fields = _metadata(DISTRIBUTION)
    found = [value for key, value in fields if key == "Requires-Dist"] if fields else None
    if found is None:
        try:
            from importlib import metadata

            found = metadata.requires(DISTRIBUTION)
        except Exception:  # not installed (run from a source tree)
            found = None
    if found is None:
        import tomllib

        pyproject = PACKAGE_ROOT.parents[1] / "pyproject.toml"
        with pyproject.open("rb") as handle:
            found = list(tomllib.load(handle)["project"]["dependencies"])
    return [r for r in found if "extra ==" not in r.replace('"', " ").replace("'", " ")]


def pinned_requirements(
    requirements: list[str], installed: Callable[[str], str | None]
) -> list[str]:
    """Each requirement pinned to the version `installed` reports (the host's), marker kept.

    The bundle then runs the dependency versions the host-process bundle runs and the
    tests ran with, and the image's tag changes when they change.
    """
    pinned = []
    for requirement in requirements:
        spec, sep, marker = requirement.partition(";")
        match = _NAME.match(spec.strip())
        if match is None:
            continue
        name = match.group(0)
        version = installed(name)
        line = f"{name}=={version}" if version else spec.strip()
        pinned.append(f"{line}; {marker.strip()}" if sep else line)
    return pinned


def _installed_version(name: str) -> str | None:
    versions = [value for key, value in _metadata(name) or () if key == "Version"]
    if versions:
        return versions[0]
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


CLI_ONLY_REQUIREMENTS = frozenset({"textual", "tomlkit", "publicsuffixlist"})
"""Runtime requirements of the CLI's own commands (`supervise`, `allow --always`, `policy
suggest`) that the bundle never imports: left out of its image."""


def bundle_requirements() -> list[str]:
    declared = declared_requirements()
    needed = [
        r for r in declared if (m := _NAME.match(r)) and m.group(0) not in CLI_ONLY_REQUIREMENTS
    ]
    return pinned_requirements(needed, _installed_version)


def bundle_image() -> ImageSpec:
    requirements = bundle_requirements()
    return ImageSpec(
        role="bundle",
        repo=BUNDLE_REPO,
        files={
            "Dockerfile": (HERE / "Dockerfile.bundle").read_bytes(),
            "requirements.txt": "".join(f"{r}\n" for r in requirements).encode(),
            **extra_ca_files(),
            **_package_files(),
        },
    )


def ensure(spec: ImageSpec, *, rebuild: bool = False, output: IO[str] | None = None) -> bool:
    """Build the image unless the engine already has its tag; True when it was built."""
    if not rebuild and docker.image_inspect(spec.tag) is not None:
        return False
    stream = output if output is not None else sys.stderr
    base = spec.build_args.get("BASE_IMAGE")
    if base:
        check_base(base)
    stream.write(f"claude-bottle: building image {spec.tag} (once per change of its inputs)\n")
    stream.flush()
    with tempfile.TemporaryDirectory(prefix="claude-bottle-build-") as tmp:
        context = Path(tmp)
        spec.write_context(context)
        docker.build(
            context,
            spec.tag,
            build_args=spec.build_args,
            labels={IMAGE_LABEL: spec.role},
            no_cache=rebuild,
            output=stream,
        )
    return True


def build_images(
    *, rebuild: bool = False, output: IO[str] | None = None, base: BaseImage | None = None
) -> list[str]:
    """What `claude-bottle image build` does: make sure both images exist; their tags."""
    specs = [agent_image(base=base), bundle_image()]
    stream = output if output is not None else sys.stderr
    for spec in specs:
        if not ensure(spec, rebuild=rebuild, output=stream):
            stream.write(f"claude-bottle: image {spec.tag} is up to date\n")
    return [spec.tag for spec in specs]


class DockerImages(AgentImages):
    """These images, as the registry offers them to the CLI and to other backends."""

    def agent_tag(self) -> str:
        return agent_image().tag

    def ensure_agent(self, tag: str) -> None:
        try:
            spec = agent_image()
        except OSError:
            return
        if spec.tag == tag:
            ensure(spec)

    def build(self, *, rebuild: bool, base_ref: str | None) -> list[str]:
        """With `base_ref` (`[docker] base_image`) the agent image is built on it."""
        from claude_bottle.backend.docker.backend import DockerBackend

        DockerBackend().require()
        base = base_image(base_ref) if base_ref else None
        return build_images(rebuild=rebuild, base=base)
