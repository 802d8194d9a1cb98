"""A FAKE of GitHub's Git LFS API (not GitHub), served by `GitHost` for the gate's tests.

Like GitHub's: the batch API (`POST /repo.git/info/lfs/objects/batch`) wants the
repository's token (HTTP Basic), and each action it answers points at a separate storage
path (`/lfs-media/<oid>`, GitHub's would be another host) with a credential of its own in
the action's `header` (`Authorization: RemoteAuth <secret>`) that storage requires. The
test checks that this secret never reaches the bottle. Objects live in a directory.
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
MEDIA = re.compile(r"/lfs-media/([0-9a-f]{64})")
MAX_OBJECT = 64 << 20
Send = Callable[[int, bytes, dict[str, str]], None]


class FakeGitHubLfs:
    def __init__(self, directory: Path, base_url: str) -> None:
        self.objects = directory / "lfs-objects"
        self.objects.mkdir()
        self.base_url = base_url  # https://git.test
        self.media_secret = secrets.token_hex(20)
        self.requests: list[tuple[str, str]] = []  # method, path (LFS calls only)

    def serves(self, path: str) -> bool:
        return path == BATCH or MEDIA.fullmatch(path) is not None

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
