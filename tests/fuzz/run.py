"""The long-run driver: `python -m tests.fuzz.run NAME [libFuzzer flags]`, under atheris
(coverage-guided; `pip install -e '.[fuzz]'`). scripts/fuzz.sh runs every target.

libFuzzer's flags apply: `-runs=1000000` inputs, `-timeout=1` fails an input that takes
over a second (a hang), `-max_len=`, a corpus directory to keep what it learnt. Any
exception the target raises is a crash: atheris prints it and writes the input to
`crash-<sha1>` (run the target on that file to reproduce it).
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-not-found]

with atheris.instrument_imports(include=["claude_bottle", "tests.fuzz"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(TARGETS)}}} [libFuzzer flags]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
