"""The git gate's pre-receive hook speaks JSON without the `json` module (whose import
took ~9 ms of every push): what it writes and reads must be `json`'s, byte for byte."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from claude_bottle.bundle import git_prereceive

SAMPLES = [
    "",
    "refs/heads/bottle/x",
    'quote " back \\ slash',
    "tab\tnew\nline\r\x00",
    "é 日本 😀",
    "\ud800",
]


def _random_text(rng: random.Random) -> str:
    return "".join(
        chr(rng.choice([rng.randrange(0, 128), rng.randrange(128, 0x3000)]))
        for _ in range(rng.randrange(0, 40))
    )


def test_a_request_is_what_json_dumps_writes() -> None:
    rng = random.Random(7)
    for text in [*SAMPLES, *(_random_text(rng) for _ in range(300))]:
        request = {"push": text, "updates": text * 2, "quarantine": {"GIT_DIR": text, text: "x"}}
        assert git_prereceive.encode(request) == json.dumps(request).encode() + b"\n"


def test_an_answer_is_read_as_json_loads_reads_it() -> None:
    rng = random.Random(11)
    for text in [*SAMPLES[:-1], *(_random_text(rng) for _ in range(300))]:
        answer = {
            "status": rng.randrange(0, 256),
            "lines": [text, text[::-1]],
            "x": [1.5, None, True],
        }
        raw = json.dumps(answer).encode()
        assert git_prereceive.decode(raw) == json.loads(raw) == answer
        assert git_prereceive.decode(b" \n" + raw + b"\n ") == answer


@pytest.mark.parametrize(
    "raw", [b"", b"{", b'{"a": 1} {"b": 2}', b"NaN", b'{"a": NaN}', b"\xff", b'{"a": 1,}']
)
def test_what_is_not_a_json_answer_is_refused(raw: bytes) -> None:
    """What json.loads refuses, and NaN, which it would take but the gate never sends."""
    with pytest.raises((ValueError, TypeError)):
        git_prereceive.decode(raw)


def test_the_hook_loads_neither_json_nor_socket() -> None:
    path = git_prereceive.__file__
    code = (
        f"import sys; exec(compile(open({path!r}).read(), {path!r}, 'exec'), "
        "{'__name__': 'not_main'}); "
        "print(sorted(set(sys.modules) & {'json', 'socket', 're', 'enum'}))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stderr
