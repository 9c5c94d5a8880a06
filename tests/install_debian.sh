#!/usr/bin/env bash
# Install Debian packages that some tests need, where this machine allows it (root and apt-get); otherwise, or when
# the install fails, say which tests will skip. Used by .ci/run (ffmpeg) and `make test-slurm` (slurm-wlm, munge).
#
#   tests/install_debian.sh "<tests that skip without them>" PACKAGE...
set -uo pipefail
skips=$1
shift
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "$* not installed (needs root and apt-get); $skips will skip"
    exit 0
fi
echo "installing $* for $skips"
if ! { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 \
        apt-get install -y -qq --no-install-recommends "$@"; } >/dev/null 2>&1; then
    echo "$* could not be installed; $skips will skip"
fi
exit 0
