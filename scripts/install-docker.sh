#!/usr/bin/env bash
# Make a Docker engine usable for the docker backend and its tests. Idempotent.
#
# 1. installs docker.io (Debian's engine) when no dockerd is installed;
# 2. starts dockerd in the background when `docker info` fails, and waits for it;
# 3. makes debian:bookworm-slim available without Docker Hub: debootstrap a minbase
#    bookworm into a directory and `docker import` it (the tarball is cached under
#    /var/cache/claude-bottle/ so reruns only re-import).
#
# Environment: CLAUDE_BOTTLE_DOCKER_LOG (dockerd's log, default /var/log/dockerd.log),
# CLAUDE_BOTTLE_CACHE (default /var/cache/claude-bottle), DEBIAN_MIRROR.
set -euo pipefail

base_image="debian:bookworm-slim"
cache_dir="${CLAUDE_BOTTLE_CACHE:-/var/cache/claude-bottle}"
dockerd_log="${CLAUDE_BOTTLE_DOCKER_LOG:-/var/log/dockerd.log}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

say() { echo "install-docker: $*" >&2; }

apt_install() {
    local need=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        say "installing ${need[*]}"
        $sudo_cmd apt-get update -qq
        $sudo_cmd env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

# --- 1. the engine -------------------------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1; then
    apt_install docker.io
fi
# The engine needs these even when dockerd came from elsewhere.
apt_install iptables ca-certificates

# --- 2. a running daemon -------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $dockerd_log)"
    $sudo_cmd mkdir -p "$(dirname "$dockerd_log")"
    # setsid: the daemon must outlive this script and its caller's process group.
    $sudo_cmd setsid dockerd --iptables=true --storage-driver=overlay2 \
        >>"$dockerd_log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    if ! docker info >/dev/null 2>&1; then
        say "dockerd did not become ready within 60s; last lines of $dockerd_log:"
        tail -n 20 "$dockerd_log" >&2 || true
        exit 1
    fi
fi
say "engine ready: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

# --- 3. the offline base image -------------------------------------------------------
if ! docker image inspect "$base_image" >/dev/null 2>&1; then
    tarball="$cache_dir/bookworm-minbase.tar"
    if [ ! -s "$tarball" ]; then
        apt_install debootstrap
        $sudo_cmd mkdir -p "$cache_dir"
        rootfs="$(mktemp -d "$cache_dir/rootfs.XXXXXX")"
        trap '$sudo_cmd rm -rf "$rootfs"' EXIT
        say "debootstrap bookworm (minbase) from $mirror"
        $sudo_cmd debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
        # Slim it like the official image: no apt lists, no caches, no docs.
        $sudo_cmd rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
            "$rootfs"/usr/share/man/*
        $sudo_cmd tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
        $sudo_cmd mv "$tarball.tmp" "$tarball"
    fi
    say "importing $tarball as $base_image"
    docker import \
        --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tarball" "$base_image" >/dev/null
fi
say "$base_image available"
