from __future__ import annotations

from claude_bottle.bottle_env import PLACEHOLDER_API_KEY, build_env


def test_env_is_an_allowlist() -> None:
    host = {
        "PATH": "/usr/bin",
        "TERM": "xterm",
        "LC_ALL": "C",
        "HOME": "/home/a",
        "ANTHROPIC_API_KEY": "sk-x",
        "GITHUB_TOKEN": "t",
        "AWS_SECRET_ACCESS_KEY": "s",
        "SSH_AUTH_SOCK": "/run/ssh",
        "DOCKER_HOST": "unix:///x",
        "RANDOM_VAR": "1",
    }
    env = build_env(host, bottle="b", home="/home/a", extra_names=["RANDOM_VAR", "MY_TOKEN"])
    assert env["PATH"] == "/usr/bin" and env["TERM"] == "xterm" and env["LC_ALL"] == "C"
    assert env["RANDOM_VAR"] == "1"
    for leaked in (
        "GITHUB_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "SSH_AUTH_SOCK",
        "DOCKER_HOST",
        "MY_TOKEN",
    ):
        assert leaked not in env
    # The bottle gets a placeholder key, never the host's.
    assert env["ANTHROPIC_API_KEY"] == PLACEHOLDER_API_KEY != host["ANTHROPIC_API_KEY"]
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:3129"
    # Claude Code accepts --dangerously-skip-permissions as root only inside a sandbox.
    assert env["IS_SANDBOX"] == "1"


def test_proxy_variables_point_at_the_relay() -> None:
    env = build_env({}, bottle="b", home="/h", relay_port=3128)
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        assert env[name] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1"
    assert env["HOME"] == "/h" and env["CLAUDE_BOTTLE_NAME"] == "b"


def test_every_tls_client_is_pointed_at_the_bottles_ca() -> None:
    from claude_bottle.bottle_env import CaFiles

    env = build_env({}, bottle="b", home="/h", ca=CaFiles("/b/ca-bundle.pem", "/b/ca.pem"))
    for name in (
        "SSL_CERT_FILE",  # OpenSSL, Python ssl, Ruby/gem, Go, gh, uv
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
        "AWS_CA_BUNDLE",
        "CARGO_HTTP_CAINFO",
        "DENO_CERT",
    ):
        assert env[name] == "/b/ca-bundle.pem", name
    assert env["NODE_EXTRA_CA_CERTS"] == "/b/ca.pem"
    assert "-Djavax.net.ssl.trustStore=/b/ca.p12 " in env["JAVA_TOOL_OPTIONS"]
    assert env["JAVA_TOOL_OPTIONS"].endswith("-Djavax.net.ssl.trustStoreType=PKCS12")
    assert "-Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=3128" in env["JAVA_TOOL_OPTIONS"]
    plain = build_env({}, bottle="b", home="/h")
    assert "SSL_CERT_FILE" not in plain and "trustStore" not in plain["JAVA_TOOL_OPTIONS"]
