"""HTTPS through the bundle: intercepted with the bottle's own CA, upstream verified."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import BottleEnv
from tests.integration.tls_upstream import TLSUpstream

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[TLSUpstream]:
    server = TLSUpstream(tmp_path, "tls.test")
    yield server
    server.close()


def _configure(be: BottleEnv, upstream: TLSUpstream, ca_file: Path, **egress: str) -> None:
    extra = "".join(f"{k} = {v}\n" for k, v in egress.items())
    be.write_config(f"""
[egress]
allow = ["tls.test"]
upstream_ca_file = "{ca_file}"
{extra}
[egress.resolve]
"tls.test" = "127.0.0.1:{upstream.port}"
""")


def test_https_is_intercepted_and_upstream_verified(
    bottle_env: BottleEnv, tls_upstream: TLSUpstream
) -> None:
    _configure(bottle_env, tls_upstream, tls_upstream.ca_file)
    result = bottle_env.sh(
        "curl -sS --max-time 10 https://tls.test/secure && "
        "openssl x509 -noout -issuer -in /run/claude-bottle/bundle/ca.pem && "
        "env | grep -E '^(SSL_CERT_FILE|NODE_EXTRA_CA_CERTS)='"
    )
    assert "hello from upstream /secure" in result.stdout, result.stderr
    assert "claude-bottle CA for t" in result.stdout
    assert "NODE_EXTRA_CA_CERTS=/run/claude-bottle/bundle/ca.pem" in result.stdout
    (received,) = tls_upstream.requests
    assert received.path == "/secure" and received.headers["host"] == "tls.test"
    lines = (bottle_env.state_dir() / "audit.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    egress = [e for e in events if e["kind"] == "egress"]
    assert egress[0]["method"] == "CONNECT" and egress[0]["detail"] == {"intercepted": True}
    assert egress[1]["method"] == "GET" and egress[1]["path"] == "/secure"


def test_upstream_with_untrusted_certificate_is_refused(
    bottle_env: BottleEnv, tls_upstream: TLSUpstream, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = TLSUpstream(tmp_path / "other", "tls.test")  # only its CA is used
    other.close()
    _configure(bottle_env, tls_upstream, other.ca_file)  # trusts the wrong CA
    result = bottle_env.sh(
        "curl -sS -o /dev/null -w '%{http_code}' --max-time 10 https://tls.test/"
    )
    assert result.stdout.strip() == "502", result.stderr
    assert tls_upstream.requests == []


def test_excluded_host_is_tunnelled_without_interception(
    bottle_env: BottleEnv, tls_upstream: TLSUpstream
) -> None:
    _configure(bottle_env, tls_upstream, tls_upstream.ca_file, intercept_exclude='["tls.test"]')
    # The bottle does not trust the test CA, so an end-to-end TLS session fails verification
    # in curl itself: proof that the bundle did not terminate TLS.
    result = bottle_env.sh("curl -sS --max-time 10 https://tls.test/ 2>&1; echo rc=$?")
    assert "rc=60" in result.stdout, result.stdout
    insecure = bottle_env.sh("curl -sS -k --max-time 10 https://tls.test/opaque")
    assert "hello from upstream /opaque" in insecure.stdout, insecure.stderr
