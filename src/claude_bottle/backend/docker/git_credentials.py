"""The git gate's credentials for a bundle in a container ([docker] bundle = "container").

A host-process bundle resolves each remote's credential itself, per upstream operation
(`bundle/git_upstream.py`): the host's `git credential fill`, `env:`, `file:` and
`command:` all run where they were configured. A bundle container can do none of that
(no helper, no keychain, no files of the host's, no host environment), and none of it may
be copied into the container's image, volumes, argv or environment (`docker inspect`
shows the last two). So the CLI resolves each https remote's credential on the host at
start and hands it to the bundle over its control socket (a host directory only the
bundle container mounts), where it is kept in memory; the container's settings name the
source `handed`. A token that expires while the bottle runs needs a new bottle.

An ssh remote has no credential to hand: the bundle container's ssh signs with the host's
ssh-agent, bound in with the host's known_hosts lines (`git_ssh.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.git_upstream import HANDED, is_ssh
from claude_bottle.errors import LaunchError


def container_remotes(remotes: tuple[GateRemote, ...]) -> tuple[GateRemote, ...]:
    """The remotes as the bundle container's settings name them: credentials handed."""
    return tuple(remote._replace(credential=HANDED) for remote in remotes)


def hand_credentials(
    remotes: tuple[GateRemote, ...], control_socket: Path, host_env: Mapping[str, str]
) -> None:
    """Resolve each https remote's credential on the host and hand it to the bundle.

    Raises LaunchError naming the remote (never the value) when one cannot be read or the
    bundle does not take it: a bottle whose gate could not reach its upstream would fail
    every clone later, with less to say.
    """
    from claude_bottle.bundle import control
    from claude_bottle.bundle.git_upstream import resolve_credential
    from claude_bottle.bundle.refusal import Refusal

    for remote in remotes:
        if is_ssh(remote.url):
            continue  # the host's ssh-agent signs for it (`git_ssh.py`)
        try:
            credential = resolve_credential(remote, host_env)
        except Refusal as refusal:
            raise LaunchError(refusal.message, refusal.hint) from None
        assert credential is not None  # https: a credential or a Refusal
        answer = control.call(
            control_socket,
            "git-credential",
            remote=remote.name,
            username=credential.username,
            password=credential.password,
        )
        if not answer.get("ok"):
            raise LaunchError(
                f"the bundle did not take remote {remote.name}'s credential: "
                f"{str(answer.get('error', ''))[:200]}"
            )
