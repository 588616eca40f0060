#!/usr/bin/env bash
# tests/outside/run.sh — test eventbus the way a user gets it: installed.
#
# 1. configures and builds the project in a temporary directory (no tests,
#    benches or examples), 2. installs it with `cmake --install --prefix`,
# 3. compiles tests/outside/outside_test.c with nothing but
#    `cc -std=c11 $(pkg-config --cflags --libs eventbus)` and runs it,
# 4. builds tests/outside/cmake_consumer with find_package(eventbus 0.1) and
#    runs it.
#
# Usage:   tests/outside/run.sh
# Env:     EB_SANITIZER=none|address|thread|undefined  (passed to the build;
#                                the outside programs get the same -fsanitize)
#          JOBS=2                build parallelism (default 2)
#          KEEP=1                keep the temporary directory (kept anyway on failure)
#          OUTSIDE_TIMEOUT=900   seconds before the outside test is killed
#          TSAN_OPTIONS          default with EB_SANITIZER=thread:
#                                suppressions=tests/tsan.supp
# The last line is "run.sh: N passed, M failed"; the exit status is 0 only if
# every step passed.
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
san=${EB_SANITIZER:-none}
jobs=${JOBS:-2}
cc=${CC:-cc}
work=$(mktemp -d "${TMPDIR:-/tmp}/eventbus-outside.XXXXXX")
build=$work/build
prefix=$work/prefix
passed=0
failed=0

pass() { passed=$((passed + 1)); echo "run.sh: PASS $*"; }
fail() { failed=$((failed + 1)); echo "run.sh: FAIL $*"; }
finish() {
    if [ "$failed" -gt 0 ] || [ "${KEEP:-0}" = 1 ]; then
        echo "run.sh: kept $work"
    else
        rm -rf "$work"
    fi
    echo "run.sh: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
}
# Runs a command with its output in a log; shows the log's tail if it fails.
step() {
    local name=$1 log=$work/$1.log
    shift
    if "$@" >"$log" 2>&1; then
        pass "$name"
        return 0
    fi
    fail "$name (log: $log)"
    tail -n 40 "$log" | sed 's/^/    /'
    return 1
}

case $san in
none | "") san=none; sanflags="" ;;
address) sanflags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" ;;
undefined) sanflags="-fsanitize=undefined -fno-sanitize-recover=undefined" ;;
thread)
    sanflags="-fsanitize=thread -fno-omit-frame-pointer"
    # ck's inline-asm atomics are invisible to TSan: the suite's suppressions
    # cover only ck's own frames.
    export TSAN_OPTIONS="${TSAN_OPTIONS:-suppressions=$repo/tests/tsan.supp}"
    ;;
*) fail "EB_SANITIZER=$san: must be none, address, thread or undefined"; finish ;;
esac
echo "run.sh: repo $repo, work dir $work, sanitizer $san"

# --- build and install ------------------------------------------------------
step configure cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DEB_BUILD_TESTS=OFF -DEB_BUILD_BENCH=OFF -DEB_BUILD_EXAMPLES=OFF \
    -DEB_SANITIZER="$san" || finish
step build cmake --build "$build" --parallel "$jobs" || finish
step install cmake --install "$build" --prefix "$prefix" || finish

# GNUInstallDirs decides the libdir (lib, lib64, lib/x86_64-linux-gnu...).
pc=$(find "$prefix" -path '*/pkgconfig/eventbus.pc' | head -n 1)
if [ -z "$pc" ]; then
    fail "installed eventbus.pc not found under $prefix"
    finish
fi
pcdir=$(dirname "$pc")
libdir=$(dirname "$pcdir")
echo "run.sh: libdir $libdir"
missing=""
for f in "$prefix/include/eventbus/eventbus.h" "$libdir/libeventbus.so" "$libdir/libeventbus.a" \
    "$libdir/cmake/eventbus/eventbusConfig.cmake" \
    "$libdir/cmake/eventbus/eventbusConfigVersion.cmake"; do
    [ -e "$f" ] || missing="$missing ${f#"$prefix"/}"
