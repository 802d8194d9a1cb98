"""Everyday work inside a bottle, with real tools: toolchains, package managers, git, tests.

Per backend (the `backend` fixture): the user's pyenv Python (namespace: the
host's toolchains run inside), a venv with `pip install` from a PEP 503 index,
`npm install` from a registry, `git clone` + `git commit` carrying the user's
identity, `python3 -m unittest`, a dev server reached from inside the same
bottle, and every TLS client on the machine trusting the bottle's CA. The
"internet" is `DevUpstreams`: HTTPS on loopback, pinned with [egress.resolve].
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.integration.conftest import BottleEnv, real_python
from tests.integration.dev_upstreams import (
    CRATE,
    NPM_PACKAGE,
    NPM_VALUE,
    WHEEL_PROJECT,
    WHEEL_VALUE,
    DevUpstreams,
)

pytestmark = pytest.mark.integration

# docker: the clients the agent image has (python3 there has pip but not requests)
IN_AGENT_IMAGE = {"curl", "git", "python-ssl", "pip", "node", "npm"}
RUN_TIMEOUT = 180


@pytest.fixture
def dev(tmp_path: Path, bottle_env: BottleEnv) -> Iterator[DevUpstreams]:
    directory = tmp_path / "dev"
    directory.mkdir()
    upstreams = DevUpstreams(directory)
    bottle_env.write_config(upstreams.egress_config())
    yield upstreams
    upstreams.close()


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# -- pyenv: the host's shims, pyenv and the selected version -----------------------------


def _pyenv_home(home: Path) -> Path:
    """pyenv as its installer lays it out, in a fresh home: shims on PATH, a real shim
    script, pyenv's own libexec (copied from the machine's pyenv, else a stand-in that
    selects as pyenv does), and versions that are the machine's Python."""
    root = home / ".pyenv"
    host_pyenv = shutil.which("pyenv")
    if host_pyenv:
        shutil.copytree(Path(os.path.realpath(host_pyenv)).parent, root / "libexec")
    else:  # stand-in for pyenv's libexec (named so): PYENV_VERSION, .python-version, version
        (root / "libexec").mkdir(parents=True)
        (root / "libexec/pyenv").write_text(
            textwrap.dedent("""\
                #!/usr/bin/env bash
                set -e
                [ "$1" = exec ] || { echo "stand-in pyenv: only exec" >&2; exit 1; }
                shift; program="$1"; shift
                version="$PYENV_VERSION"; dir="$PWD"
                while [ -z "$version" ] && [ -n "$dir" ]; do
                  [ -f "$dir/.python-version" ] && read -r version < "$dir/.python-version"
                  [ "$dir" = / ] && break; dir="$(dirname "$dir")"
                done
                [ -n "$version" ] || read -r version < "$PYENV_ROOT/version"
                exec "$PYENV_ROOT/versions/$version/bin/$program" "$@"
            """)
        )
        (root / "libexec/pyenv").chmod(0o755)
    (root / "shims").mkdir(parents=True)
    shim = root / "shims/python3"
    shim.write_text(
        textwrap.dedent(f"""\
            #!/usr/bin/env bash
            set -e
            [ -n "$PYENV_DEBUG" ] && set -x
            program="${{0##*/}}"
            export PYENV_ROOT="{root}"
            exec "{root}/libexec/pyenv" exec "$program" "$@"
        """)
    )
    shim.chmod(0o755)
    for version in ("3.98.0", "3.99.1"):
        bin_dir = root / "versions" / version / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "python3").symlink_to(real_python())
    (root / "version").write_text("3.98.0\n")
    return root


def test_pyenv_python_runs_the_selected_version_directly_and_from_bash(
    bottle_env: BottleEnv, tmp_path: Path
) -> None:
    if bottle_env.backend != "namespace":
        pytest.skip("the host's toolchains run inside only on the namespace backend")
    home = tmp_path / "home"
    root = _pyenv_home(home)
    bottle_env.env["HOME"] = str(home)
    bottle_env.env["PATH"] = f"{root}/shims:/usr/local/bin:/usr/bin:/bin"
    bottle_env.env.pop("PYENV_VERSION", None)
    probe = "import sys; print(sys.executable)"
    # The global version (3.98.0) until the workspace selects its own.
    out = _ok(bottle_env.run("python3", "-c", probe, name="g"))
    assert out.strip() == f"{root}/versions/3.98.0/bin/python3"
    (bottle_env.workspace / ".python-version").write_text("3.99.1\n")
    expected = f"{root}/versions/3.99.1/bin/python3"
    assert _ok(bottle_env.run("python3", "-c", probe, name="d")).strip() == expected
    out = _ok(bottle_env.run("bash", "-c", f"python3 -c '{probe}'", name="b"))
    assert out.strip() == expected  # not Debian's python3 further down PATH
    plan = bottle_env.cli("plan", "--backend", "namespace", "--", "python3").stdout
    assert f"{root}/versions/3.99.1" in plan and f"{root}/versions/3.98.0" not in plan


