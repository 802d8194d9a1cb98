#!/usr/bin/env bash
# System packages claude-bottle and its tests need on Debian 12. Idempotent.
# --tls-clients: also the cheap TLS clients (Debian packages) whose trust of the bottle's CA
# tests/integration/test_real_work.py checks, so the test suite does not skip them.
set -euo pipefail
need=()
# openssh-server: the git gate's tests start sshd on loopback for an ssh remote; git-lfs:
# they push LFS objects to check the proxy refuses an LFS upload outside the gate.
# e2fsprogs: the home image `[bottle] disk` sizes; fuse2fs and fuse3 (fusermount) mount it
# for a user, where loop devices need root.
for pkg in bubblewrap libseccomp2 git git-lfs iproute2 util-linux e2fsprogs fuse2fs fuse3 \
    ca-certificates curl openssh-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${1:-}" = "--tls-clients" ]; then
    # By command, not package: a Node.js from NodeSource brings its own npm.
    for pair in node:nodejs npm:npm ruby:ruby gh:gh; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
    done
    python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
    python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
    /usr/bin/python3 -c 'import requests' 2>/dev/null || need+=(python3-requests)
fi
if [ ${#need[@]} -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
