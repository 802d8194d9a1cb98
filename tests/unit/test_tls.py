"""The per-bottle CA: leaves it mints, and where their keys go."""

from __future__ import annotations

import socket
import ssl
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from claude_bottle.bundle.tls import CertificateAuthority


def _handshake(authority: CertificateAuthority, host: str, ca_file: Path) -> ssl.SSLSocket:
    server_side, client_side = socket.socketpair()
    server = authority.server_context(host).wrap_socket(
        server_side, server_side=True, do_handshake_on_connect=False
    )
    done = threading.Thread(target=server.do_handshake)
    done.start()
    client = ssl.create_default_context(cafile=str(ca_file))
    client.set_alpn_protocols(["http/1.1"])
    tls = client.wrap_socket(client_side, server_hostname=host)
    done.join(10)
    server.close()
    return tls


def test_leaf_is_trusted_through_the_published_ca(tmp_path: Path) -> None:
    authority = CertificateAuthority("unit")
    authority.publish(tmp_path / "ca.pem", None)
    tls = _handshake(authority, "api.example.test", tmp_path / "ca.pem")
    try:
        assert tls.selected_alpn_protocol() == "http/1.1"
        names = [v for k, v in tls.getpeercert()["subjectAltName"] if k == "DNS"]
        assert names == ["api.example.test"]
    finally:
        tls.close()
    assert authority.server_context("api.example.test") is authority.server_context(
        "api.example.test"
    )  # cached


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd is Linux-only")
def test_leaf_keys_never_touch_a_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("a leaf key would be written to a file system")

    authority = CertificateAuthority("unit")
    authority.publish(tmp_path / "ca.pem", None)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_disk)
    tls = _handshake(authority, "a.example.test", tmp_path / "ca.pem")  # a working leaf
    tls.close()


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_java_truststore_holds_the_ca_and_the_host_roots_only_when_some_hosts_tunnel(
    tmp_path: Path,
) -> None:
    from cryptography.hazmat.primitives.serialization import pkcs12

    authority = CertificateAuthority("t")
    authority.publish(tmp_path / "ca.pem", None)
    store = pkcs12.load_pkcs12((tmp_path / "ca.p12").read_bytes(), None)
    assert [c.certificate for c in store.additional_certs] == [authority.cert]
    authority.publish(tmp_path / "ca.pem", None, tunnelled_hosts=True)
    store = pkcs12.load_pkcs12((tmp_path / "ca.p12").read_bytes(), None)
    certs = [c.certificate for c in store.additional_certs]
    assert certs[0] == authority.cert and len(certs) > 1  # plus the host's roots
