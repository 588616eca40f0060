#!/usr/bin/env bash
# Installs the dependencies, builds eventbus and runs the main demo: the
# order-fulfillment saga (10,000 orders, 20% of payments declined, on two
# workers unless told otherwise). Extra arguments go to the demo, e.g.
#   scripts/demo.sh --orders 50000 --workers 4 --fail-rate 0.1
# The small API tour is build/examples/eventbus-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DEB_BUILD_BENCH=OFF >/dev/null
cmake --build build -j"$(nproc)" --target order-fulfillment eventbus-demo >/dev/null
exec build/examples/order-fulfillment --orders 10000 --fail-rate 0.2 --workers 2 "$@"
