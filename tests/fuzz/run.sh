#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz in their own build directory and
# runs each one for a while: first on the inputs of tests/fuzz/regressions/
# (bugs found before: each must pass now), then fuzzing from a copy of the
# committed corpus (tests/fuzz/corpus/<name>), so a run never changes the
# repository. Installs nothing: it needs clang with libFuzzer's runtime (see
# scripts/deps.sh), cmake, and the library's own dependencies.
#
# Usage: tests/fuzz/run.sh [seconds-per-target]     (default 20)
# Environment:
#   EB_FUZZ_BUILD_DIR  build directory (default: build-fuzz under the repo root)
#   CC                 the clang to use (default: clang)
#   EB_FUZZ_ARGS       extra libFuzzer flags for the fuzzing runs
# Everything a run leaves — logs, the grown corpus, crash artifacts, the
# store fuzzer's temporary files — is under <build>/run/<target>/.
# The last line is "fuzz: N passed, M failed" (one per target); the exit
# status is non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

secs=${1:-20}
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
  echo "usage: $0 [seconds-per-target]" >&2
  exit 2
fi
build=${EB_FUZZ_BUILD_DIR:-$root/build-fuzz}
cc=${CC:-clang}
targets=(route store)

summary() { # passed failed
  echo "fuzz: $1 passed, $2 failed"
}

if ! command -v "$cc" >/dev/null 2>&1 || ! "$cc" --version 2>/dev/null | grep -qi clang; then
  echo "fuzz: '$cc' is not clang; libFuzzer needs clang and its runtime" \
    "(Debian: clang-14 libclang-rt-14-dev, see scripts/deps.sh)" >&2
  summary 0 "${#targets[@]}"
  exit 1
fi

echo "== fuzz: configure and build ($build) ==" >&2
mkdir -p "$build"
if ! cmake -S . -B "$build" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DEB_BUILD_FUZZ=ON -DEB_SANITIZER=address -DEB_WERROR=ON \
  -DEB_BUILD_TESTS=OFF -DEB_BUILD_EXAMPLES=OFF -DEB_BUILD_BENCH=OFF >"$build/configure.log" 2>&1 ||
  ! cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}" >"$build/build.log" 2>&1; then
  tail -n 30 "$build/configure.log" "$build/build.log" 2>/dev/null >&2 || true
  echo "fuzz: the build failed (logs in $build)" >&2
  summary 0 "${#targets[@]}"
  exit 1
fi

# UBSan is fatal already (-fno-sanitize-recover); ask it for a stack too.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
if ! command -v llvm-symbolizer >/dev/null 2>&1 && [ -x /usr/lib/llvm-14/bin/llvm-symbolizer ]; then
  export ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-14/bin/llvm-symbolizer
fi

passed=0
failed=0
for t in "${targets[@]}"; do
  bin=$build/tests/fuzz/fuzz_$t
  work=$build/run/$t
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts" "$work/tmp"
  if [ -d "tests/fuzz/corpus/$t" ]; then
    cp -r "tests/fuzz/corpus/$t/." "$work/corpus/"
  fi
  dict=()
  if [ -f "tests/fuzz/$t.dict" ]; then
    dict=(-dict="$root/tests/fuzz/$t.dict")
  fi
  # -timeout: an input that runs this long is reported as a hang;
  # -rss_limit_mb: the same for memory (also caps single allocations).
  common=(-timeout=25 -rss_limit_mb=2048 -artifact_prefix="$work/artifacts/")
  ok=1

  # 1. Every saved regression input must pass.
  regs=()
  if [ -d "tests/fuzz/regressions/$t" ]; then
    while IFS= read -r -d '' f; do regs+=("$f"); done \
      < <(find "tests/fuzz/regressions/$t" -type f ! -name '*.c' ! -name '*.md' -print0 | sort -z)
  fi
  if [ "${#regs[@]}" -gt 0 ]; then
    if ! TMPDIR=$work/tmp "$bin" "${common[@]}" "${regs[@]}" >"$work/regressions.log" 2>&1; then
      echo "fuzz_$t: a regression input fails again (see $work/regressions.log):" >&2
      grep -E "FAILED|MISMATCH|ERROR|Running:" "$work/regressions.log" | tail -n 8 >&2 || true
      ok=0
    fi
  fi

  # 2. Fuzz for $secs seconds from the committed corpus (one job: the
  #    machine may be shared).
  if [ $ok = 1 ]; then
    # shellcheck disable=SC2086 # EB_FUZZ_ARGS is a list of flags
    if TMPDIR=$work/tmp "$bin" "${common[@]}" "${dict[@]}" -max_total_time="$secs" \
      -print_final_stats=1 ${EB_FUZZ_ARGS:-} "$work/corpus" >"$work/fuzz.log" 2>&1; then
      stats=$(grep -E "^Done [0-9]+ runs" "$work/fuzz.log" | tail -n 1 || true)
      cov=$(grep -oE "cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*" "$work/fuzz.log" |
        tail -n 1 || true)
      echo "fuzz_$t: ok: $stats; $cov" >&2
    else
      echo "fuzz_$t: FAILED (log: $work/fuzz.log, artifacts: $work/artifacts/)" >&2
      grep -E "FAILED|MISMATCH|ERROR|SUMMARY|Test unit written" "$work/fuzz.log" | head -n 12 >&2 ||
        true
      ok=0
    fi
  fi
  if [ $ok = 1 ]; then
    passed=$((passed + 1))
    rm -rf "$work/tmp"
  else
    failed=$((failed + 1))
  fi
done

summary "$passed" "$failed"
[ "$failed" -eq 0 ]
