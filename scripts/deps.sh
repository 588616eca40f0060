#!/usr/bin/env bash
# Installs what building and testing eventbus needs, from Debian's packages.
# Idempotent: packages already present are not reinstalled. Run as root.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libck-dev libcriterion-dev libsqlite3-dev)
if [ "${EB_DEPS_RELIABILITY:-0}" = 1 ]; then
  # libFuzzer (tests/fuzz): clang and its runtimes (only recommended by
  # clang, and we install without recommends); llvm-symbolizer for traces;
  # valgrind for the examples' memcheck.
  pkgs+=(clang-14 libclang-rt-14-dev llvm-14 valgrind)
fi
if [ "${EB_DEPS_BENCH:-0}" = 1 ]; then
  pkgs+=(g++ libglib2.0-dev libzmq3-dev libconcurrentqueue-dev gnuplot-nox)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
