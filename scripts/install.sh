#!/usr/bin/env bash
# Install claude-bottle for this user on Debian 12: system packages, a private venv,
# ~/.local/bin/claude-bottle, and Claude Code itself when it is missing.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

bash "$repo/scripts/install-system-deps.sh"
# Debian's own python3 unless CLAUDE_BOTTLE_PYTHON names another: apt keeps it patched,
# and bottles start about a quarter faster on its build (static, optimised) than on a
# shared-library one such as pyenv's (docs/benchmarks.md, item 14).
python="${CLAUDE_BOTTLE_PYTHON:-}"
if [ -n "$python" ]; then
    if ! "$python" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "install.sh: CLAUDE_BOTTLE_PYTHON=$python is not a Python 3.11+ that can make a venv; fix: name one that can, or unset it to use Debian's python3" >&2
        exit 1
    fi
else
    python=/usr/bin/python3
    "$python" -c 'import venv, ensurepip' 2>/dev/null || $sudo_cmd apt-get install -y -qq python3-venv
fi
venv="${CLAUDE_BOTTLE_VENV:-$HOME/.local/share/claude-bottle/venv}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$repo"
mkdir -p "$HOME/.local/bin"
# The venv's console script without pip's `import re` (~4 ms of every start).
"$venv/bin/python" -m claude_bottle.cli.launcher "$HOME/.local/bin/claude-bottle"

if ! command -v claude >/dev/null 2>&1; then
    command -v npm >/dev/null 2>&1 || $sudo_cmd apt-get install -y -qq nodejs npm
    $sudo_cmd npm install -g --silent @anthropic-ai/claude-code
fi
echo "installed: $HOME/.local/bin/claude-bottle ($("$HOME/.local/bin/claude-bottle" --version))"
