"""What a fresh interpreter has loaded after some code: for tests of what an import path
costs (start-up budgets)."""

from __future__ import annotations

import subprocess
import sys


def modules_after(code: str) -> set[str]:
    """sys.modules of a new interpreter (this one's) once `code` has run."""
    done = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())
