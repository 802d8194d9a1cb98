"""The bottle's environment: built from an allowlist, never inherited wholesale."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from claude_bottle.bundle.settings import InjectionSpec

RELAY_PORT = 3128  # inside the bottle's own network namespace, so any port is free
GATEWAY_PORT = 3129
GIT_PORT = 3130  # the bundle's git gate (`[git.remotes]`)
# The gate's URL rewrites, published by the bundle beside its sockets; every backend shows
# that directory read-only at /run/claude-bottle/bundle (git_identity.py).
GATE_GIT_CONFIG = "/run/claude-bottle/bundle/gitconfig"
HOOK_PORT = 3131  # Claude Code's tool-call hooks (`bundle/tool_calls.py`)
# What the bottle holds instead of a key: the gateway swaps in the real credential.
PLACEHOLDER_API_KEY = "sk-ant-claude-bottle-placeholder-the-real-key-stays-on-the-host"
# Claude Code's own switches for traffic the bottle would refuse anyway.
CLAUDE_CODE_QUIET = {
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    # Claude Code refuses --dangerously-skip-permissions as root outside a sandbox; a
    # bottle is that sandbox (root inside is the host user, without capabilities).
    "IS_SANDBOX": "1",
}

_PASS_THROUGH = ("TERM", "COLORTERM", "LANG", "LANGUAGE", "TZ", "PATH", "USER", "LOGNAME")
# Where version managers under the home keep their state (namespace backend: the host's own
# toolchains run inside). Not the tools' cache or config dirs: those stay the bottle's own.
TOOLCHAIN_ENV = (
    "PYENV_ROOT",
    "PYENV_VERSION",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "NVM_DIR",
    "NVM_BIN",
    "NVM_INC",
    "FNM_DIR",
    "FNM_MULTISHELL_PATH",
    "VIRTUAL_ENV",
)
SECRET_NAME = re.compile(
    r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH(?!OR)|COOKIE|SESSION|PRIVATE", re.IGNORECASE
)


def host_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """The user's own secret values: host variables whose names say they are secrets.

    Values that are paths or socket addresses (SSH_AUTH_SOCK, DBUS_SESSION_BUS_ADDRESS)
    are not secrets, and fingerprinting them would block any request mentioning them.
    """
    return {
        name: value
        for name, value in env.items()
        if SECRET_NAME.search(name) and value and not value.startswith(("/", "unix:"))
    }


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def proxy_env(port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    env: dict[str, str] = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = url
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
    return env


CA_DIR = "/run/claude-bottle/bundle"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The bundle publishes these next to the CA certificate (ca.pem): the trust store with the
# CA added (ca-bundle.pem, where the backend cannot show it as the system one) and a
# PKCS#12 trust store for Java, which reads no PEM.
JAVA_TRUSTSTORE = "ca.p12"
# Each names a PEM file of every CA to trust: OpenSSL and what links it (curl, git, Python's
# ssl, Ruby and gem), Go and gh, requests and the AWS CLI, pip, uv, cargo, Deno.
CA_BUNDLE_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "AWS_CA_BUNDLE",
    "CARGO_HTTP_CAINFO",
    "DENO_CERT",
)


class CaFiles(NamedTuple):
    """Where the bottle sees the bundle's CA files (TLS interception on)."""

    bundle: str  # every CA to trust: the system's and the bottle's
    cert: str  # the bottle's CA alone; the Java trust store is beside it


NAMESPACE_CA = CaFiles(SYSTEM_CA_BUNDLE, f"{CA_DIR}/ca.pem")  # the bundle is shown as the system's


def ca_env(ca: CaFiles) -> dict[str, str]:
    """Point every common TLS client at the trust store that includes the bottle's CA."""
    env = dict.fromkeys(CA_BUNDLE_VARIABLES, ca.bundle)
    env["NODE_EXTRA_CA_CERTS"] = ca.cert  # Node and npm add it to their built-in roots
    return env


def java_options(relay_port: int, ca: CaFiles | None) -> str:
    """Java reads neither the proxy variables nor a PEM trust store: tell it both."""
    options = []
    for scheme in ("http", "https"):
        options += [f"-D{scheme}.proxyHost=127.0.0.1", f"-D{scheme}.proxyPort={relay_port}"]
    options.append("-Dhttp.nonProxyHosts=localhost|127.0.0.1")
    if ca is not None:
        truststore = f"{ca.cert.rpartition('/')[0]}/{JAVA_TRUSTSTORE}"
        options += [
            f"-Djavax.net.ssl.trustStore={truststore}",
            "-Djavax.net.ssl.trustStoreType=PKCS12",
        ]
    return " ".join(options)


def injected_env(injections: Iterable[InjectionSpec]) -> dict[str, str]:
    """The variables that hold `[[credentials.inject]]` placeholders: the bundle swaps
    the real secret in at the edge, for the injection's hosts only."""
    return {
        name: injection.placeholder
        for injection in injections
        for name in (injection.env, *injection.also_env)
    }


def build_env(
    host_env: Mapping[str, str],
    *,
    bottle: str,
    home: str,
    extra_names: Iterable[str] = (),
    relay_port: int = RELAY_PORT,
    ca: CaFiles | None = None,
) -> dict[str, str]:
    """The bottle's environment; `ca` says where the bottle sees the CA files when TLS
    is intercepted (None: not intercepted)."""
    env: dict[str, str] = {}
    names = [*_PASS_THROUGH, *(n for n in host_env if n.startswith("LC_")), *extra_names]
    for name in names:
        value = host_env.get(name)
        # Defence in depth: config validation already refuses secret-looking names.
        if value is not None and not SECRET_NAME.search(name):
            env[name] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("TERM", "xterm-256color")
    env.setdefault("LANG", "C.UTF-8")
    env["HOME"] = home
    env["TMPDIR"] = "/tmp"
    env["SHELL"] = "/bin/bash"
    env["CLAUDE_BOTTLE"] = "1"
    env["CLAUDE_BOTTLE_NAME"] = bottle
    env.update(proxy_env(relay_port))
    env["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{GATEWAY_PORT}"
    env["ANTHROPIC_API_KEY"] = PLACEHOLDER_API_KEY
    env.update(CLAUDE_CODE_QUIET)
    env["JAVA_TOOL_OPTIONS"] = java_options(relay_port, ca)
    if ca is not None:
        env.update(ca_env(ca))
    return env
