"""HTTPS upstreams on loopback that require real credentials: what test_injection uses.

One TLS server, signed by a throwaway CA, answers for:

- `api.github.com`: `GET /user` answers only the real GitHub token (Bearer or `token`);
  `GET /echo-auth` reflects the Authorization header it got (a reflecting endpoint);
- `github.com`: real `git http-backend` over `acme/repo.git`, behind Basic auth whose
  password must be the real token (git asks after a 401, as with GitHub);
- `registry.npmjs.org`: an npm registry (packument, tarball, the audit endpoint) that
  answers only the real npm token; a publish (`PUT`) is answered 201 and recorded;
- `pypi.org` and `files.pythonhosted.org`: a PEP 503 index with one wheel (no token);
- `other.test`, `upload.pypi.org`: any request, answered 200 (no credential goes there).

Every request is recorded with its Authorization header, so a test proves what reached
which host. Listens on 127.0.0.1 only; bottles reach it through `[egress.resolve]` pins.
"""

from __future__ import annotations

import base64
import http.server
import json
from email.message import Message
from pathlib import Path
from typing import NamedTuple

from tests.integration.dev_upstreams import (
    MAX_BODY,
    NPM_PACKAGE,
    WHEEL_PROJECT,
    TlsServer,
    _tls,
    build_npm_tarball,
    build_wheel,
    git_http_backend,
    make_git_repository,
    packument,
)

HOSTS = (
    "api.github.com",
    "github.com",
    "registry.npmjs.org",
    "other.test",
    "pypi.org",
    "files.pythonhosted.org",
    "upload.pypi.org",
)


class Seen(NamedTuple):
    host: str
    method: str
    path: str
    authorization: str
    body: bytes


def _credential(authorization: str) -> str:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "basic":
        user, _, password = base64.b64decode(value).decode(errors="replace").partition(":")
        return password or user
    return value.strip()


class AuthUpstreams(TlsServer):
    hosts = HOSTS

    def __init__(self, directory: Path, github_token: str, npm_token: str) -> None:
        context, self.ca_file = _tls(directory, HOSTS)
        self.tokens = {
            "api.github.com": github_token,
            "github.com": github_token,
            "registry.npmjs.org": npm_token,
        }
        self.npm_tarball = build_npm_tarball()
        self.wheel_name, self.wheel = build_wheel()
        self.git_root = directory / "git"
        (self.git_root / "acme").mkdir(parents=True)
        bare = make_git_repository(directory)
        bare.rename(self.git_root / "acme" / "repo.git")
        self.seen: list[Seen] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in {"content-type": "text/plain", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                host = (self.headers.get("host") or "").split(":")[0]
                length = min(int(self.headers.get("content-length") or 0), MAX_BODY)
                body = self.rfile.read(length) if length else b""
                authorization = self.headers.get("authorization") or ""
                outer.seen.append(Seen(host, self.command, self.path, authorization, body))
                token = outer.tokens.get(host)
                if token is not None and _credential(authorization) != token:
                    self._send(401, b"bad credentials\n", {"www-authenticate": 'Basic realm="t"'})
                    return
                status, payload, headers = outer.answer(
                    host, self.command, self.path, body, self.headers
                )
                if host == "api.github.com" and self.path == "/echo-auth":
                    payload = f"you sent: {authorization}\n".encode()
                self._send(status, payload, headers)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        self._serve(context, Handler)

    def answer(
        self, host: str, method: str, path: str, body: bytes, headers: Message
    ) -> tuple[int, bytes, dict[str, str]]:
        if host == "github.com":
            return self._git(method, path, body, headers)
        if host == "pypi.org" and path == f"/simple/{WHEEL_PROJECT}/":
            import hashlib

            digest = hashlib.sha256(self.wheel).hexdigest()
            href = f"https://files.pythonhosted.org/packages/{self.wheel_name}#sha256={digest}"
            page = f'<!DOCTYPE html><html><body><a href="{href}">{self.wheel_name}</a>'
            return 200, page.encode(), {"content-type": "text/html"}
        if host == "files.pythonhosted.org" and path == f"/packages/{self.wheel_name}":
            return 200, self.wheel, {"content-type": "application/octet-stream"}
        if host == "api.github.com" and path == "/graphql":
            return 200, b'{"data": {"viewer": {"login": "octocat"}}}\n', {}
        if host == "api.github.com" and path == "/user":
            return 200, b'{"login": "octocat"}\n', {"content-type": "application/json"}
        if host == "registry.npmjs.org":
            tarball = f"{NPM_PACKAGE}-1.0.0.tgz"
            if method == "PUT":
                return 201, b'{"ok": true}\n', {"content-type": "application/json"}
            if path.split("?")[0] == f"/{NPM_PACKAGE}":
                url = f"https://registry.npmjs.org/{NPM_PACKAGE}/-/{tarball}"
                return 200, json.dumps(packument(self.npm_tarball, url)).encode(), {}
            if path == f"/{NPM_PACKAGE}/-/{tarball}":
                return 200, self.npm_tarball, {"content-type": "application/octet-stream"}
            if method == "POST" and path.startswith("/-/npm/v1/security/"):
                return 200, b"{}", {"content-type": "application/json"}
            return 404, b"{}", {"content-type": "application/json"}
        return 200, b"hello\n", {}

    def _git(
        self, method: str, path: str, body: bytes, headers: Message
    ) -> tuple[int, bytes, dict[str, str]]:
        answer = git_http_backend(self.git_root, method, path, body, headers, "x-access-token")
        found = {"content-type": answer.content_type} if answer.content_type else {}
        return answer.status, answer.body, found
