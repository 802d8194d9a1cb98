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

# A full disk shows up as hundreds of unrelated errors: say how much room there is.
df -h "${TMPDIR:-/tmp}" . | sed 's/^/disk: /'

# pytest exits 5 when it collects nothing: treat that as a failure.
status=0
.venv/bin/python -m pytest -ra -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
[ "$status" -eq 0 ] || exit "$status"

# The isolation and escape suites (and the home limit, and the warm start) again, as an unprivileged user: a bottle must hold
# whoever starts it, and one started by root behaves differently (issue 18). The user
# gets a copy of the tree and its own venv (from Debian's python3: root's interpreter may
# live under /root, which it cannot read). Skipped when given arguments (a chosen subset)
# or when not run as root.
ISOLATION_SUITES=(tests/integration/test_isolation.py tests/integration/test_escapes.py
    tests/integration/test_limits_home.py tests/integration/test_warm.py)
test_user=claude-bottle-test
if [ "$#" -eq 0 ] && [ "$(id -u)" -eq 0 ]; then
    id -u "$test_user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$test_user"
    # Docker's socket is root-equivalent; the test user may use it, as a docker user would.
    getent group docker >/dev/null && usermod -aG docker "$test_user"
    user_home="$(getent passwd "$test_user" | cut -d: -f6)"
    tree="$user_home/tree"
    rm -rf "$tree"
    mkdir -p "$tree"
    tar -C "$repo" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' -cf - . \
        | tar -C "$tree" -xf -
    chown -R "$test_user:" "$tree"
    /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null \
        || { apt-get update -qq && apt-get install -y -qq python3-venv; }
    as_user=(runuser -u "$test_user" -- env -i HOME="$user_home" PATH=/usr/local/bin:/usr/bin:/bin
        LANG=C.UTF-8)
    "${as_user[@]}" bash -c "cd '$tree' && /usr/bin/python3 -m venv venv \
        && venv/bin/pip install --quiet --disable-pip-version-check . pytest pytest-timeout h11"
    # A user's bottle home is bounded through fuse2fs where users may open /dev/fuse, which
    # Debian's udev makes mode 0666; a machine without udev (a CI container) leaves it 0600.
    # Given that mode for this suite, and put back after it.
    fuse_mode=""
    if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ]; then
        fuse_mode="$(stat -c %a /dev/fuse)"
        echo "== /dev/fuse is mode $fuse_mode (no udev here): mode 0666, Debian's default, for the user suite"
        chmod 0666 /dev/fuse
    fi
    echo "== the isolation and escape suites as $test_user (uid $(id -u "$test_user"))"
    "${as_user[@]}" bash -c "cd '$tree' && venv/bin/python -m pytest -ra -p no:cacheprovider \
        ${ISOLATION_SUITES[*]}" || status=$?
    # The docker engine (root) can open a user's FUSE mount only if it is mounted
    # allow_other, which /etc/fuse.conf must let users ask for (Debian leaves it off, so
    # the run above saw the docker home unbounded): the docker home cases again, with it.
    if ! grep -qx user_allow_other /etc/fuse.conf 2>/dev/null && [ -c /dev/fuse ]; then
        fuse_conf="$(mktemp)"
        had_conf=0
        [ -e /etc/fuse.conf ] && had_conf=1 && cp -p /etc/fuse.conf "$fuse_conf"
        echo user_allow_other >>/etc/fuse.conf
        echo "== the docker home cases as $test_user again, with user_allow_other in /etc/fuse.conf"
        "${as_user[@]}" bash -c "cd '$tree' && venv/bin/python -m pytest -ra -p no:cacheprovider \
            tests/integration/test_limits_home.py -k docker" || status=$?
        if [ "$had_conf" = 1 ]; then cp -p "$fuse_conf" /etc/fuse.conf; else rm -f /etc/fuse.conf; fi
        rm -f "$fuse_conf"
    fi
    [ -z "$fuse_mode" ] || chmod "$fuse_mode" /dev/fuse
fi
df -h "${TMPDIR:-/tmp}" | sed 's/^/disk after the suites: /'
exit "$status"
