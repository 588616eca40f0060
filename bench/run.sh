#!/usr/bin/env bash
# Runs the benchmark harness.
#
#   bench/run.sh            full suite (5 runs per figure): writes
#                           bench/results/<date>.json, the PNG and SVG plots in
#                           bench/results/, and regenerates bench/RESULTS.md
#   bench/run.sh --quick    CI smoke test: every scenario with small counts,
#                           correctness checks on, no thresholds, no plots;
#                           nothing under bench/ is touched
#   any other argument is passed to eventbus-bench (e.g. --runs 7).
#
# The exit status is the driver's: 1 if a correctness check failed, 2 if a
# run hung. Peers need EB_DEPS_BENCH=1 scripts/deps.sh (missing ones are
# skipped). The machine has 2 cores: run the full suite when it is quiet
# (the load average is recorded in the results).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${EB_BENCH_BUILD:-build-bench}

quick=0
args=()
for a in "$@"; do
  if [ "$a" = --quick ]; then quick=1; else args+=("$a"); fi
done

echo "run.sh: building eventbus-bench in $build (Release)" >&2
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DEB_BUILD_TESTS=OFF \
  -DEB_BUILD_EXAMPLES=OFF -DEB_BUILD_BENCH=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target eventbus-bench >/dev/null
bin="$build/bench/eventbus-bench"
rev=$(git describe --always 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- src include 2>/dev/null; then
  rev="$rev + uncommitted changes in src/ or include/"
fi

if [ "$quick" = 1 ]; then
  out="$build/bench/quick.json"
  status=0
  "$bin" --quick --json "$out" --note "$rev" ${args[@]+"${args[@]}"} || status=$?
  # Exercise the renderer too, into the build tree.
  python3 bench/render.py "$out" --md "$build/bench/RESULTS-quick.md" || status=$((status ? status : 1))
  exit "$status"
fi

read -r l1 l5 l15 _ < /proc/loadavg
echo "run.sh: load average $l1 $l5 $l15 on $(nproc) CPUs" >&2
mkdir -p bench/results
json="bench/results/$(date -u +%Y-%m-%dT%H%M%SZ).json"
status=0
"$bin" --json "$json" --note "$rev" ${args[@]+"${args[@]}"} || status=$?
if [ -f "$json" ]; then
  python3 bench/render.py "$json" --md bench/RESULTS.md --plots bench/results || status=$((status ? status : 1))
fi
echo "run.sh: results in $json, bench/RESULTS.md and bench/results/*.png|svg" >&2
exit "$status"
