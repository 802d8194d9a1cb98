#!/usr/bin/env bash
# Install the test dependencies into .venv and run the whole test suite.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

bash scripts/install-system-deps.sh --tls-clients
# The real Claude Code CLI runs inside bottles in the end-to-end tests.
if ! command -v claude >/dev/null 2>&1; then
    command -v npm >/dev/null 2>&1 || $sudo_cmd apt-get install -y -qq nodejs npm
    $sudo_cmd npm install -g --silent @anthropic-ai/claude-code
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    $sudo_cmd apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'

# The docker backend's tests need a running engine and its images (built once, cached).
bash scripts/install-docker.sh
.venv/bin/python -c 'from claude_bottle.backend.docker.backend import image_build; image_build()' \
    >.venv/image-build.log 2>&1 || { tail -40 .venv/image-build.log; exit 1; }

.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy

# pytest exits 5 when it collects nothing: treat that as a failure.
status=0
.venv/bin/python -m pytest -ra -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$status"
