"""Git LFS outside the git gate: downloads only.

An LFS upload is how a push carries its large files: git-lfs asks the remote's LFS API
(`POST <repo>.git/info/lfs/objects/batch`, JSON `{"operation": "upload", ...}`) where to
put each object, then PUTs it there. Through the egress proxy that would be a push the
gate never saw, so the proxy refuses every LFS API request that is not a batch
*download*, with the gate's rule `git-push-outside-gate`, before the upstream receives
it: the request is held (at most `MAX_BATCH` bytes, after DLP's scan) and read. Anything
it cannot read as a download is refused: fail closed. Without the batch's answer git-lfs
has no upload URL; a PUT to a storage URL the agent already knows is ordinary egress,
which the allowlist and DLP govern.

A gated remote's LFS calls go to the git gate instead (`git_lfs_gate`), which serves
its downloads with the host-side credential.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from claude_bottle.bundle.refusal import Refusal

if TYPE_CHECKING:
    from claude_bottle.bundle.admission import BodyStage

MAX_BATCH = 1 << 20  # an LFS batch request held for its check; larger ones are refused
LFS_MEDIA_TYPE = b"application/vnd.git-lfs"  # +json: the LFS API's requests and answers
BATCH_SUFFIX = "/objects/batch"


def is_lfs_api(method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request with a body is a call of an LFS API (batch, locks, legacy)."""
    if method.upper() in ("GET", "HEAD", "OPTIONS"):
        return False
    if path.split("?", 1)[0].rstrip("/").endswith(BATCH_SUFFIX):
        return True
    return any(
        name.lower() in (b"content-type", b"accept") and LFS_MEDIA_TYPE in value.lower()
        for name, value in headers
    )


def _refused(why: str) -> Refusal:
    return Refusal(
        403,
        "git-push-outside-gate",
        f"a Git LFS upload goes only through the bottle's git gate ({why})",
        "configure the repository under [git.remotes.NAME] in your user config",
    )


class LfsDownloadOnly:
    """Holds an LFS API request's body until it has been read as a batch download."""

    def __init__(self, scanned: BodyStage | None, path: str) -> None:
        self.scanned = scanned
        self.batch = path.split("?", 1)[0].rstrip("/").endswith(BATCH_SUFFIX)
        self.held = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        self.held += chunk if self.scanned is None else self.scanned.feed(chunk)
        if len(self.held) > MAX_BATCH:
            raise _refused("an LFS request this large is not checked")
        return b""

    def finish(self) -> bytes:
        if self.scanned is not None:
            self.held += self.scanned.finish()
        if not self.batch:
            raise _refused("only batch downloads pass the proxy")
        try:
            request = json.loads(bytes(self.held))
        except ValueError:
            raise _refused("the batch request is not JSON") from None
        operation = request.get("operation") if isinstance(request, dict) else None
        if operation != "download":
            raise _refused("the batch operation is not a download")
        return bytes(self.held)

    def release(self) -> None:
        if self.scanned is not None:
            self.scanned.release()
