#!/usr/bin/env bash
# The benchmarks in one command, on a fresh Debian 12 as on a used machine:
#   bash benchmarks/run.sh [--quick]
# installs what claude-bottle needs (bubblewrap…), a running Docker engine (the docker row),
# the anchors and the harness's venv (benchmarks/install.sh), then runs benchmarks/run.py on
# that venv's interpreter. Writes benchmarks/results.json, docs/benchmarks.md and
# benchmarks/ratios.png.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
bash "$repo/scripts/install-system-deps.sh"
bash "$repo/scripts/install-docker.sh" || echo "run.sh: no usable Docker engine; the docker row will say why" >&2
bash "$here/install.sh"
harness="$here/.cache/harness/bin/python"
if [ ! -x "$harness" ]; then
  echo "run.sh: $harness is missing (benchmarks/install.sh could not make it; see its messages above)" >&2
  exit 1
fi
exec "$harness" "$here/run.py" "$@"
