#!/usr/bin/env bash
# System packages claude-bottle and its tests need on Debian 12. Idempotent.
set -euo pipefail
need=()
for pkg in bubblewrap libseccomp2 git iproute2 util-linux ca-certificates curl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
