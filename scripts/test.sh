#!/usr/bin/env bash
# Install the test dependencies into .venv and run the whole test suite.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

bash scripts/install-system-deps.sh
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    $sudo_cmd apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check src tests
.venv/bin/mypy

# pytest exits 5 when it collects nothing: treat that as a failure.
status=0
.venv/bin/python -m pytest -ra -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$status"
