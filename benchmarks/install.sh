#!/usr/bin/env bash
# Installs the anchors the benchmarks compare against. Idempotent; each step may
# fail without stopping the others (run.py records a missing anchor in the table).
set -u
here="$(cd "$(dirname "$0")" && pwd)"
cache="$here/.cache"
mkdir -p "$cache"
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
need=()
for pair in tinyproxy:tinyproxy rg:ripgrep socat:socat; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" || echo "apt-get install ${need[*]} failed" >&2
fi
# mitmproxy in its own venv (its pins clash with ours)
if [ ! -x "$cache/mitm/bin/mitmdump" ]; then
  python3 -m venv "$cache/mitm" && "$cache/mitm/bin/pip" install -q mitmproxy || echo "mitmproxy install failed" >&2
fi
# sandbox-runtime (srt) local to the cache
if [ ! -x "$cache/npm/node_modules/.bin/srt" ]; then
  mkdir -p "$cache/npm" && (cd "$cache/npm" && npm install --silent --no-audit --no-fund @anthropic-ai/sandbox-runtime) || echo "npm install sandbox-runtime failed" >&2
fi
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install -q matplotlib || echo "matplotlib install failed" >&2
