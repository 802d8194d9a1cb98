from __future__ import annotations

import os
from pathlib import Path

import pytest

from claude_bottle.backend.namespace.toolchain import (
    Bind,
    Unreachable,
    exposes_secret,
    masked_roots,
    resolve_binds,
    unreachable,
)


def _exe(path: Path, content: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(0o755)
    return path


def _paths(binds: tuple[Bind, ...]) -> list[Path]:
    return [Path(b.path) for b in binds]


def test_nvm_node_binds_its_version_prefix(tmp_path: Path) -> None:
    home = tmp_path / "home"
    node = _exe(home / ".nvm/versions/node/v20.1.0/bin/node")
    claude_js = _exe(
        home / ".nvm/versions/node/v20.1.0/lib/node_modules/@anthropic-ai/claude-code/cli.js",
        "#!/usr/bin/env node\n",
    )
    link = home / ".nvm/versions/node/v20.1.0/bin/claude"
    link.symlink_to(claude_js)
    binds = resolve_binds(["claude"], home=home, path_env=str(node.parent))
    assert _paths(binds) == [home / ".nvm/versions/node/v20.1.0"]


def test_native_claude_in_local_bin_binds_files_not_dot_local(tmp_path: Path) -> None:
    home = tmp_path / "home"
    real = _exe(home / ".local/share/claude/versions/2.0.1", "\x7fELF")
    link = home / ".local/bin/claude"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    _exe(home / ".local/share/keyrings/login.keyring")
    binds = _paths(resolve_binds(["claude"], home=home, path_env=str(link.parent)))
    assert home / ".local" not in binds
    assert link.parent in binds  # the PATH entry itself
    assert (home / ".local/share/claude/versions") in binds
    for bind in binds:
        assert exposes_secret(bind, home) is None


def test_system_binaries_need_no_binds(tmp_path: Path) -> None:
    assert resolve_binds(["sh"], home=tmp_path / "home", path_env="/usr/bin:/bin") == ()


def test_python_prefix_under_home_is_bound(tmp_path: Path) -> None:
    home = tmp_path / "home"
    prefix = home / ".pyenv/versions/3.11.7"
    prefix.mkdir(parents=True)
    binds = resolve_binds([], home=home, path_env="", python_prefix=prefix)
    assert _paths(binds) == [prefix]


def test_secret_dirs_are_never_bound(tmp_path: Path) -> None:
    home = tmp_path / "home"
    exe = _exe(home / ".aws/bin/tool")
    binds = resolve_binds([str(exe)], home=home, path_env=str(exe.parent))
    assert binds == ()
    assert exposes_secret(home, home) is not None  # $HOME itself contains .ssh
    assert exposes_secret(home / ".ssh", home) is not None
    assert exposes_secret(home / "src", home) is None


def test_masked_roots_include_an_unusual_home(tmp_path: Path) -> None:
    assert tmp_path in masked_roots(tmp_path)
    assert masked_roots(Path("/home/alice"))[:2] == (Path("/home"), Path("/root"))
    assert Path("/home/alice") not in masked_roots(Path("/home/alice"))  # inside /home already


def test_missing_executable_binds_nothing(tmp_path: Path) -> None:
    assert resolve_binds(["definitely-not-a-program"], home=tmp_path, path_env=os.defpath) == ()


def _pyenv(
    home: Path, versions: tuple[str, ...] = ("3.11.7", "3.12.1"), glob: str = "3.11.7"
) -> Path:
    """The layout pyenv's installer makes: shims on PATH, libexec/pyenv, versions, version."""
    root = home / ".pyenv"
    _exe(root / "libexec/pyenv", "#!/usr/bin/env bash\n")
    _exe(root / "shims/python3", f'#!/usr/bin/env bash\nexec "{root}/libexec/pyenv" exec python3\n')
    (root / "pyenv.d/exec").mkdir(parents=True)
    for version in versions:
        _exe(root / "versions" / version / "bin/python3", "\x7fELF")
    (root / "version").write_text(f"{glob}\n")
    return root


def test_pyenv_binds_what_pyenv_exec_reads_and_only_the_selected_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    root = _pyenv(home)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    binds = _paths(
        resolve_binds(
            ["python3"], home=home, path_env=f"{root}/shims:/usr/bin", workspace=workspace
        )
    )
    for part in ("shims", "libexec", "pyenv.d", "version", "versions/3.11.7"):
        assert root / part in binds, part
    assert root / "versions/3.12.1" not in binds
    assert root not in binds and root / "versions" not in binds


def test_pyenv_selection_follows_python_version_files_and_pyenv_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    root = _pyenv(home, versions=("3.11.7", "3.12.1", "3.13.0"))
    project = home / "src/project"
    workspace = project / "sub"
    workspace.mkdir(parents=True)
    (project / ".python-version").write_text("3.12  # the project's\n")
    path_env = f"{root}/shims"
    binds = _paths(resolve_binds([], home=home, path_env=path_env, workspace=workspace))
    # The file above the workspace is hidden inside unless bound: bind it, and its version.
    assert project / ".python-version" in binds
    assert root / "versions/3.12.1" in binds and root / "versions/3.11.7" not in binds
    environ = {"PYENV_VERSION": "3.13.0"}
    binds = _paths(
        resolve_binds([], home=home, path_env=path_env, workspace=workspace, environ=environ)
    )
    assert root / "versions/3.13.0" in binds and root / "versions/3.12.1" not in binds


def test_cargo_bin_is_bound_without_the_registry_or_credentials(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _exe(home / ".cargo/bin/cargo", "\x7fELF")
    _exe(home / ".cargo/bin/rustup", "\x7fELF")
    (home / ".cargo/registry").mkdir()
    (home / ".cargo/credentials.toml").write_text("[registry]\ntoken = 'x'\n")
    (home / ".rustup/toolchains/stable/bin").mkdir(parents=True)
    (home / ".rustup/downloads").mkdir()
    (home / ".rustup/settings.toml").write_text('default_toolchain = "stable"\n')
    binds = _paths(resolve_binds(["cargo"], home=home, path_env=str(home / ".cargo/bin")))
    assert home / ".cargo/bin" in binds
    assert home / ".rustup/toolchains" in binds and home / ".rustup/settings.toml" in binds
    assert not any(b in (home / ".cargo", home / ".rustup") for b in binds)
    assert all(exposes_secret(b, home) is None for b in binds)


def test_go_bin_is_bound_but_not_the_module_cache(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _exe(home / "go/bin/gopls", "\x7fELF")
    (home / "go/pkg/mod").mkdir(parents=True)
    binds = _paths(resolve_binds([], home=home, path_env=str(home / "go/bin")))
    assert binds == [home / "go/bin"]


def test_fnm_multishell_entry_binds_the_node_it_points_to(tmp_path: Path) -> None:
    home = tmp_path / "home"
    install = home / ".local/share/fnm/node-versions/v20.1.0/installation"
    _exe(install / "bin/node", "\x7fELF")
    (install / "lib/node_modules").mkdir(parents=True)
    multishell = home / ".local/state/fnm_multishells/123_456"
    multishell.parent.mkdir(parents=True)
    multishell.symlink_to(install)
    binds = _paths(resolve_binds([], home=home, path_env=str(multishell / "bin")))
    assert install in binds  # the real prefix (node's lib)
    assert multishell in binds or multishell / "bin" in binds  # the PATH entry as written


def test_uv_tool_binds_its_venv_and_the_base_python(tmp_path: Path) -> None:
    home = tmp_path / "home"
    python = home / ".local/share/uv/python/cpython-3.12.4-linux-x86_64-gnu"
    _exe(python / "bin/python3.12", "\x7fELF")
    tool = home / ".local/share/uv/tools/ruff"
    _exe(tool / "bin/ruff", f"#!{tool}/bin/python\n")
    (tool / "pyvenv.cfg").write_text(f"home = {python}/bin\nversion = 3.12.4\n")
    link = home / ".local/bin/ruff"
    link.parent.mkdir(parents=True)
    link.symlink_to(tool / "bin/ruff")
    binds = _paths(resolve_binds([], home=home, path_env=str(link.parent)))
    assert tool in binds and python in binds and link.parent in binds


def test_unreachable_names_the_hidden_file_and_the_secret(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tool = _exe(home / "tools/run", f"#!{home}/.aws/venv/bin/python\n")
    _exe(home / ".aws/venv/bin/python", "\x7fELF")
    found = unreachable(str(tool), home=home, path_env="", visible=[str(tool)])
    assert found == Unreachable(str(home / ".aws/venv/bin/python"), str(home / ".aws"))
    visible = [b.path for b in resolve_binds([str(tool)], home=home, path_env="")]
    assert unreachable(str(tool), home=home, path_env="", visible=visible) is not None
    plain = _exe(home / "tools/plain")
    assert unreachable(str(plain), home=home, path_env="", visible=[]) == Unreachable(
        str(plain), None, is_command=True
    )
    assert unreachable(str(plain), home=home, path_env="", visible=[str(home / "tools")]) is None


def test_unreachable_sees_a_pyenv_shims_pyenv(tmp_path: Path) -> None:
    home = tmp_path / "home"
    root = _pyenv(home)
    shims = str(root / "shims")
    found = unreachable("python3", home=home, path_env=shims, visible=[shims])
    assert found == Unreachable(str(root / "libexec/pyenv"), None)


def test_host_sockets_lists_only_visible_bound_sockets(tmp_path: Path) -> None:
    import socket

    from claude_bottle.backend.namespace.toolchain import host_sockets

    visible = tmp_path / "visible.sock"
    masked_dir = tmp_path / "masked"
    masked_dir.mkdir()
    hidden = masked_dir / "hidden.sock"
    socks = []
    for path in (visible, hidden):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        socks.append(sock)
    table = tmp_path / "unix"
    table.write_text(
        "Num RefCount Protocol Flags Type St Inode Path\n"
        f"0000: 00000002 00000000 00010000 0001 01 1 {visible}\n"
        f"0000: 00000002 00000000 00010000 0001 01 2 {hidden}\n"
        "0000: 00000002 00000000 00010000 0001 01 3 @abstract\n"
        "0000: 00000002 00000000 00010000 0001 01 4\n"
        f"0000: 00000002 00000000 00010000 0001 01 5 {tmp_path}/gone.sock\n"
    )
    try:
        # tmp_path lives under /tmp, which bwrap replaces; pretend it does not for this test.
        import claude_bottle.backend.namespace.toolchain as toolchain

        fresh = toolchain._FRESH_MOUNTS
        toolchain._FRESH_MOUNTS = ()
        try:
            assert host_sockets([masked_dir], table) == (str(visible),)
        finally:
            toolchain._FRESH_MOUNTS = fresh
    finally:
        for sock in socks:
            sock.close()


def test_plan_refuses_a_command_the_bottle_cannot_run_with_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from claude_bottle.backend.base import LaunchRequest
    from claude_bottle.backend.namespace.backend import NamespaceBackend
    from claude_bottle.config.model import Config
    from claude_bottle.errors import MissingDependency

    home = tmp_path / "home"
    _exe(home / ".aws/venv/bin/python", "\x7fELF")
    _exe(home / "bin/aws-tool", f"#!{home}/.aws/venv/bin/python\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{home}/bin:/usr/bin:/bin")
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLAUDE_BOTTLE_RUNTIME_DIR", str(tmp_path / "rt"))
    (tmp_path / "ws").mkdir()
    request = LaunchRequest("t", tmp_path / "ws", Config(), ("aws-tool",))
    with pytest.raises(MissingDependency) as caught:
        NamespaceBackend().plan(request)
    assert caught.value.exit_code == 3
    assert f"{home}/.aws/venv/bin/python" in caught.value.message
    assert f"inside {home}/.aws" in caught.value.message


def test_a_path_entry_that_links_to_a_secret_is_not_bound(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/id_ed25519").write_text("KEY")
    (home / "bin").symlink_to(home / ".ssh")  # bwrap would bind what the link points to
    assert resolve_binds([], home=home, path_env=str(home / "bin")) == ()


def test_nothing_the_agent_wrote_in_the_workspace_is_followed(tmp_path: Path) -> None:
    """Attack: symlinks and shebangs planted in the workspace (a venv on PATH, a script run
    as the command) naming private files of the home that no credential rule lists."""
    home = tmp_path / "home"
    private = home / "notes/private"
    _exe(private / "bin/python", "\x7fELF")
    (private / "diary.txt").write_text("PRIVATE")
    workspace = home / "proj"
    venv_bin = workspace / ".venv/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "tool").symlink_to(private / "diary.txt")
    (workspace / ".venv/pyvenv.cfg").write_text(f"home = {private}/bin\n")
    script = _exe(workspace / "run.sh", f"#!{private}/bin/python\n")
    binds = resolve_binds([str(script)], home=home, path_env=str(venv_bin), workspace=workspace)
    assert binds == ()
    found = unreachable(
        str(script), home=home, path_env="", visible=[str(workspace)], workspace=workspace
    )
    assert found is None  # the agent's shebang is not followed for a hint either


def test_a_workspace_venv_gets_its_base_interpreter_only_from_a_version_managers_store(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    uv_python = home / ".local/share/uv/python/cpython-3.12.4-linux-x86_64-gnu"
    _exe(uv_python / "bin/python3.12", "\x7fELF")
    workspace = home / "proj"
    (workspace / ".venv").mkdir(parents=True)
    (workspace / ".venv/pyvenv.cfg").write_text(f"home = {uv_python}/bin\n")
    binds = _paths(resolve_binds([], home=home, path_env="", workspace=workspace))
    assert binds == [uv_python]
    # The agent rewrites pyvenv.cfg to name something else of the home: nothing is bound.
    _exe(home / "notes/bin/python", "\x7fELF")
    (workspace / ".venv/pyvenv.cfg").write_text(f"home = {home}/notes/bin\n")
    assert resolve_binds([], home=home, path_env="", workspace=workspace) == ()
    (workspace / ".venv/pyvenv.cfg").write_text(f"home = {home}/.local/share/uv/python/bin\n")
    assert resolve_binds([], home=home, path_env="", workspace=workspace) == ()  # the store


def test_a_fifo_planted_as_a_version_file_does_not_hang_the_plan(tmp_path: Path) -> None:
    home = tmp_path / "home"
    root = _pyenv(home)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    os.mkfifo(workspace / ".python-version")
    (workspace / ".venv").mkdir()
    os.mkfifo(workspace / ".venv/pyvenv.cfg")
    from claude_bottle.backend.namespace import version_managers

    assert version_managers.read_head(workspace / ".python-version", 10) is None
    binds = _paths(resolve_binds([], home=home, path_env=f"{root}/shims", workspace=workspace))
    assert root / "libexec" in binds
