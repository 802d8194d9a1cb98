"""Text from a bottle (or a file it can write) made safe to print on the user's terminal.

Anything the bottle wrote may carry escape sequences that rewrite what the user sees
(erase a line, move the cursor, set the window title) or bidi controls that reorder it.
Every character Python does not call printable becomes a visible escape instead.
"""

from __future__ import annotations


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """`text` with every unprintable character (controls, C1, bidi, separators) escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)
