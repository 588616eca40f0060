#!/usr/bin/env bash
# Runs every example under valgrind memcheck and fails on any error or leak.
#
#  - builds the examples in build-valgrind/ (RelWithDebInfo: optimised like a
#    release, with the debug info valgrind needs for its stacks; no tests,
#    no benches);
#  - runs each of them under
#      valgrind --error-exitcode=99 --leak-check=full
#               --errors-for-leak-kinds=definite,indirect
#    with tests/valgrind.supp (third-party frames only; see that file), so an
#    invalid read/write, a use of uninitialised memory, a bad free or a
#    definite/indirect leak fails the example; "still reachable" and
#    "possibly lost" are reported but do not fail it;
#  - prints one line per run and "valgrind: N passed, M failed"; exits
#    non-zero if any run failed. Each run's full log is kept in
#    build-valgrind/valgrind-logs/.
#
# Needs Debian's `valgrind` package (apt-get install valgrind) besides the
# build dependencies of scripts/deps.sh. About 30 s on the 2-core machine,
# build included.
#
# Usage: scripts/valgrind-examples.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=$root/build-valgrind
logs=$build/valgrind-logs
if ! command -v valgrind >/dev/null 2>&1; then
  echo "valgrind-examples: valgrind is not installed (apt-get install valgrind)" >&2
  exit 2
fi
if [ "${1:-}" != "--no-build" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEB_WERROR=ON \
    -DEB_BUILD_TESTS=OFF -DEB_BUILD_BENCH=OFF -DEB_BUILD_EXAMPLES=ON >/dev/null
  cmake --build "$build" -j"$(nproc)" --target eventbus-demo order-fulfillment >/dev/null
fi
rm -rf "$logs"
mkdir -p "$logs"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
# run NAME COMMAND... : one example under memcheck.
run() {
  local name=$1
  shift
  local log=$logs/$name.log out=$logs/$name.out start end rc=0
  start=$(date +%s.%N)
  valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect --track-origins=yes --num-callers=30 \
    --suppressions="$root/tests/valgrind.supp" --log-file="$log" \
    "$@" >"$out" 2>&1 || rc=$?
  end=$(date +%s.%N)
  local errors
  errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log" | tail -n 1)
  local secs
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    printf 'valgrind: %-36s ok     (%s s, %s errors)\n' "$name" "$secs" "${errors:-?}"
  else
    failed=$((failed + 1))
    local why="exit $rc"
    [ "$rc" -eq 99 ] && why="memcheck errors"
    printf 'valgrind: %-36s FAILED (%s s, %s, %s errors; log %s)\n' "$name" "$secs" "$why" \
      "${errors:-?}" "${log#"$root"/}"
    # The first error and the leak summary, so CI logs show the cause.
    grep -m 1 -A 25 -E '^==[0-9]+== (Invalid|Conditional|Use of|Syscall|Mismatched|[0-9,]+ bytes in)' \
      "$log" | sed 's/^/    /' || true
    tail -n 5 "$out" | sed 's/^/    out: /'
  fi
}

ex=$build/examples
run eventbus-demo "$ex/eventbus-demo"
# The saga demo: in memory (its default 10,000 orders, with declined and
# lost payments, so timeouts and compensations run too), then with saga
# state and dead letters in a SQLite store (fewer orders: every transition
# is a SQLite write, slow under valgrind), then its usage text.
run order-fulfillment "$ex/order-fulfillment" --orders 10000 --workers 2
run order-fulfillment-store "$ex/order-fulfillment" --orders 2000 --workers 2 \
  --store "$tmp/orders.db"
run order-fulfillment-help "$ex/order-fulfillment" --help

echo "valgrind: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
