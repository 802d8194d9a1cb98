"""The `claude-bottle` command scripts/install.sh puts on the user's PATH.

    python -m claude_bottle.cli.launcher PATH

writes PATH: a script for this interpreter that calls the console entry point, as the
console script pip makes does, without the `import re` of pip's template (~4 ms of CPU
on every start; a warm start's caller otherwise imports only builtin modules).
"""

from __future__ import annotations

import sys
from pathlib import Path

TEMPLATE = """#!{python}
# claude-bottle (written by `python -m claude_bottle.cli.launcher`): pip's console script
# without the `import re` of its template.
from claude_bottle.cli.entry import main

main()
"""


def write(path: str, python: str) -> None:
    """PATH made anew (a symlink there is replaced, never written through)."""
    from claude_bottle.paths import write_atomically

    write_atomically(Path(path), TEMPLATE.format(python=python).encode(), mode=0o755)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m claude_bottle.cli.launcher PATH")
    write(sys.argv[1], sys.executable)


if __name__ == "__main__":
    main()
