"""The git gate's pre-receive hook: hand the push to the gate, print its verdict, exit.

Run by `git receive-pack` in the gate's mirror (as `python3 -I -S git_prereceive.py`:
standard library only, so it starts in milliseconds), after the pushed objects are in the
quarantine and before any ref moves. It sends the gate (over the private socket named in
CLAUDE_BOTTLE_GIT_JUDGE, with the one-use push id in CLAUDE_BOTTLE_GIT_PUSH) its input,
receive-pack's `old new ref` lines, and where the quarantine is; the gate judges the push
and sends it upstream with the bundle's DLP engine and credential (`git_hook.decide`),
then answers with the lines to print and the exit status. Any failure here exits
non-zero: receive-pack then moves no ref (fail closed).
"""

from __future__ import annotations

# `json` and `socket` would load `re`, `enum` and more (~9 ms of every push, before the
# judge hears of it): their C parts, which those modules wrap, do what this hook needs
# (the bundle runs on CPython only: uvloop, httptools).
import _json
import _socket
import os
import sys

JUDGE_VAR = "CLAUDE_BOTTLE_GIT_JUDGE"
PUSH_VAR = "CLAUDE_BOTTLE_GIT_PUSH"
QUARANTINE_VARS = (
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
)
MAX_INPUT = 1 << 20  # receive-pack's lines for one push
MAX_ANSWER = 4 << 20
ANSWER_TIMEOUT = 900.0  # the gate's verdict includes the push upstream
PREFIX = "claude-bottle git gate: "


class _Decoding:
    """What CPython's JSON scanner reads from its decoder: `json.loads`' defaults."""

    strict = True
    object_hook = object_pairs_hook = parse_constant = None  # NaN and the like: refused
    parse_float, parse_int = float, int


def encode(value: dict[str, object]) -> bytes:
    """`value` (strings and dicts of them) as `json.dumps` writes it, one line."""
    quote = _json.encode_basestring_ascii

    def text(item: object) -> str:
        if isinstance(item, str):
            return quote(item)
        if isinstance(item, dict):
            return "{" + ", ".join(f"{text(k)}: {text(v)}" for k, v in item.items()) + "}"
        raise TypeError(f"cannot encode {type(item).__name__}")

    return text(value).encode() + b"\n"


def decode(answer: bytes) -> object:
    """The gate's JSON answer, as `json.loads` reads it (but NaN and Infinity: refused)."""
    text = answer.decode("utf-8")
    start = len(text) - len(text.lstrip())
    scan = _json.make_scanner(_Decoding())  # type: ignore[arg-type]  # typeshed names no protocol
    try:
        found, end = scan(text, start)
    except StopIteration:  # nothing there that starts a value
        raise ValueError("no answer") from None
    if text[end:].strip():
        raise ValueError("more after the answer")
    return found


def ask(request: bytes) -> dict[str, object]:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(ANSWER_TIMEOUT)
        address = os.environ[JUDGE_VAR]  # "@name": the abstract socket "\0name"
        sock.connect("\0" + address[1:] if address.startswith("@") else address)
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if len(answer) > MAX_ANSWER:
                raise ValueError("answer too long")
    finally:
        sock.close()
    found = decode(answer)
    if not isinstance(found, dict):
        raise ValueError("not an answer")
    return found


def main() -> int:
    try:
        text = sys.stdin.buffer.read(MAX_INPUT + 1)
        if len(text) > MAX_INPUT:
            raise ValueError("too many ref updates")
        request = {
            "push": os.environ[PUSH_VAR],
            "updates": text.decode("utf-8"),  # a ref name that is not UTF-8 is refused
            "quarantine": {name: os.environ.get(name, "") for name in QUARANTINE_VARS},
        }
        answer = ask(encode(request))
        lines, status = answer.get("lines"), answer.get("status")
        if not isinstance(lines, list) or not isinstance(status, int):
            raise ValueError("malformed answer")
        for line in lines:
            print(str(line), file=sys.stderr)
        return status if status else 0
    except Exception as exc:  # fail closed: no ref moves
        print(f"{PREFIX}push refused: the gate failed ({type(exc).__name__})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
