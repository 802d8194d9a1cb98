#!/usr/bin/env bash
# Installs the anchors the benchmarks compare against, and the harness's own venv.
# Idempotent; each anchor may fail without stopping the others (run.py records a
# missing anchor in the table). benchmarks/run.sh calls this before the harness.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
cache="$here/.cache"
mkdir -p "$cache"
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
# The interpreter scripts/install.sh makes claude-bottle's venv from.
python="${CLAUDE_BOTTLE_PYTHON:-/usr/bin/python3}"
need=()
for pair in tinyproxy:tinyproxy rg:ripgrep socat:socat npm:npm; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
"$python" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" || echo "apt-get install ${need[*]} failed" >&2
fi
# The harness: claude-bottle (editable, for the bundle it starts and the DLP scanner it
# times), matplotlib for the chart, detect-secrets (the DLP anchor).
if [ ! -x "$cache/harness/bin/python" ]; then
  "$python" -m venv "$cache/harness" || echo "making the harness venv from $python failed" >&2
fi
"$cache/harness/bin/pip" install -q --disable-pip-version-check -e "$repo" matplotlib detect-secrets \
  || echo "installing the harness's packages failed" >&2
# mitmproxy in its own venv (its pins clash with ours)
if [ ! -x "$cache/mitm/bin/mitmdump" ]; then
  "$python" -m venv "$cache/mitm" && "$cache/mitm/bin/pip" install -q mitmproxy || echo "mitmproxy install failed" >&2
fi
# sandbox-runtime (srt) local to the cache
if [ ! -x "$cache/npm/node_modules/.bin/srt" ]; then
  mkdir -p "$cache/npm" && (cd "$cache/npm" && npm install --silent --no-audit --no-fund @anthropic-ai/sandbox-runtime) || echo "npm install sandbox-runtime failed" >&2
fi
