"""The git gate's host side: hardened git, the remote's credential, and the mirror.

Every git the gate runs (fetching into the mirror, `http-backend`, the push hook's own
`git push`) gets `hardened_env`: no system or global config (`GIT_CONFIG_NOSYSTEM`,
`GIT_CONFIG_GLOBAL=/dev/null`), no hooks except the gate's own pre-receive, only the
https and ssh protocols, and `fsckObjects` on every transfer. Nothing the bottle sends
can configure it: the mirror's config is written by the gate, and the bottle's requests
reach git only as protocol bytes.

The credential is resolved here, on the host, per upstream operation, and handed to git
through the environment of host processes (a credential helper that echoes two
variables): never in argv, never in a file, never in the bottle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from claude_bottle.bundle.git_policy import GateRemote
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.settings import Pin

CREDENTIAL_TIMEOUT = 15.0
MAX_PACK = 1 << 30  # bytes of one pushed pack
FETCH_TIMEOUT = 600.0
MAX_CREDENTIAL = 16 * 1024
USERNAME_VAR = "CLAUDE_BOTTLE_GIT_USERNAME"
PASSWORD_VAR = "CLAUDE_BOTTLE_GIT_PASSWORD"
USER_SSH_VARS = frozenset({"GIT_SSH_COMMAND", "GIT_SSH", "GIT_SSH_VARIANT"})
TOKEN_USERNAME = "x-access-token"  # what GitHub and others accept with a bare token
SYSTEM_CA_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
# A bundle in a container cannot run the host's credential helper, command or read its
# files: the CLI resolves the credential on the host at start and hands it over the control
# socket (`hand_credential`); the container's settings name this source instead.
HANDED = "handed"
_handed: dict[str, Credential] = {}
_HELPER = (
    '!f() { test "$1" = get && '
    f'printf \'username=%s\\npassword=%s\\n\' "${USERNAME_VAR}" "${PASSWORD_VAR}"; }}; f'
)


class Credential(NamedTuple):
    username: str
    password: str

    def __repr__(self) -> str:  # never the value, even in a traceback
        return "Credential(<hidden>)"


def is_ssh(url: str) -> bool:
    return url.startswith("ssh://") or "://" not in url


def upstream_host(url: str) -> tuple[str, int]:
    if is_ssh(url) and "://" not in url:
        return url.split(":", 1)[0].rpartition("@")[2], 22
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (22 if parts.scheme == "ssh" else 443)


def ssh_endpoints(remotes: Sequence[GateRemote]) -> list[tuple[str, int]]:
    """(host, port) of each ssh remote: the egress proxy keeps git over ssh to them out."""
    return [upstream_host(remote.url) for remote in remotes if is_ssh(remote.url)]


class SshTarget(NamedTuple):
    """An ssh URL's parts, as git splits it: `user@host`, the port it names (None: ssh's
    default, no option given) and the repository path."""

    destination: str
    port: int | None
    path: str


def ssh_target(url: str) -> SshTarget:
    """`git@host:path` or `ssh://user@host:port/path`, split the way git splits it."""
    if "://" not in url:
        destination, _, path = url.partition(":")
        return SshTarget(destination, None, path)
    parts = urlsplit(url)
    destination = parts.netloc.rpartition(":")[0] if parts.port else parts.netloc
    return SshTarget(destination, parts.port, parts.path)


def ssh_argv(env: Mapping[str, str], target: SshTarget, command: str) -> list[str]:
    """The ssh git itself runs for `target`, here running `command` on the remote side.

    git's own rules, so the gate's LFS authentication uses exactly the ssh of the remote's
    git traffic: `GIT_SSH_COMMAND` (through the shell, as git runs it), else `GIT_SSH`,
    else `ssh`; the port option spelled for its variant (`GIT_SSH_VARIANT`, else the
    program's name). `env` is `hardened_env`'s: the user's ssh variables, agent and home.
    """
    if target.destination.startswith("-") or not target.destination:
        raise ValueError("an ssh host may not start with '-'")  # git refuses it too
    shell = env.get("GIT_SSH_COMMAND", "")
    if shell:
        words = shlex.split(shell)
        program = words[0] if words else "ssh"
        prefix = ["sh", "-c", shell + ' "$@"', shell]
    else:
        program = env.get("GIT_SSH", "") or "ssh"
        prefix = [program]
    variant = env.get("GIT_SSH_VARIANT", "") or Path(program).name.lower().removesuffix(".exe")
    options: list[str] = []
    if target.port is not None:
        if variant in ("plink", "putty"):
            options = ["-P", str(target.port)]
        elif variant == "tortoiseplink":
            options = ["-batch", "-P", str(target.port)]
        elif variant == "simple":
            raise ValueError("GIT_SSH_VARIANT=simple cannot take a port")
        else:
            options = ["-p", str(target.port)]
    return [*prefix, *options, target.destination, command]


class GitEnv(NamedTuple):
    """Settings every hardened git of one bundle shares."""

    pins: tuple[Pin, ...] = ()
    ca_file: str | None = None  # system trust store + [egress] upstream_ca_file


def hardened_env(
    base: Mapping[str, str],
    remote: GateRemote,
    git_env: GitEnv,
    *,
    hooks: str = "/dev/null",
    credential: Credential | None = None,
) -> dict[str, str]:
    """The environment of a git the gate runs for `remote`."""
    # The bundle's environment is the user's (never the bottle's): how they reach ssh hosts
    # stays; any other GIT_* variable (GIT_DIR, GIT_CONFIG_PARAMETERS…) would steer git.
    env = {
        k: v
        for k, v in base.items()
        if (not k.startswith("GIT_") or k in USER_SSH_VARS) and k != "SSH_ASKPASS"
    }
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="/bin/false",
    )
    config: list[tuple[str, str]] = [
        ("core.hooksPath", hooks),
        ("protocol.allow", "never"),
        ("protocol.https.allow", "always"),
        ("protocol.ssh.allow", "always"),
        ("transfer.fsckObjects", "true"),
        ("receive.fsckObjects", "true"),
        ("fetch.fsckObjects", "true"),
        ("uploadpack.allowFilter", "true"),
        ("http.receivepack", "true"),
        ("receive.denyDeletes", "false"),
        ("receive.denyNonFastForwards", "false"),
        ("receive.maxInputSize", str(MAX_PACK)),
        ("credential.helper", ""),
    ]
    if credential is not None:
        config.append(("credential.helper", _HELPER))
        env[USERNAME_VAR], env[PASSWORD_VAR] = credential
    if git_env.ca_file:
        config.append(("http.sslCAInfo", git_env.ca_file))
    host, port = upstream_host(remote.url)
    for pin in git_env.pins:
        if pin.host == host and not is_ssh(remote.url):
            # `[egress.resolve]`: the host's name (TLS, Host) at the pinned address and port
            connect_port = pin.port or port
            config.append(("http.curloptResolve", f"{host}:{connect_port}:{pin.address}"))
            if connect_port != port:
                spelled = urlsplit(remote.url).netloc
                config.append(
                    (f"url.https://{host}:{connect_port}/.insteadOf", f"https://{spelled}/")
                )
    return with_config(env, config)


def with_config(env: dict[str, str], config: Sequence[tuple[str, str]]) -> dict[str, str]:
    """`env` with `config` appended to its GIT_CONFIG_COUNT entries (later ones win)."""
    count = int(env.get("GIT_CONFIG_COUNT", "0"))
    for key, value in config:
        env[f"GIT_CONFIG_KEY_{count}"] = key
        env[f"GIT_CONFIG_VALUE_{count}"] = value
        count += 1
    env["GIT_CONFIG_COUNT"] = str(count)
    return env


def combined_ca(upstream_ca_file: str | None, directory: Path) -> str | None:
    """A CA file for the gate's git: the system's trust store plus the extra CA, or None
    when there is no extra CA (git then uses its own default)."""
    if not upstream_ca_file:
        return None
    parts = []
    for system in SYSTEM_CA_FILES:
        if os.path.exists(system):
            parts.append(Path(system).read_bytes())
            break
    parts.append(Path(upstream_ca_file).read_bytes())
    target = directory / "upstream-ca.pem"
    target.write_bytes(b"\n".join(parts))
    return str(target)


def resolve_credential(remote: GateRemote, env: Mapping[str, str]) -> Credential | None:
    """The host-side credential of an https remote (None for ssh: the host's ssh decides).

    Raises `Refusal` (502) naming the remote and the source when it cannot be read; the
    message never carries the value.
    """
    if is_ssh(remote.url):
        return None
    source = remote.credential
    where = f"[git.remotes.{remote.name}] credential"
    if source == HANDED:
        handed = _handed.get(remote.name)
        if handed is None:
            raise _unavailable(remote, where, "not handed over by the CLI at start")
        return handed
    if source == "git":
        return _git_credential_fill(remote, env, where)
    kind, _, rest = source.partition(":")
    value: str | None = None
    try:
        if kind == "env":
            value = env.get(rest)
        elif kind == "file":
            value = Path(rest).expanduser().read_text()[:MAX_CREDENTIAL]
        elif kind == "command":
            value = _run(shlex.split(rest), env, None).stdout.decode()[:MAX_CREDENTIAL]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise _unavailable(remote, where, type(exc).__name__) from None
    value = (value or "").strip()
    if not value:
        raise _unavailable(remote, where, "empty or missing")
    return Credential(TOKEN_USERNAME, value.splitlines()[0])


def hand_credential(remote: GateRemote, username: str, password: str) -> None:
    """Keep the credential the CLI resolved on the host for `remote` (in memory only)."""
    if remote.credential != HANDED or is_ssh(remote.url):
        raise ValueError(f"remote {remote.name} does not take a handed credential")
    if not username or not password or len(username) + len(password) > MAX_CREDENTIAL:
        raise ValueError(f"remote {remote.name}: not a credential")
    if remote.name in _handed:  # taken once: nobody swaps in a credential of their own
        raise ValueError(f"remote {remote.name}: its credential was handed already")
    _handed[remote.name] = Credential(username, password)


def _git_credential_fill(remote: GateRemote, env: Mapping[str, str], where: str) -> Credential:
    parts = urlsplit(remote.url)
    query = f"protocol={parts.scheme}\nhost={parts.netloc}\npath={parts.path.lstrip('/')}\n\n"
    try:
        found = _run(
            ["git", "credential", "fill"],
            {**env, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false"},
            query.encode(),
        )
    except (OSError, subprocess.SubprocessError):
        raise _unavailable(remote, where, "git credential fill failed") from None
    fields = dict(
        line.partition("=")[::2] for line in found.stdout.decode(errors="replace").splitlines()
    )
    if found.returncode != 0 or not fields.get("password"):
        raise _unavailable(remote, where, "git credential fill found none")
    return Credential(fields.get("username", TOKEN_USERNAME), fields["password"])


def _run(
    argv: list[str], env: Mapping[str, str], stdin: bytes | None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        env=dict(env),
        cwd=Path.home(),  # not the bundle's working directory: the workspace
        timeout=CREDENTIAL_TIMEOUT,
        check=False,
    )


def _unavailable(remote: GateRemote, where: str, why: str) -> Refusal:
    return Refusal(
        502,
        "git:credential-unavailable",
        f"remote {remote.name}: the host-side credential could not be read ({why})",
        f"fix {where} in your user config (the value stays on the host)",
    )


async def run_git(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = FETCH_TIMEOUT
) -> tuple[int, bytes]:
    """Run a hardened git to completion in `cwd`, a directory the gate owns (never the
    bundle's own working directory, the workspace, whose repository git would discover);
    (exit status, stderr capped at 64 KiB)."""
    process = await asyncio.create_subprocess_exec(
        "git",
        *args,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            _, stderr = await process.communicate()
    except BaseException:
        _kill(process)
        raise
    return process.returncode or 0, (stderr or b"")[-65536:]


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 9)


async def refresh_mirror(mirror: Path, remote: GateRemote, env: Mapping[str, str]) -> None:
    """Bring the mirror's branches and tags to the upstream's (the bottle fetches from it).

    Raises `Refusal` (502) with git's own words when the upstream cannot be reached.
    """
    created = not (mirror / "HEAD").exists()
    if created:
        status, err = await run_git(
            ["init", "--bare", "--quiet", str(mirror)], env, mirror.parent, 30
        )
        if status != 0:
            raise Refusal(500, "git:mirror", f"cannot create the gate's mirror: {_tail(err)}")
    status, err = await run_git(
        [
            "-C",
            str(mirror),
            "fetch",
            "--quiet",
            "--prune",
            "--no-write-fetch-head",
            remote.url,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ],
        env,
        mirror,
    )
    if status != 0:
        raise Refusal(
            502,
            "git:upstream",
            f"remote {remote.name}: the upstream refused or could not be reached: {_tail(err)}",
            f"check the upstream and [git.remotes.{remote.name}] credential on the host",
        )
    if created:  # the upstream's default branch, once: a round trip less per request
        await _follow_head(mirror, remote, env)


async def _follow_head(mirror: Path, remote: GateRemote, env: Mapping[str, str]) -> None:
    """Point the mirror's HEAD where the upstream's points, so a clone checks it out."""
    process = await asyncio.create_subprocess_exec(
        "git",
        "-C",
        str(mirror),
        "ls-remote",
        "--symref",
        remote.url,
        "HEAD",
        env=dict(env),
        cwd=mirror,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(60):
            out, _ = await process.communicate()
    except BaseException:
        _kill(process)
        raise
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
            head = line[len("ref: ") : -len("\tHEAD")]
            await run_git(["-C", str(mirror), "symbolic-ref", "HEAD", head], env, mirror, 30)
            return


def _tail(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return " / ".join(lines[-3:])[:500] or "no detail"
