"""A FAKE of GitHub's Git LFS API (not GitHub), served by `GitHost` for the gate's tests.

Like GitHub's: the batch API (`POST /repo.git/info/lfs/objects/batch`) wants the
repository's token (HTTP Basic), and each action it answers points at a separate storage
path (`/lfs-media/<oid>`, GitHub's would be another host) with a credential of its own in
the action's `header` (`Authorization: RemoteAuth <secret>`) that storage requires. The
test checks that this secret never reaches the bottle. Objects live in a directory.

It also fakes the locks API (`/repo.git/info/lfs/locks`, `…/locks/verify`,
`…/locks/<id>/unlock`, the repository's token required, as GitHub's wants), with
`locks_supported = False` answering 404 to all of it as a host without locking does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import IO

BATCH = "/repo.git/info/lfs/objects/batch"
LOCKS = re.compile(r"/repo\.git/info/lfs/locks(/verify|/([0-9]+)/unlock)?(\?.*)?")
MEDIA = re.compile(r"/lfs-media/([0-9a-f]{64})")
MAX_OBJECT = 64 << 20
LFS_JSON = "application/vnd.git-lfs+json"
Send = Callable[[int, bytes, dict[str, str]], None]


class FakeGitHubLfs:
    def __init__(self, directory: Path, base_url: str) -> None:
        self.objects = directory / "lfs-objects"
        self.objects.mkdir()
        self.base_url = base_url  # https://git.test
        self.media_secret = secrets.token_hex(20)
        self.requests: list[tuple[str, str]] = []  # method, path (LFS calls only)
        self.bodies: list[bytes] = []  # the locks API's request bodies, as received
        self.locks: dict[str, dict[str, object]] = {}  # id -> lock
        self.locks_supported = True

    def serves(self, path: str) -> bool:
        return (
            path == BATCH or MEDIA.fullmatch(path) is not None or LOCKS.fullmatch(path) is not None
        )

    def _locks(self, method: str, path: str, authorised: bool, body: bytes, send: Send) -> None:
        """The FAKE locks API: GitHub's shapes, owner always "tester"."""
        self.bodies.append(body)
        found = LOCKS.fullmatch(path)
        assert found is not None
        if not self.locks_supported:
            send(404, b'{"message": "Not Found"}', {"content-type": LFS_JSON})
            return
        if not authorised:
            send(401, b'{"message": "token required"}', {"www-authenticate": 'Basic realm="lfs"'})
            return

        def answer(status: int, value: object) -> None:
            send(status, json.dumps(value).encode(), {"content-type": LFS_JSON})

        request = json.loads(body) if body else {}
        if found.group(1) == "/verify" and method == "POST":
            ours = list(self.locks.values())
            answer(200, {"ours": ours, "theirs": [], "next_cursor": ""})
        elif found.group(2) is not None and method == "POST":
            lock = self.locks.pop(found.group(2), None)
            if lock is None:
                answer(404, {"message": "no such lock"})
            else:
                answer(200, {"lock": lock})
        elif found.group(1) is None and method == "GET":
            answer(200, {"locks": list(self.locks.values()), "next_cursor": ""})
        elif found.group(1) is None and method == "POST":
            taken = [lock for lock in self.locks.values() if lock["path"] == request["path"]]
            if taken:
                answer(409, {"lock": taken[0], "message": "already created lock"})
                return
            lock_id = str(len(self.locks) + len(self.requests))
            lock = {
                "id": lock_id,
                "path": request["path"],
                "locked_at": "2026-01-01T00:00:00Z",
                "owner": {"name": "tester"},
            }
            self.locks[lock_id] = lock
            answer(201, {"lock": lock})
        else:
            answer(404, {"message": "not found"})

    def add(self, content: bytes) -> str:
        oid = hashlib.sha256(content).hexdigest()
        (self.objects / oid).write_bytes(content)
        return oid

    def get(self, oid: str) -> bytes | None:
        path = self.objects / oid
        return path.read_bytes() if path.exists() else None

    def handle(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        authorised: bool,
        body: IO[bytes],
        length: int,
        send: Send,
    ) -> None:
        self.requests.append((method, path))
        if LOCKS.fullmatch(path) is not None:
            self._locks(method, path, authorised, body.read(length), send)
            return
        media = MEDIA.fullmatch(path)
        if media is not None:
            if headers.get("authorization") != f"RemoteAuth {self.media_secret}":
                send(401, b"storage credential required\n", {})
            elif method == "GET" and (content := self.get(media.group(1))) is not None:
                send(200, content, {"content-type": "application/octet-stream"})
            elif method == "PUT" and length <= MAX_OBJECT:
                content = body.read(length)
                if hashlib.sha256(content).hexdigest() != media.group(1):
                    send(422, b"oid mismatch\n", {})
                else:
                    (self.objects / media.group(1)).write_bytes(content)
                    send(200, b"", {})
            else:
                send(404, b"no such object\n", {})
            return
        if not authorised:
            send(401, b"token required\n", {"www-authenticate": 'Basic realm="lfs"'})
            return
        request = json.loads(body.read(length))
        action = {"header": {"Authorization": f"RemoteAuth {self.media_secret}"}}
        answered = []
        for item in request["objects"]:
            oid, size = item["oid"], item["size"]
            href = {"href": f"{self.base_url}/lfs-media/{oid}", **action, "expires_in": 3600}
            stored = self.get(oid) is not None
            if request["operation"] == "download":
                entry = (
                    {"actions": {"download": href}}
                    if stored
                    else {"error": {"code": 404, "message": "Object does not exist"}}
                )
            else:
                entry = {} if stored else {"actions": {"upload": href}}
            answered.append({"oid": oid, "size": size, "authenticated": True, **entry})
        answer = json.dumps({"transfer": "basic", "objects": answered}).encode()
        send(200, answer, {"content-type": "application/vnd.git-lfs+json"})


POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def commit_lfs_file(bare: Path, work: Path, name: str, oid: str, size: int) -> None:
    """A commit on `bare`'s main adding `name` as an LFS pointer (host side, no git-lfs)."""
    git = [
        "git",
        "-c",
        "user.name=Host",
        "-c",
        "user.email=host@test",
        "-c",
        "core.hooksPath=/dev/null",
    ]
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run([*git, "clone", "-q", str(bare), str(work)], check=True, env=env)
    (work / ".gitattributes").write_text(f"{name} filter=lfs diff=lfs merge=lfs -text\n")
    (work / name).write_text(POINTER.format(oid=oid, size=size))
    subprocess.run([*git, "-C", str(work), "add", ".gitattributes", name], check=True, env=env)
    subprocess.run(
        [*git, "-C", str(work), "commit", "-q", "-m", "an LFS file"], check=True, env=env
    )
    subprocess.run(
        [*git, "-C", str(work), "push", "-q", "origin", "HEAD:main"], check=True, env=env
    )
