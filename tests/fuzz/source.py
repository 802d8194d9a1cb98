"""Structured inputs decoded from plain bytes, so every fuzz target takes `bytes`.

One target function serves two drivers: hypothesis in CI (`st.binary()`, a single draw,
cheap) and atheris in the long run (`scripts/fuzz.sh`, coverage-guided mutation of the
same bytes). A `Source` reads the bytes as a stream of choices: which token, how long,
where to split. Running out of bytes yields zeros, so every byte string decodes to
something, and mutating a byte changes one choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Source:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def byte(self) -> int:
        if self._at >= len(self._data):
            return 0
        value = self._data[self._at]
        self._at += 1
        return value

    def below(self, bound: int) -> int:
        """An integer in [0, bound) (0 when the bound is 0 or 1), from one or two bytes."""
        if bound <= 1:
            return 0
        if bound <= 256:
            return self.byte() % bound
        return ((self.byte() << 8) | self.byte()) % bound

    def chance(self, numerator: int, denominator: int = 256) -> bool:
        return self.byte() * denominator < numerator * 256

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def raw(self, limit: int) -> bytes:
        """Up to `limit` bytes taken verbatim."""
        size = self.below(limit + 1)
        piece = self._data[self._at : self._at + size]
        self._at += len(piece)
        return piece

    def chars(self, alphabet: bytes, limit: int, minimum: int = 0) -> bytes:
        """A string of `minimum` to `limit` bytes from `alphabet`."""
        size = minimum + self.below(limit - minimum + 1)
        return bytes(alphabet[self.byte() % len(alphabet)] for _ in range(size))

    def text(self, limit: int) -> str:
        """Up to `limit` characters, mostly ASCII with some from all of Unicode."""
        out = []
        for _ in range(self.below(limit + 1)):
            kind = self.byte()
            if kind < 200:
                out.append(chr(32 + self.byte() % 95))
            elif kind < 230:
                out.append(chr(self.byte()))
            else:
                point = ((self.byte() << 16) | (self.byte() << 8) | self.byte()) % 0x110000
                out.append(chr(point))
        return "".join(out)

    def rest(self) -> bytes:
        piece = self._data[self._at :]
        self._at = len(self._data)
        return piece
