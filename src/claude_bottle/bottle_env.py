"""The bottle's environment: built from an allowlist, never inherited wholesale."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

RELAY_PORT = 3128  # inside the bottle's own network namespace, so any port is free
GATEWAY_PORT = 3129
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


def ca_env() -> dict[str, str]:
    """Point every common TLS client at the trust store that includes the bottle's CA."""
    env = {
        name: SYSTEM_CA_BUNDLE
        for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")
    }
    env["NODE_EXTRA_CA_CERTS"] = f"{CA_DIR}/ca.pem"
    return env


def build_env(
    host_env: Mapping[str, str],
    *,
    bottle: str,
    home: str,
    extra_names: Iterable[str] = (),
    relay_port: int = RELAY_PORT,
    intercept: bool = False,
) -> dict[str, str]:
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
    if intercept:
        env.update(ca_env())
    return env