def test_a_command_the_bottle_cannot_run_fails_before_start_with_exit_3(
    bottle_env: BottleEnv, tmp_path: Path
) -> None:
    if bottle_env.backend != "namespace":
        pytest.skip("the host's toolchains run inside only on the namespace backend")
    home = tmp_path / "home"
    (home / ".aws/venv/bin").mkdir(parents=True)
    (home / ".aws/venv/bin/python").symlink_to(real_python())
    tool = home / "bin/cloud-tool"
    tool.parent.mkdir()
    tool.write_text(f"#!{home}/.aws/venv/bin/python\nprint('ran')\n")
    tool.chmod(0o755)
    assert subprocess.run([str(tool)], capture_output=True, text=True).stdout == "ran\n"
    bottle_env.env["HOME"] = str(home)
    bottle_env.env["PATH"] = f"{home}/bin:/usr/bin:/bin"
    result = bottle_env.run("cloud-tool")
    assert result.returncode == 3, result.stderr
    assert f"{home}/.aws/venv/bin/python" in result.stderr
    assert not (bottle_env.state_dir() / "plan.json").exists()  # it never started


# -- package managers through interception -------------------------------------------------


def test_venv_and_pip_install_from_an_https_index(bottle_env: BottleEnv, dev: DevUpstreams) -> None:
    module = WHEEL_PROJECT.replace("-", "_")
    out = _ok(
        bottle_env.sh(
            "python3 -m venv .v && .v/bin/pip install -q --disable-pip-version-check "
            f"--index-url https://pypi.test/simple/ {WHEEL_PROJECT} && "
            f".v/bin/python -c 'import {module}; print({module}.VALUE)'",
            timeout=RUN_TIMEOUT,
        )
    )
    assert WHEEL_VALUE in out
    assert "pypi.test" in dev.hosts_seen


def test_npm_install_from_an_https_registry(bottle_env: BottleEnv, dev: DevUpstreams) -> None:
    if shutil.which("npm") is None and bottle_env.backend == "namespace":
        pytest.skip("npm is not installed on this machine")
    app = bottle_env.workspace / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "version": "1.0.0"}\n')
    out = _ok(
        bottle_env.sh(
            f"cd app && npm install --no-audit --no-fund --registry https://npm.test/ "
            f"{NPM_PACKAGE} >/dev/null && node -e 'console.log(require(\"{NPM_PACKAGE}\"))'",
            timeout=RUN_TIMEOUT,
        )
    )
    assert NPM_VALUE in out
    assert (app / "node_modules" / NPM_PACKAGE / "index.js").is_file()


# -- git ---------------------------------------------------------------------------------------

HOST_GITCONFIG = """\
[user]
\tname = Grace Hopper
\temail = grace@example.test
[credential]
\thelper = store --file /nonexistent/GITCONFIG-MARKER
[url "https://x-access-token:GITCONFIG-MARKER@git.test/"]
\tinsteadOf = https://example.invalid/
"""


def test_git_clone_over_https_and_commit_as_the_user(
    bottle_env: BottleEnv, dev: DevUpstreams, tmp_path: Path
) -> None:
    gitconfig = tmp_path / "host-gitconfig"
    gitconfig.write_text(HOST_GITCONFIG)
    bottle_env.env["GIT_CONFIG_GLOBAL"] = str(gitconfig)
    out = _ok(
        bottle_env.sh(
            "git clone -q https://git.test/repo.git clone && cd clone && "
            "echo change >> README && git commit -qam 'from the bottle' && "
            "git log -1 --format='%an <%ae>|%cn <%ce>' && cat ~/.gitconfig",
            timeout=RUN_TIMEOUT,
        )
    )
    assert "Grace Hopper <grace@example.test>|Grace Hopper <grace@example.test>" in out
    assert "GITCONFIG-MARKER" not in out and "helper" not in out
    assert (bottle_env.workspace / "clone/README").read_text() == "seeded\nchange\n"


def test_git_identity_false_leaves_the_bottle_without_one(
    bottle_env: BottleEnv, dev: DevUpstreams, tmp_path: Path
) -> None:
    gitconfig = tmp_path / "host-gitconfig"
    gitconfig.write_text(HOST_GITCONFIG)
    bottle_env.env["GIT_CONFIG_GLOBAL"] = str(gitconfig)
    bottle_env.write_config(dev.egress_config() + "[bottle]\ngit_identity = false\n")
    out = bottle_env.sh("git config --global user.name || echo no-identity").stdout
    assert "no-identity" in out and "Grace" not in out


