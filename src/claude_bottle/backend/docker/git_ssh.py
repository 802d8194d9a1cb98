"""ssh remotes of the git gate served by a bundle container ([docker] bundle = "container").

The host's ssh is what a host-process bundle uses; a container has none of it. So the CLI
hands the bundle container, and only it (never the agent container), what its OpenSSH
client needs, with no private key copied anywhere:

- the host's ssh-agent socket (SSH_AUTH_SOCK of the CLI's environment), bound in: the
  keys stay in the agent, which signs for the container while the bottle runs;
- the host's known_hosts lines for each remote's host (`ssh-keygen -F`, hashed entries
  included), in a generated read-only file, with StrictHostKeyChecking=yes;
- a passwd and group entry for the uid the container runs as (OpenSSH refuses to run
  without one), generated and bound read-only, its home the container's private /tmp;
- GIT_SSH_COMMAND from the CLI's environment, carried over where it is only options;
  options that name a host file (-i, -F, IdentityFile, UserKnownHostsFile) are dropped
  (the key comes from the agent, the known hosts from the lookup above), and one that
  would run a command (ProxyCommand, ProxyJump, LocalCommand…) is refused.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from claude_bottle.backend.docker.bottle_plan import Mount
from claude_bottle.bundle.git_upstream import is_ssh, upstream_host
from claude_bottle.config.model import GitRemote
from claude_bottle.errors import ConfigError, MissingDependency

AGENT_SOCKET = "/run/claude-bottle/ssh-agent.sock"
KNOWN_HOSTS = "/run/claude-bottle/known_hosts"
SSH_HOME = "/tmp"  # the bundle container's own tmpfs
LOOKUP_TIMEOUT = 10
MAX_KNOWN_HOSTS = 256 * 1024  # bytes of matching lines kept per remote host
HOST_CHOICE = 'use [docker] bundle = "host" (or --docker-bundle host)'

_FLAGS = frozenset({"-4", "-6", "-C", "-q", "-v", "-vv", "-vvv"})
_WITH_ARGUMENT = frozenset({"-p", "-l", "-c", "-m", "-o"})
_HOST_FILE_FLAGS = frozenset({"-i", "-F"})
# Set by the container's own command, or naming a host file it does not have.
_REPLACED_OPTIONS = frozenset(
    {
        "identityfile",
        "identitiesonly",
        "identityagent",
        "certificatefile",
        "userknownhostsfile",
        "globalknownhostsfile",
        "stricthostkeychecking",
        "batchmode",
        "updatehostkeys",
        "controlpath",
        "controlmaster",
        "controlpersist",
    }
)
_COMMAND_OPTIONS = frozenset(
    {
        "proxycommand",
        "proxyjump",
        "localcommand",
        "permitlocalcommand",
        "knownhostscommand",
        "pkcs11provider",
        "securitykeyprovider",
        "include",
        "match",
    }
)


class SshAccess(NamedTuple):
    """What the bundle container gets for its ssh remotes."""

    mounts: tuple[Mount, ...]
    env: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]  # (host path, text) the CLI writes at start


class SshCommand(NamedTuple):
    options: tuple[str, ...]  # carried into the container's ssh command
    known_hosts_files: tuple[str, ...]  # the host files the user named, if any


def ssh_access(
    remotes: Iterable[GitRemote],
    host_env: Mapping[str, str],
    directory: Path,
    uid: int,
    gid: int,
) -> SshAccess | None:
    """The bundle container's ssh for `remotes`, or None when none is an ssh remote.

    Raises MissingDependency when the CLI has no ssh-agent, ConfigError when a host has
    no known_hosts entry or GIT_SSH_COMMAND is more than ssh options."""
    ssh_remotes = [remote for remote in remotes if is_ssh(remote.url)]
    if not ssh_remotes:
        return None
    first = ssh_remotes[0].name
    agent = host_env.get("SSH_AUTH_SOCK", "")
    if not agent or not _is_socket(agent):
        raise MissingDependency(
            f"[git.remotes.{first}] is an ssh remote, served in the bundle container through "
            "the host's ssh-agent, and "
            + ("SSH_AUTH_SOCK is not set" if not agent else "SSH_AUTH_SOCK is not a socket"),
            'start one and add the key (eval "$(ssh-agent)"; ssh-add), or ' + HOST_CHOICE,
        )
    command = parse_ssh_command(host_env)
    sources = command.known_hosts_files or _default_known_hosts(host_env)
    lines: list[str] = []
    for remote in ssh_remotes:
        host, port = upstream_host(remote.url)
        name = host if port == 22 else f"[{host}]:{port}"
        found = known_host_lines(name, sources)
        if not found:
            raise ConfigError(
                f"[git.remotes.{remote.name}] url: no known_hosts entry for {name} in "
                + ", ".join(sources),
                f"connect once on the host (ssh -p {port} {host}) and check its key, or "
                + HOST_CHOICE,
            )
        lines += [line for line in found if line not in lines]
    ssh = shlex.join(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            f"UserKnownHostsFile={KNOWN_HOSTS}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "BatchMode=yes",
            *command.options,
        ]
    )
    files = (
        (str(directory / "passwd"), passwd(uid, gid)),
        (str(directory / "group"), group(gid)),
        (str(directory / "known_hosts"), "".join(line + "\n" for line in lines)),
    )
    mounts = (
        Mount("bind", files[0][0], "/etc/passwd", readonly=True),
        Mount("bind", files[1][0], "/etc/group", readonly=True),
        Mount("bind", files[2][0], KNOWN_HOSTS, readonly=True),
        Mount("bind", agent, AGENT_SOCKET),
    )
    env = (("SSH_AUTH_SOCK", AGENT_SOCKET), ("GIT_SSH_COMMAND", ssh))
    return SshAccess(mounts, env, files)


def passwd(uid: int, gid: int) -> str:
    """One entry for the container's uid (and root's, which some tools look up)."""
    entries = [f"root:x:0:0:root:{SSH_HOME if uid == 0 else '/root'}:/usr/sbin/nologin"]
    if uid != 0:
        entries.append(f"bundle:x:{uid}:{gid}:claude-bottle bundle:{SSH_HOME}:/usr/sbin/nologin")
    return "".join(entry + "\n" for entry in entries)


def group(gid: int) -> str:
    entries = ["root:x:0:"] + ([f"bundle:x:{gid}:"] if gid != 0 else [])
    return "".join(entry + "\n" for entry in entries)


def parse_ssh_command(host_env: Mapping[str, str]) -> SshCommand:
    """The options of the user's GIT_SSH_COMMAND the container's ssh can honour."""
    if host_env.get("GIT_SSH"):
        raise ConfigError(
            "GIT_SSH (a program) cannot be run in the bundle container",
            "unset it, use GIT_SSH_COMMAND with ssh options, or " + HOST_CHOICE,
        )
    try:
        words = shlex.split(host_env.get("GIT_SSH_COMMAND", "")) or ["ssh"]
    except ValueError as exc:
        raise ConfigError(f"GIT_SSH_COMMAND cannot be read: {exc}", "fix its quoting") from None
    if os.path.basename(words[0]) != "ssh":
        raise ConfigError(
            f"GIT_SSH_COMMAND runs {words[0]!r}, not ssh: the bundle container has only ssh",
            "make it ssh with options, or " + HOST_CHOICE,
        )
    options: list[str] = []
    known_hosts: list[str] = []
    rest = iter(words[1:])
    for word in rest:
        flag, attached = word[:2], word[2:]
        if word in _FLAGS:
            options.append(word)
            continue
        if flag not in _WITH_ARGUMENT | _HOST_FILE_FLAGS:
            raise ConfigError(
                f"GIT_SSH_COMMAND option {word!r} is not carried into the bundle container",
                "keep it to ssh options (-o, -p, -l, -c, -m, -i), or " + HOST_CHOICE,
            )
        value = attached or next(rest, "")
        if flag in _HOST_FILE_FLAGS:
            continue  # the key is the agent's; the config none (the module's note)
        if flag != "-o":
            options += [flag, value]
            continue
        key, _, setting = value.replace("=", " ", 1).partition(" ")
        if key.lower() in _COMMAND_OPTIONS:
            raise ConfigError(
                f"GIT_SSH_COMMAND option {key} would run a command in the bundle container",
                "drop it, or " + HOST_CHOICE,
            )
        if key.lower() == "userknownhostsfile":
            known_hosts += [os.path.expanduser(path) for path in setting.split()]
        if key.lower() not in _REPLACED_OPTIONS:
            options += ["-o", value]
    return SshCommand(tuple(options), tuple(known_hosts))


def known_host_lines(name: str, sources: Iterable[str]) -> list[str]:
    """The known_hosts lines for `name` (`host` or `[host]:port`) in the given files."""
    lines: list[str] = []
    for source in sources:
        if not Path(source).is_file():
            continue
        try:
            found = subprocess.run(
                ["ssh-keygen", "-F", name, "-f", source],
                capture_output=True,
                text=True,
                timeout=LOOKUP_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            raise MissingDependency(
                "ssh-keygen not found: it reads the host's known_hosts for the bundle container",
                "install OpenSSH's client (apt-get install openssh-client)",
            ) from None
        except subprocess.TimeoutExpired:
            continue
        kept = [
            line
            for line in found.stdout[:MAX_KNOWN_HOSTS].splitlines()
            if line.strip() and not line.startswith("#")
        ]
        lines += kept
    return lines


def _default_known_hosts(host_env: Mapping[str, str]) -> tuple[str, ...]:
    home = host_env.get("HOME") or os.path.expanduser("~")
    return (
        f"{home}/.ssh/known_hosts",
        f"{home}/.ssh/known_hosts2",
        "/etc/ssh/ssh_known_hosts",
    )


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
