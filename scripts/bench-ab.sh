#!/usr/bin/env bash
# A/B comparison of two revisions with the benchmark harness, interleaved.
#
#   scripts/bench-ab.sh [-n ROUNDS] REV_A REV_B [eventbus-bench arguments]
#
# Builds eventbus-bench at each revision (git worktrees under build-ab/; the
# working tree itself when a revision is "WORKTREE") with the working tree's
# bench/ (so that only the library differs: the same harness measures both
# sides, and its options work for old revisions), then runs A, B, A, B,
# ... ROUNDS times (default 6) with the given arguments (default:
# --scenario throughput --only eventbus --runs 3) and prints, for every
# figure, the median over the rounds of each side's median and in how many
# rounds B beat A; and the same for the harness's in-run ratios ("X vs Y",
# > 1: X better), which is what the targets in bench/RESULTS.md are made of;
# then every figure again from single runs, split by the cross-core probe the
# harness takes before each run (the vCPUs near or far apart). Alternating matters on a shared machine: its load moves
# within minutes, and two sequential measurements can differ by 2x for the
# same code (bench/RESULTS.md). Example:
#
#   scripts/bench-ab.sh HEAD~1 WORKTREE --scenario durable --case memory --runs 3
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=6
if [ "${1:-}" = -n ]; then
  rounds=$2
  shift 2
fi
if [ $# -lt 2 ]; then
  sed -n '2,18p' "$0" >&2
  exit 64
fi
rev_a=$1 rev_b=$2
shift 2
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--scenario throughput --only eventbus --runs 3)
root=$PWD
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

build_rev() { # rev -> path of its eventbus-bench
  local rev=$1 src dir
  if [ "$rev" = WORKTREE ]; then
    src=$root
    dir=$root/build-ab/worktree
  else
    local sha
    sha=$(git rev-parse --short "$rev")
    src=$root/build-ab/src-$sha
    dir=$root/build-ab/build-$sha
    [ -d "$src" ] || git worktree add --detach "$src" "$sha" >/dev/null 2>&1
    rm -rf "$src/bench"
    cp -r "$root/bench" "$src/bench"
  fi
  cmake -S "$src" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DEB_BUILD_TESTS=OFF \
    -DEB_BUILD_EXAMPLES=OFF -DEB_BUILD_BENCH=ON >/dev/null
  cmake --build "$dir" -j"$(nproc)" --target eventbus-bench >/dev/null
  echo "$dir/bench/eventbus-bench"
}

echo "bench-ab: building $rev_a and $rev_b" >&2
bin_a=$(build_rev "$rev_a")
bin_b=$(build_rev "$rev_b")
for r in $(seq "$rounds"); do
  for side in a b; do
    bin=$bin_a
    [ $side = b ] && bin=$bin_b
    echo "bench-ab: round $r/$rounds, $side" >&2
    "$bin" "${args[@]}" --json "$out/$side-$r.json" >/dev/null 2>&1 ||
      echo "bench-ab: round $r $side failed (exit $?)" >&2
  done
done

python3 - "$out" "$rounds" "$rev_a" "$rev_b" <<'EOF'
import json, os, statistics, sys
out, rounds, rev_a, rev_b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def results():
    """(side, round, scenario, case) of every round's JSON that exists."""
    for side in 'ab':
        for r in range(1, rounds + 1):
            path = os.path.join(out, f'{side}-{r}.json')
            if not os.path.exists(path):
                continue
            for scn in json.load(open(path))['scenarios']:
                for case in scn['cases']:
                    yield side, r, scn, case


# (case, impl, metric) -> side -> [per-round medians]; and -> side -> every
# run's (value, cross-core probe taken just before it, xcore_ns).
figs, lower, runs = {}, {}, {}
for side, r, scn, case in results():
    for res in case['results']:
        if res.get('status') != 'ok':
            continue
        for m in case['metrics']:
            v = res['metrics'].get(m['name'])
            if v is None:
                continue
            k = (f"{scn['name']}/{case['name']}", res['impl'], m['name'])
            lower[k] = m['lower_better']
            figs.setdefault(k, {'a': {}, 'b': {}})[side][r] = v['median']
            for val, x in zip(v['values'], res.get('xcore_ns') or []):
                if x:
                    runs.setdefault(k, {'a': [], 'b': []})[side].append((val, x))
    # The harness's in-run ratios (what the targets are made of):
    # "impl vs other", > 1 means impl is better.
    for ra in case.get('ratios', []):
        k = (f"{scn['name']}/{case['name']}", f"{ra['impl']} vs {ra['vs']}",
             ra['metric'] + ' ratio')
        lower[k] = False
        figs.setdefault(k, {'a': {}, 'b': {}})[side][r] = ra['advantage']
print(f'A = {rev_a}, B = {rev_b}; {rounds} rounds, alternating')
print(f"{'figure':<100} {'A':>12} {'B':>12} {'B/A':>6}  B better")
for k in sorted(figs):
    a, b = figs[k]['a'], figs[k]['b']
    if not a or not b:
        continue
    ma, mb = statistics.median(a.values()), statistics.median(b.values())
    both = [r for r in a if r in b]
    wins = sum(1 for r in both if (b[r] < a[r] if lower[k] else b[r] > a[r]))
    name = f'{k[0]} {k[1]} {k[2]}'
    ratio = mb / ma if ma else float('nan')
    print(f'{name[:100]:<100} {ma:12.4g} {mb:12.4g} {ratio:6.2f}  {wins}/{len(both)}')

# The VM moves its vCPUs near and far apart, which moves every figure: the
# same figures again from the single runs of each kind alone.
probes = sorted(x for k in runs.values() for side in k.values() for _, x in side)
if probes:
    cut = 2.5 * probes[len(probes) // 10]
    print(f"\nBy vCPU placement: the cross-core probe before each run measured "
          f"{probes[0]:.0f}-{probes[-1]:.0f} ns (median {probes[len(probes) // 2]:.0f}); "
          f"near: at most {cut:.0f} ns (2.5 x its 10th percentile), far: above; "
          f"medians of single runs, (runs):")
    print(f"{'figure':<90} {'near A':>10} {'near B':>10} {'B/A':>5} {'far A':>10} {'far B':>10} {'B/A':>5}")
    for k in sorted(runs):
        cells = []
        for near in (True, False):
            va = [v for v, x in runs[k]['a'] if (x <= cut) == near]
            vb = [v for v, x in runs[k]['b'] if (x <= cut) == near]
            if va and vb:
                ma, mb = statistics.median(va), statistics.median(vb)
                cells += [f'{ma:.4g} ({len(va)})', f'{mb:.4g} ({len(vb)})',
                          f'{mb / ma:.2f}' if ma else 'nan']
            else:
                cells += ['—', '—', '—']
        name = f'{k[0]} {k[1]} {k[2]}'
        print(f'{name[:90]:<90} ' + ' '.join(f'{c:>10}' if i % 3 != 2 else f'{c:>5}'
                                           for i, c in enumerate(cells)))
EOF
