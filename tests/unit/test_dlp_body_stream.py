"""A plain request body streams through DLP: what leaves, and when (issue 24).

The guard forwards all but a trailing window of what it has seen, so no complete
secret leaves before the scan has covered it, wherever the reads cut the body.
"""

from __future__ import annotations

import itertools
import random
import string
from typing import Any

import pytest

from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.scanning import DlpInspector
from claude_bottle.policy.dlp import Scanner

_RND = random.Random(24)
TOKEN = (
    "gh" + "p_" + "".join(_RND.choice(string.ascii_letters + string.digits) for _ in range(36))
).encode()
FILLER = bytes(_RND.choice(b"abc def\n") for _ in range(40_000))
SCANNER = Scanner()  # one compile for the module


def _guard() -> tuple[Any, list[tuple[str, str]]]:
    records: list[tuple[str, str]] = []
    inspector = DlpInspector(
        SCANNER, block=True, record=lambda kind, decision, **_: records.append((kind, decision))
    )
    return inspector.body([], "POST", "api.test", 443, "/x"), records


def _cuts(size: int, rnd: random.Random) -> list[int]:
    return sorted({0, size, *rnd.sample(range(1, size), rnd.randint(1, 12))})


def test_a_clean_body_leaves_whole_and_in_order_however_it_is_cut() -> None:
    rnd = random.Random(1)
    for _ in range(40):
        guard, records = _guard()
        cuts = _cuts(len(FILLER), rnd)
        out = b"".join(guard.feed(FILLER[a:b]) for a, b in itertools.pairwise(cuts))
        assert out + guard.finish() == FILLER and not records


@pytest.mark.parametrize("offset", [0, 1, 17, 38, 39, 4095, 4096, 20_000])
def test_a_secret_split_across_reads_is_refused_before_any_of_it_leaves_whole(offset: int) -> None:
    body = FILLER[:20_000] + TOKEN + FILLER[20_000:]
    at = 20_000 + len(TOKEN) // 2  # the cut falls inside the token
    rnd = random.Random(offset)
    for cuts in ([0, at, len(body)], [0, offset, at, at + 1, len(body)], _cuts(len(body), rnd)):
        guard, records = _guard()
        sent = b""
        with pytest.raises(Refusal) as refused:
            for a, b in itertools.pairwise(cuts):
                sent += guard.feed(body[a:b])
            sent += guard.finish()
        assert refused.value.rule == "dlp:github-pat"
        assert TOKEN not in sent
        assert records == [("dlp", "deny")]
