#!/usr/bin/env bash
# Installs the dependencies, builds eventbus and runs the main demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DEB_BUILD_BENCH=OFF >/dev/null
cmake --build build -j"$(nproc)" --target eventbus-demo >/dev/null
exec build/examples/eventbus-demo "$@"
