#!/usr/bin/env bash
# The long fuzz run (issue 18): every parser target in tests/fuzz/ under atheris,
# coverage-guided, each for 1,000,000 inputs; an input slower than 1 s is a hang.
#
#   scripts/fuzz.sh [--quick] [--runs N] [TARGET...]
#
# --quick runs 20,000 inputs per target (a minute or two in all). Targets default to all
# of them (tests/fuzz/targets.py). Corpora are kept in .fuzz/corpus/TARGET between runs,
# logs in .fuzz/logs/; a crash or hang leaves its input in .fuzz/crash-*, timeout-* or
# oom-*, which `python -m tests.fuzz.run TARGET FILE` replays. Needs atheris:
# `pip install -e '.[fuzz]'`. Exit status: 0 when every target ran clean, else 1.
set -euo pipefail

cd "$(dirname "$0")/.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python

runs=1000000
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) runs=20000 ;;
        --runs) runs="$2"; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done

if ! "$python" -c 'import atheris' 2>/dev/null; then
    echo "fuzz.sh: atheris is not installed; run: $python -m pip install -e '.[fuzz]'" >&2
    exit 3
fi
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <("$python" -c 'from tests.fuzz.targets import TARGETS; print(*TARGETS, sep="\n")')
fi

mkdir -p .fuzz/logs
failed=0
for target in "${targets[@]}"; do
    mkdir -p ".fuzz/corpus/$target"
    log=".fuzz/logs/$target.log"
    start=$(date +%s)
    if "$python" -m tests.fuzz.run "$target" ".fuzz/corpus/$target" \
        -runs="$runs" -timeout=1 -max_len=2048 -rss_limit_mb=2048 \
        -artifact_prefix=.fuzz/ -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed=1
    fi
    done_line=$(grep -a '^Done ' "$log" | tail -1 || true)
    printf '%-22s %-6s %s (%ss; log %s)\n' "$target" "$status" "${done_line:-no summary}" \
        "$(( $(date +%s) - start ))" "$log"
done
exit "$failed"
