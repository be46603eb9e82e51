#!/usr/bin/env bash
# The one command that runs the whole moekit test suite on a fresh Debian machine:
#   1. scripts/setup.sh --no-demo: installs missing Debian packages, builds Release into build/,
#      then chromium (for the report rendering test) when /usr/bin/chromium is missing,
#   2. ctest on build/ (unit tests, CLI tests and the install_and_consume packaging test).
# Extra arguments are passed to ctest, e.g. scripts/test.sh -L install.
# Exits non-zero if the build or any test fails.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

scripts/setup.sh --no-demo

# The report test renders an HTML report in headless Chromium (Debian's `chromium`).
if [ ! -x /usr/bin/chromium ]; then
    echo "test.sh: installing chromium for the report rendering test"
    sudo_cmd=()
    [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends chromium
fi

log=build/ctest-output.log
status=0
ctest --test-dir build --output-on-failure -j2 --no-tests=error "$@" 2>&1 | tee "$log" || status=$?

echo
summary=$(grep -E '^[0-9]+% tests passed' "$log" || true)
if [ -n "$summary" ]; then
    echo "test.sh: $summary"
else
    echo "test.sh: ctest printed no summary (exit status $status)"
    [ "$status" -ne 0 ] || status=1
fi
exit "$status"
