#!/usr/bin/env bash
# Installs the dependencies, then builds and runs the whole test suite:
#  1. release build (-Werror): unit and stress tests, the examples;
#  2. the outside program, compiled only against the installed library
#     through pkg-config (and a find_package consumer);
#  3. the benchmark harness in --quick mode (every scenario's correctness
#     checks, no thresholds);
#  4. ASan+UBSan build: the test suite again;
#  5. TSan build: the test suite again, with tests/tsan.supp;
#  6. reliability: a 20 s smoke run of each libFuzzer target (tests/fuzz,
#     clang) and valgrind memcheck of the examples.
# The suites include the fault-injection tests (tests/fault) and the short
# soak (soak_short). Set EB_TEST_QUICK=1 to skip the sanitizer builds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)
status=0

passed=0
failed=0
run_suite() { # build-dir label [extra cmake args...]
  local dir=$1 label=$2; shift 2
  echo "== $label ==" >&2
  cmake -S . -B "$dir" -DEB_WERROR=ON -DEB_BUILD_BENCH=OFF "$@" >/dev/null
  cmake --build "$dir" -j"$jobs" >/dev/null
  (cd "$dir" && ctest --output-on-failure -j1) || status=1
  # Criterion's own summary line of every test program, and their sum.
  local log=$dir/Testing/Temporary/LastTest.log
  grep -h "Synthesis:" "$log" || true
  local p f
  p=$(grep -ho "Passing: [0-9]*" "$log" | awk '{s+=$2} END {print s+0}')
  f=$(grep -hoE "(Failing|Crashing): [0-9]*" "$log" | awk '{s+=$2} END {print s+0}')
  passed=$((passed + p))
  failed=$((failed + f))
}

run_suite build-test "release" -DCMAKE_BUILD_TYPE=RelWithDebInfo
echo "== examples ==" >&2
build-test/examples/eventbus-demo >/dev/null || { echo "demo failed" >&2; status=1; }
store_dir=$(mktemp -d)
build-test/examples/order-fulfillment --orders 1000 --store "$store_dir/orders.db" >/dev/null ||
  { echo "order-fulfillment --store failed" >&2; status=1; }
rm -rf "$store_dir"
echo "== outside program (pkg-config, find_package) ==" >&2
outside_log=$(mktemp)
tests/outside/run.sh | tee "$outside_log" || status=1
op=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$outside_log" | tail -n 1)
passed=$((passed + ${op%% *}))
failed=$((failed + ${op##* }))
rm -f "$outside_log"
echo "== benchmark smoke run (correctness checks, no thresholds) ==" >&2
EB_DEPS_BENCH=1 scripts/deps.sh
bench/run.sh --quick >/dev/null || { echo "bench/run.sh --quick failed" >&2; status=1; }
if [ "${EB_TEST_QUICK:-0}" != 1 ]; then
  run_suite build-asan "ASan+UBSan" -DCMAKE_BUILD_TYPE=Debug -DEB_SANITIZER=address -DEB_BUILD_EXAMPLES=OFF
  TSAN_OPTIONS="suppressions=$PWD/tests/tsan.supp halt_on_error=1 second_deadlock_stack=1" \
    run_suite build-tsan "TSan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEB_SANITIZER=thread -DEB_BUILD_EXAMPLES=OFF
fi
echo "== reliability: fuzz smoke run, valgrind memcheck of the examples ==" >&2
EB_DEPS_RELIABILITY=1 scripts/deps.sh
add_summary() { # log prefix: adds the "<prefix>: N passed, M failed" line
  local line
  line=$(sed -n "s/^$2: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p" "$1" | tail -n 1)
  if [ -z "$line" ]; then status=1; return; fi
  passed=$((passed + ${line%% *}))
  failed=$((failed + ${line##* }))
}
rel_log=$(mktemp)
CC=$(command -v clang || command -v clang-14) tests/fuzz/run.sh 20 | tee "$rel_log" || status=1
add_summary "$rel_log" fuzz
scripts/valgrind-examples.sh | tee "$rel_log" || status=1
add_summary "$rel_log" valgrind
rm -f "$rel_log"
if [ $status -ne 0 ] && [ $failed -eq 0 ]; then failed=1; fi # a build or a run broke
echo "tests: $passed passed, $failed failed"
exit $status
