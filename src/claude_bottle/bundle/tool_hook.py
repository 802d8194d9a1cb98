"""Claude Code's tool-call hook inside a bottle: tell the bundle which tool call runs.

Usage (inside the bottle; standalone, stdlib only)::

    python3 -I -S tool_hook.py PORT

Claude Code runs it before and after every tool call (`PreToolUse`, `PostToolUse`,
`PostToolUseFailure`) with the hook's JSON on stdin. It sends one line to the bundle's
hook channel through the relay's loopback PORT: the event, the tool's name, its
`tool_use_id` and a short summary (a Bash command's first 200 characters, a WebFetch's
URL, a file tool's path), then waits for the bundle's one-line answer, so that requests
the tool makes are attributed to it.

Attribution is advisory, so this never stands in the tool call's way: it prints
nothing, always exits 0, and gives up after TIMEOUT seconds when the bundle is slow
or gone. It must not import anything outside the standard library: claude_bottle is
not installed in the bottle.

It runs twice per tool call, so only C modules are imported (as in relay.py): `_json`'s
scanner and encoder instead of the json package, `_socket` instead of socket; together
they would double its start-up time.
"""

from __future__ import annotations

import _json
import _socket
import sys

TIMEOUT = 1.0  # seconds for each step with the bundle: connect, send, its answer
SUMMARY_MAX = 200
MAX_INPUT = 16 * 1024 * 1024  # stdin read at most (a Write tool's input holds a whole file)
_SUMMARY_FIELDS = {
    "Bash": "command",
    "WebFetch": "url",
    "WebSearch": "query",
    "Read": "file_path",
    "Write": "file_path",
    "Edit": "file_path",
    "MultiEdit": "file_path",
    "NotebookEdit": "notebook_path",
    "Grep": "pattern",
    "Glob": "pattern",
    "Task": "description",
}


class _JSONDefaults:
    """What _json.make_scanner reads from its context: json.JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity


def parse(data: bytes) -> object:
    """json.loads() with json's C scanner alone; ValueError when it is no JSON."""
    text = data.decode().strip(" \t\n\r")
    try:
        value, end = _json.make_scanner(_JSONDefaults)(text, 0)  # type: ignore[arg-type]
    except StopIteration as exc:  # the C scanner's "no value here"
        raise ValueError("not JSON") from exc
    if end != len(text):
        raise ValueError("not JSON")
    result: object = value
    return result


def record_line(hook: object) -> bytes | None:
    """The line for the bundle from Claude Code's hook input; None when it is not one."""
    if not isinstance(hook, dict):
        return None
    event, tool = hook.get("hook_event_name"), hook.get("tool_name")
    call_id = hook.get("tool_use_id")
    if not (isinstance(event, str) and isinstance(tool, str) and isinstance(call_id, str)):
        return None
    tool_input = hook.get("tool_input")
    summary = ""
    field = _SUMMARY_FIELDS.get(tool)
    if field is not None and isinstance(tool_input, dict):
        value = tool_input.get(field)
        summary = value[:SUMMARY_MAX] if isinstance(value, str) else ""
    fields = (("event", event), ("tool", tool[:128]), ("id", call_id[:128]), ("summary", summary))
    pairs = ", ".join(f'"{name}": {_json.encode_basestring_ascii(value)}' for name, value in fields)
    return ("{" + pairs + "}\n").encode()


def send(port: int, line: bytes) -> None:
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        sock.sendall(line)
        sock.recv(64)  # the bundle's answer: it has recorded the call
    finally:
        sock.close()


def main(argv: list[str]) -> int:
    try:
        port = int(argv[1])
        line = record_line(parse(sys.stdin.buffer.read(MAX_INPUT)))
        if line is not None:
            send(port, line)
    except Exception:  # advisory: nothing here may fail the tool call
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
