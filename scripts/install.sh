#!/usr/bin/env bash
# Install claude-bottle for this user on Debian 12: system packages, a private venv,
# ~/.local/bin/claude-bottle, and Claude Code itself when it is missing.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

bash "$repo/scripts/install-system-deps.sh"
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    $sudo_cmd apt-get install -y -qq python3-venv
fi
venv="${CLAUDE_BOTTLE_VENV:-$HOME/.local/share/claude-bottle/venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$repo"
mkdir -p "$HOME/.local/bin"
ln -sf "$venv/bin/claude-bottle" "$HOME/.local/bin/claude-bottle"

if ! command -v claude >/dev/null 2>&1; then
    command -v npm >/dev/null 2>&1 || $sudo_cmd apt-get install -y -qq nodejs npm
    $sudo_cmd npm install -g --silent @anthropic-ai/claude-code
fi
echo "installed: $HOME/.local/bin/claude-bottle ($("$venv/bin/claude-bottle" --version))"
