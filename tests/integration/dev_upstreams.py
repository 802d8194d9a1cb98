"""The services a developer's tools reach, on loopback over HTTPS: what test_real_work uses.

One TLS server, signed by a throwaway CA, answers for several host names:

- `pypi.test`: a PEP 503 simple index with one wheel built here;
- `npm.test`: a static npm registry (packument JSON + a tarball packed here);
- `git.test`: real `git http-backend` (CGI) over a bare repository;
- `aws.test`: an S3 ListBuckets answer (what `aws s3api list-buckets` parses);
- `cargo.test`: a sparse cargo registry index with one crate;
- any other name: `200 hello over tls`.

Listens on 127.0.0.1 only; bottles reach it through `[egress.resolve]` pins.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import io
import json
import os
import socket
import ssl
import subprocess
import tarfile
import threading
import zipfile
from email.message import Message
from pathlib import Path
from typing import IO, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOSTS = ("tls.test", "pypi.test", "npm.test", "git.test", "aws.test", "cargo.test")
WHEEL_PROJECT = "cbtest-pkg"
WHEEL_VALUE = "installed from the test index"
NPM_PACKAGE = "cbtest-npm"
NPM_VALUE = "installed from the test registry"
CRATE = "cbtest"
CGI_TIMEOUT = 300  # a test pushes hundreds of MiB through one CGI run
MAX_BODY = 16 << 20


def _tls(directory: Path, hosts: tuple[str, ...] = HOSTS) -> tuple[ssl.SSLContext, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # A name of its own: a test trusting two of these CAs at once (one trust file) must not
    # have OpenSSL pick the other one by subject.
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {hosts[0]} {os.urandom(4).hex()}")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "dev-ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain, key_file = directory / "dev-leaf.pem", directory / "dev-leaf.key"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key_file)
    return context, ca_file


def build_wheel() -> tuple[str, bytes]:
    """A pure-Python wheel: its file name and bytes (RECORD with real hashes)."""
    module = WHEEL_PROJECT.replace("-", "_")
    dist_info = f"{module}-1.0.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {WHEEL_PROJECT}\nVersion: 1.0\n"
    files = {
        f"{module}/__init__.py": f"VALUE = {WHEEL_VALUE!r}\n".encode(),
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: claude-bottle-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{name},sha256={digest},{len(data)}\n"
    record += f"{dist_info}/RECORD,,\n"
    files[f"{dist_info}/RECORD"] = record.encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return f"{module}-1.0-py3-none-any.whl", buffer.getvalue()


def build_npm_tarball() -> bytes:
    files = {
        "package/package.json": json.dumps(
            {"name": NPM_PACKAGE, "version": "1.0.0", "main": "index.js"}
        ).encode(),
        "package/index.js": f"module.exports = {json.dumps(NPM_VALUE)};\n".encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_git_repository(root: Path) -> Path:
    """A bare repository `repo.git` under `root` with one commit."""
    work = root / "seed"
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Seed",
        "GIT_AUTHOR_EMAIL": "seed@example.test",
        "GIT_COMMITTER_NAME": "Seed",
        "GIT_COMMITTER_EMAIL": "seed@example.test",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=env)
    (work / "README").write_text("seeded\n")
    subprocess.run(["git", "-C", str(work), "add", "README"], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "seed"], check=True, env=env)
    bare = root / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True, env=env)
    return bare


class CgiAnswer(NamedTuple):
    status: int
    body: bytes
    content_type: str | None  # None when the CGI named none


def git_http_backend(
    project_root: Path,
    method: str,
    target: str,
    body: bytes | IO[bytes],
    headers: Message,
    remote_user: str = "",
    length: int = 0,
) -> CgiAnswer:
    """One request answered by real `git http-backend` (CGI) over the repositories under
    `project_root`: `target` is the request's path and query, `headers` its header fields;
    a large `body` comes as a file of `length` bytes rather than in memory."""
    path_info, _, query = target.partition("?")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_PROJECT_ROOT": str(project_root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "REQUEST_METHOD": method,
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "CONTENT_TYPE": headers.get("content-type", ""),
        "CONTENT_LENGTH": str(len(body) if isinstance(body, bytes) else length),
        "HTTP_CONTENT_ENCODING": headers.get("content-encoding", ""),
        "GIT_PROTOCOL": headers.get("git-protocol", ""),
        "REMOTE_ADDR": "127.0.0.1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    if remote_user:
        env["REMOTE_USER"] = remote_user
    argv = ["git", "http-backend"]
    result = (
        subprocess.run(
            argv, input=body, env=env, capture_output=True, timeout=CGI_TIMEOUT, check=False
        )
        if isinstance(body, bytes)
        else subprocess.run(
            argv, stdin=body, env=env, capture_output=True, timeout=CGI_TIMEOUT, check=False
        )
    )
    head, _, payload = result.stdout.partition(b"\r\n\r\n")
    status, content_type = 200, None
    for line in head.decode(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name.lower() == "content-type":
            content_type = value.strip()
    return CgiAnswer(status, payload, content_type)


def packument(tarball: bytes, url: str) -> dict[str, object]:
    """The npm registry document of NPM_PACKAGE 1.0.0, whose tarball is at `url`."""
    sha1 = hashlib.sha1(tarball).hexdigest()
    sha512 = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    version = {
        "name": NPM_PACKAGE,
        "version": "1.0.0",
        "main": "index.js",
        "dist": {"tarball": url, "shasum": sha1, "integrity": f"sha512-{sha512}"},
    }
    return {"name": NPM_PACKAGE, "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": version}}


class _Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET
    daemon_threads = True


class TlsServer:
    """An HTTPS server on 127.0.0.1 (a free port) answering for `hosts`, in a thread."""

    hosts: tuple[str, ...]
    ca_file: Path

    def _serve(
        self, context: ssl.SSLContext, handler: type[http.server.BaseHTTPRequestHandler]
    ) -> None:
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.socket = context.wrap_socket(
            self.server.socket, server_side=True, do_handshake_on_connect=False
        )
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def egress_config(self) -> str:
        """The [egress] config that allows and pins every host to this server."""
        pins = "".join(f'"{host}" = "127.0.0.1:{self.port}"\n' for host in self.hosts)
        allow = ", ".join(f'"{host}"' for host in self.hosts)
        return (
            f'[egress]\nallow = [{allow}]\nupstream_ca_file = "{self.ca_file}"\n'
            f"[egress.resolve]\n{pins}"
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class DevUpstreams(TlsServer):
    hosts = HOSTS

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        context, self.ca_file = _tls(directory)
        self.wheel_name, self.wheel = build_wheel()
        self.npm_tarball = build_npm_tarball()
        self.git_root = directory / "git"
        self.git_root.mkdir()
        make_git_repository(self.git_root)
        self.hosts_seen: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                length = min(int(self.headers.get("content-length") or 0), MAX_BODY)
                return self.rfile.read(length) if length else b""

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                host = (self.headers.get("host") or "").split(":")[0]
                outer.hosts_seen.append(host)
                body = self._body()
                if host == "git.test":
                    self._git(body)
                    return
                found = outer.answer(host, self.path)
                if found is None:
                    self._send(404, b"not found\n", "text/plain")
                else:
                    self._send(200, *found)

            def _git(self, body: bytes) -> None:
                answer = git_http_backend(
                    outer.git_root, self.command, self.path, body, self.headers
                )
                self._send(answer.status, answer.body, answer.content_type or "text/plain")

            do_GET = do_POST = do_HEAD = _handle

            def log_message(self, *args: object) -> None:
                pass

        self._serve(context, Handler)

    def answer(self, host: str, path: str) -> tuple[bytes, str] | None:
        path = path.split("?")[0]
        if host == "pypi.test":
            digest = hashlib.sha256(self.wheel).hexdigest()
            if path == f"/simple/{WHEEL_PROJECT}/":
                href = f"/packages/{self.wheel_name}#sha256={digest}"
                link = f'<a href="{href}">{self.wheel_name}</a>'
                return f"<!DOCTYPE html><html><body>{link}</body></html>".encode(), "text/html"
            if path == f"/packages/{self.wheel_name}":
                return self.wheel, "application/octet-stream"
            return None
        if host == "npm.test":
            tarball = f"{NPM_PACKAGE}-1.0.0.tgz"
            if path == f"/{NPM_PACKAGE}":
                url = f"https://npm.test/{NPM_PACKAGE}/-/{tarball}"
                return json.dumps(packument(self.npm_tarball, url)).encode(), "application/json"
            if path == f"/{NPM_PACKAGE}/-/{tarball}":
                return self.npm_tarball, "application/octet-stream"
            return None
        if host == "aws.test":
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                "<Owner><ID>test</ID></Owner><Buckets></Buckets></ListAllMyBucketsResult>"
            )
            return xml.encode(), "application/xml"
        if host == "cargo.test":
            if path == "/index/config.json":
                config = {"dl": "https://cargo.test/dl"}
                return json.dumps(config).encode(), "application/json"
            if path == f"/index/{CRATE[:2]}/{CRATE[2:4]}/{CRATE}":
                entry = {
                    "name": CRATE,
                    "vers": "0.1.0",
                    "deps": [],
                    "cksum": "0" * 64,
                    "features": {},
                    "yanked": False,
                }
                return (json.dumps(entry) + "\n").encode(), "text/plain"
            return None
        return b"hello over tls\n", "text/plain"
