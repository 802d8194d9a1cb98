#!/usr/bin/env bash
# The long fault run (issue 18): `kill -9` of `claude-bottle run` at 50 seeded points of
# its launch per backend, then `claude-bottle cleanup`; nothing of the bottle may be left
# (containers, networks, volumes, processes, mounts, cgroups, runtime dirs).
#
#   scripts/fault-runs.sh [--points N] [--seed S] [--backends namespace,docker]
#
# CI runs 5 points per backend (tests/integration/test_fault_runs.py). Each run uses its
# own state and runtime dirs under pytest's tmp dir and checks only its own bottle, so it
# is safe beside other suites on the machine. A different --seed gives different points.
# Exit status: pytest's.
set -euo pipefail

cd "$(dirname "$0")/.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python

points=50
seed=long
backends=namespace,docker
while [ $# -gt 0 ]; do
    case "$1" in
        --points) points="$2"; shift ;;
        --seed) seed="$2"; shift ;;
        --backends) backends="$2"; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "fault-runs.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

CLAUDE_BOTTLE_FAULT_POINTS="$points" CLAUDE_BOTTLE_FAULT_SEED="$seed" \
CLAUDE_BOTTLE_TEST_BACKENDS="$backends" \
    exec "$python" -m pytest -q -rA -p no:cacheprovider \
    tests/integration/test_fault_runs.py
