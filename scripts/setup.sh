#!/usr/bin/env bash
# One-command set-up for moekit on Debian 12:
#   1. installs the Debian packages the build needs (apt-get only when one is missing),
#   2. configures and builds the Release tree in build/,
#   3. fits the bundled example (a Gaussian mixture on Old Faithful) and prints its summary.
# Usage: scripts/setup.sh [--no-demo]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

packages=(cmake g++ make libeigen3-dev libboost-math-dev catch2 libcli11-dev nlohmann-json3-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing missing Debian packages: ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"

if [ "${1:-}" != "--no-demo" ]; then
    echo
    echo "setup: fitting a 2-expert Gaussian mixture to data/faithful.csv"
    ./build/apps/moekit fit data/faithful.csv --target eruptions,waiting --experts 2 \
        --restarts 5 --seed 1 --output build/faithful_K2.json
fi