done
if [ -z "$missing" ]; then pass "installed files"; else fail "installed files missing:$missing"; fi

# --- pkg-config ---------------------------------------------------------------
export PKG_CONFIG_PATH=$pcdir
hdr=$prefix/include/eventbus/eventbus.h
want_version=$(awk '/#define EB_VERSION_(MAJOR|MINOR|PATCH)/ { v = v (v == "" ? "" : ".") $3 }
                    END { print v }' "$hdr")
got_version=$(pkg-config --modversion eventbus 2>&1)
if [ "$got_version" = "$want_version" ]; then
    pass "pkg-config --modversion = $got_version"
else
    fail "pkg-config --modversion = '$got_version', header says $want_version"
fi

# The .pc file must describe where the library was installed, also when the
# prefix is chosen at install time (cmake --install --prefix).
pcvars=()
pc_prefix=$(pkg-config --variable=prefix eventbus)
# The file may name its prefix relative to itself (${pcfiledir}/../..).
pc_real=$(cd "$pc_prefix" 2>/dev/null && pwd -P)
if [ -n "$pc_real" ] && [ "$pc_real" = "$(cd "$prefix" && pwd -P)" ]; then
    pass "eventbus.pc prefix is the install prefix"
else
    fail "eventbus.pc says prefix=$pc_prefix but the library was installed to $prefix" \
        "(cmake --install --prefix is not honoured); continuing with" \
        "--define-variable=prefix=$prefix"
    pcvars=(--define-variable=prefix="$prefix")
fi
pcflags=$(pkg-config "${pcvars[@]}" --cflags --libs eventbus) || {
    fail "pkg-config --cflags --libs eventbus"
    finish
}
echo "run.sh: pkg-config flags: $pcflags"

# --- the outside test -------------------------------------------------------------
exe=$work/outside_test
# shellcheck disable=SC2086  # flags are meant to split
if step compile-outside-test $cc -std=c11 -g -O1 -Wall -Wextra $sanflags \
    "$here/outside_test.c" -o "$exe" $pcflags -pthread; then
    # The binary must resolve libeventbus from the install, not from elsewhere.
    resolved=$(LD_LIBRARY_PATH=$libdir ldd "$exe" | awk '/libeventbus/ { print $3 }')
    case $resolved in
    "$libdir"/*) pass "outside_test links $resolved" ;;
    *) fail "outside_test resolves libeventbus to '$resolved', not $libdir" ;;
    esac

    log=$work/outside_test.log
    echo "run.sh: running outside_test"
    LD_LIBRARY_PATH=$libdir timeout "${OUTSIDE_TIMEOUT:-900}" "$exe" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    last=$(tail -n 1 "$log")
    if [ "$rc" -eq 0 ] && echo "$last" | grep -Eq '^[0-9]+ passed, 0 failed$'; then
        pass "outside_test ($last)"
    else
        fail "outside_test exited $rc ($last)"
    fi
fi

# --- a CMake consumer using find_package(eventbus) ------------------------------
cbuild=$work/consumer
if step configure-cmake-consumer cmake -S "$here/cmake_consumer" -B "$cbuild" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_C_FLAGS="$sanflags" -DCMAKE_EXE_LINKER_FLAGS="$sanflags" &&
    step build-cmake-consumer cmake --build "$cbuild" --parallel "$jobs"; then
    for bin in consumer consumer_static; do
        # No LD_LIBRARY_PATH: the imported target's location gives the rpath.
        if out=$(timeout 120 "$cbuild/$bin" 2>&1); then
            pass "$bin: $out"
        else
            fail "$bin exited non-zero: $out"
        fi
    done
    resolved=$(ldd "$cbuild/consumer" | awk '/libeventbus/ { print $3 }')
    case $resolved in
    "$libdir"/*) pass "consumer links $resolved" ;;
    *) fail "consumer resolves libeventbus to '$resolved', not $libdir" ;;
    esac
fi

finish
