from __future__ import annotations

import os
from pathlib import Path

from claude_bottle.backend.namespace.toolchain import exposes_secret, masked_roots, resolve_binds


def _exe(path: Path, content: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(0o755)
    return path


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
    assert binds == (home / ".nvm/versions/node/v20.1.0",)


def test_native_claude_in_local_bin_binds_files_not_dot_local(tmp_path: Path) -> None:
    home = tmp_path / "home"
    real = _exe(home / ".local/share/claude/versions/2.0.1", "\x7fELF")
    link = home / ".local/bin/claude"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    binds = resolve_binds(["claude"], home=home, path_env=str(link.parent))
    assert home / ".local" not in binds
    assert link in binds
    assert (home / ".local/share/claude/versions") in binds or real in binds
    for bind in binds:
        assert exposes_secret(bind, home) is None


def test_system_binaries_need_no_binds(tmp_path: Path) -> None:
    assert resolve_binds(["sh"], home=tmp_path / "home", path_env="/usr/bin:/bin") == ()


def test_python_prefix_under_home_is_bound(tmp_path: Path) -> None:
    home = tmp_path / "home"
    prefix = home / ".pyenv/versions/3.11.7"
    prefix.mkdir(parents=True)
    binds = resolve_binds([], home=home, path_env="", python_prefix=prefix)
    assert binds == (prefix,)


def test_secret_dirs_are_never_bound(tmp_path: Path) -> None:
    home = tmp_path / "home"
    exe = _exe(home / ".aws/bin/tool")
    binds = resolve_binds([str(exe)], home=home, path_env="")
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