# -- tests and dev servers ----------------------------------------------------------------


def test_unittest_of_a_tiny_project(bottle_env: BottleEnv) -> None:
    project = bottle_env.workspace / "proj"
    project.mkdir()
    (project / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (project / "test_calc.py").write_text(
        "import unittest\n\nimport calc\n\n\n"
        "class T(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n"
    )
    result = bottle_env.sh("cd proj && python3 -m unittest -v 2>&1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_add" in result.stdout and "OK" in result.stdout


def test_dev_server_on_loopback_is_reached_from_the_same_bottle(bottle_env: BottleEnv) -> None:
    (bottle_env.workspace / "index.html").write_text("dev server page\n")
    out = _ok(
        bottle_env.sh(
            "python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 & "
            "for i in $(seq 1 100); do "
            "  curl -sS --max-time 2 http://127.0.0.1:8765/index.html 2>/dev/null && break; "
            "  sleep 0.1; done"
        )
    )
    assert "dev server page" in out


# -- every TLS client trusts the bottle's CA ---------------------------------------------


class Client(NamedTuple):
    name: str
    needs: tuple[str, ...]  # executables (first: what is looked up on the machine)
    script: str
    expect: str


NODE_PROBE = """\
const http = require('http'), tls = require('tls');
const proxy = new URL(process.env.HTTPS_PROXY);
const req = http.request({host: proxy.hostname, port: proxy.port, method: 'CONNECT',
                          path: 'tls.test:443'});
req.on('connect', (res, socket) => {
  const t = tls.connect({socket, servername: 'tls.test'}, () =>
    t.write('GET /node HTTP/1.1\\r\\nHost: tls.test\\r\\nConnection: close\\r\\n\\r\\n'));
  let data = '';
  t.on('data', (chunk) => { data += chunk; });
  t.on('end', () => { console.log(data); process.exit(0); });
  t.on('error', (e) => { console.error(e.message); process.exit(2); });
});
req.end();
"""
JAVA_PROBE = """\
public class Probe {
  public static void main(String[] args) throws Exception {
    var url = new java.net.URL("https://tls.test/java");
    try (var in = url.openStream()) { System.out.print(new String(in.readAllBytes())); }
  }
}
"""
GO_PROBE = """\
package main

import ("fmt"; "io"; "net/http")

func main() {
\tr, err := http.Get("https://tls.test/go")
\tif err != nil { panic(err) }
\tb, _ := io.ReadAll(r.Body)
\tfmt.Print(string(b))
}
"""
CARGO_TOML = f"""\
[package]
name = "probe"
version = "0.1.0"
edition = "2021"

[dependencies]
{CRATE} = {{ version = "0.1", registry = "test" }}
"""

CLIENTS = (
    Client("curl", ("curl",), "curl -sS --fail https://tls.test/curl", "hello over tls"),
    Client("git", ("git",), "git ls-remote https://git.test/repo.git", "refs/heads/main"),
    Client(
        "python-ssl",
        ("python3",),
        'python3 -c "import urllib.request as u; '
        "print(u.urlopen('https://tls.test/py').read().decode())\"",
        "hello over tls",
    ),
    Client(
        "requests",
        ("python3",),
        "python3 -c \"import requests; print(requests.get('https://tls.test/rq').text)\"",
        "hello over tls",
    ),
    Client(
        "pip",
        ("python3",),
        "python3 -m pip download -q --disable-pip-version-check --no-deps -d /tmp/dl "
        f"--index-url https://pypi.test/simple/ {WHEEL_PROJECT} && ls /tmp/dl",
        ".whl",
    ),
    Client(
        "uv",
        ("uv",),
        "uv venv -q /tmp/uvv && uv pip install -q --python /tmp/uvv/bin/python "
        f"--index-url https://pypi.test/simple/ {WHEEL_PROJECT} && echo uv-installed",
        "uv-installed",
    ),
    Client("node", ("node",), "node probe.js", "200 OK"),
    Client(
        "npm",
        ("npm",),
        f"npm view --registry https://npm.test/ {NPM_PACKAGE} version",
        "1.0.0",
    ),
    Client("go", ("go",), "cd goprobe && go run main.go", "hello over tls"),
    Client(
        "gh",
        ("gh",),
        "GH_TOKEN=placeholder GH_HOST=tls.test gh api /gh",
        "hello over tls",
    ),
    Client(
        "cargo",
        ("cargo",),
        "cd cargoprobe && cargo generate-lockfile -q && grep -c 'name = \"cbtest\"' Cargo.lock",
        "1",
    ),
    Client(
        "ruby",
        ("ruby",),
        "ruby -rnet/http -e 'print Net::HTTP.get(URI(\"https://tls.test/rb\"))'",
        "hello over tls",
    ),
    Client(
        "gem",
        ("gem", "ruby"),
        "ruby -ropen-uri -e 'print URI.open(\"https://tls.test/gem\").read'",
        "hello over tls",
    ),
    Client(
        "aws",
        ("aws",),
        "aws s3api list-buckets --endpoint-url https://aws.test --no-sign-request "
        "--region us-east-1 --output json",
        '"Buckets"',
    ),
    Client(
        "deno",
        ("deno",),
        "deno eval \"console.log(await (await fetch('https://tls.test/deno')).text())\"",
        "hello over tls",
    ),
    Client("java", ("java", "javac"), "java Probe.java", "hello over tls"),
)


def _installed(client: Client, backend: str, path: str) -> str | None:
    """Why the client cannot be tried here, or None."""
    if backend == "docker":
        return None if client.name in IN_AGENT_IMAGE else "not in the agent image"
    missing = [exe for exe in client.needs if shutil.which(exe, path=path) is None]
    if missing:
        return f"{missing[0]} is not installed on this machine"
    if client.name == "requests":
        check = subprocess.run(
            ["python3", "-c", "import requests"],
            env={"PATH": path, "HOME": os.environ.get("HOME", "/")},
            capture_output=True,
            check=False,
        )
        if check.returncode != 0:
            return "python3 on this machine has no requests"
    return None


def _probe_files(workspace: Path) -> None:
    (workspace / "probe.js").write_text(NODE_PROBE)
    (workspace / "Probe.java").write_text(JAVA_PROBE)
    (workspace / "goprobe").mkdir()
    (workspace / "goprobe/main.go").write_text(GO_PROBE)
    (workspace / "goprobe/go.mod").write_text("module probe\n\ngo 1.19\n")
    cargo = workspace / "cargoprobe"
    (cargo / "src").mkdir(parents=True)
    (cargo / "src/lib.rs").write_text("")
    (cargo / "Cargo.toml").write_text(CARGO_TOML)
    (cargo / ".cargo").mkdir()
    (cargo / ".cargo/config.toml").write_text(
        '[registries.test]\nindex = "sparse+https://cargo.test/index/"\n'
    )


@pytest.mark.parametrize("client", CLIENTS, ids=[c.name for c in CLIENTS])
def test_tls_client_trusts_the_bottles_ca(
    bottle_env: BottleEnv, dev: DevUpstreams, client: Client
) -> None:
    reason = _installed(client, bottle_env.backend, bottle_env.env["PATH"])
    if reason:
        pytest.skip(f"{client.name}: {reason}")
    _probe_files(bottle_env.workspace)
    result = bottle_env.sh(client.script, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, f"{client.name}: {result.stdout}\n{result.stderr}"
    assert client.expect in result.stdout, f"{client.name}: {result.stdout}\n{result.stderr}"


# -- docker: the agent image on the user's own image ----------------------------------------


def test_docker_base_image_lacking_python_is_named_before_the_bottle_starts(
    bottle_env: BottleEnv,
) -> None:
    if bottle_env.backend != "docker":
        pytest.skip("[docker] base_image is the docker backend's")
    # Debian without python3 or Node: what the relay and Claude Code need is missing.
    bottle_env.write_config('[docker]\nbase_image = "debian:bookworm-slim"\n')
    result = bottle_env.run("true", timeout=RUN_TIMEOUT)
    assert result.returncode == 3, result.stderr
    assert "debian:bookworm-slim has no python3" in result.stderr
    assert "neither `claude` nor Node.js" in result.stderr


@pytest.mark.timeout(900)  # builds the default agent image first if it is missing
def test_docker_agent_image_on_a_base_runs_the_bases_toolchain(
    bottle_env: BottleEnv, tmp_path: Path
) -> None:
    if bottle_env.backend != "docker":
        pytest.skip("[docker] base_image is the docker backend's")
    from claude_bottle.backend.docker import images

    # A team image: the default agent image (Python, Node, claude) plus a tool on its PATH.
    images.ensure(images.agent_image())
    context = tmp_path / "team-image"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {images.agent_image().tag}\nUSER root\n"
        "RUN mkdir -p /opt/team/bin && printf '#!/bin/sh\\necho team-tool-ran\\n' "
        "> /opt/team/bin/team-tool && chmod 755 /opt/team/bin/team-tool\n"
        "ENV PATH=/opt/team/bin:/usr/local/bin:/usr/bin:/bin\n"
    )
    tag = "claude-bottle-test-team:real-work"
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(context)],
        check=True,
        capture_output=True,
        timeout=RUN_TIMEOUT,
    )
    try:
        bottle_env.write_config(f'[docker]\nbase_image = "{tag}"\n')
        out = _ok(bottle_env.run("team-tool", timeout=RUN_TIMEOUT * 2))
        assert "team-tool-ran" in out
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, check=False)
