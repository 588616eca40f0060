#!/usr/bin/env python3
"""Render an eventbus-bench JSON file: bench/RESULTS.md and gnuplot plots.

    render.py RESULTS.json [--md bench/RESULTS.md] [--plots bench/results]

RESULTS.md is regenerated from the JSON, except the text between the
"notes:begin" and "notes:end" markers, which is carried over from the
existing file (that is where the reasons for missed targets are written).
With --plots, one PNG and one SVG per scenario are drawn with gnuplot into
the given directory (the data and scripts are kept next to them).
Standard library only.
"""
import argparse
import json
import copy
import os
import statistics
import re
import shutil
import subprocess
import sys

NOTES_BEGIN = "<!-- notes:begin -->"
NOTES_END = "<!-- notes:end -->"
DEFAULT_NOTES = ("_Why each missed target is missed, and what the design will do about it: "
                 "to be written by the lead engineer. This section is kept when the file is "
                 "regenerated._")


# ---- lookups -----------------------------------------------------------------

class Results:
    def __init__(self, data):
        self.data = data
        self.cases = {}
        for s in data.get("scenarios", []):
            for c in s["cases"]:
                self.cases[(s["name"], c["name"])] = c

    def result(self, scenario, case, impl):
        c = self.cases.get((scenario, case))
        if c is None:
            return None
        for r in c["results"]:
            if r["impl"] == impl:
                return r
        return None

    def median(self, scenario, case, impl, metric):
        r = self.result(scenario, case, impl)
        if r is None or r.get("status") != "ok":
            return None
        m = r.get("metrics", {}).get(metric)
        return None if m is None else m["median"]

    def status(self, scenario, case, impl):
        r = self.result(scenario, case, impl)
        if r is None:
            return "not run"
        if r["status"] == "ok":
            return "ok"
        return "%s (%s)" % (r["status"], r.get("error", ""))


# ---- formatting ------------------------------------------------------------------

def si(v):
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(v) >= div:
            return "%.2f%s" % (v / div, suffix)
    return "%.1f " % v


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "ns":
        if v >= 1e6:
            return "%.2f ms" % (v / 1e6)
        if v >= 1e3:
            return "%.2f µs" % (v / 1e3)
        return "%.0f ns" % v
    if unit.endswith("/s") and not unit.startswith("ms"):
        return si(v) + unit
    if unit in ("orders", "deliveries"):
        return "%.0f" % v
    if unit == "calls/event":
        if v == 0:
            return "0"
        return "%.1e" % v if v < 1e-4 else "%.4f" % v if v < 0.01 else "%.3f" % v
    return "%.3f %s" % (v, unit)


def fmt_cell(m, unit):
    """median [min – max], the range in the median's scale."""
    med = fmt(m["median"], unit)
    scale, digits = 1.0, 3
    if unit == "ns":
        if m["median"] >= 1e6:
            scale, digits = 1e6, 2
        elif m["median"] >= 1e3:
            scale, digits = 1e3, 2
        else:
            digits = 0
    elif unit.endswith("/s") and not unit.startswith("ms"):
        for div in (1e9, 1e6, 1e3):
            if abs(m["median"]) >= div:
                scale, digits = div, 2
                break
        else:
            digits = 1
    lo, hi = m["min"] / scale, m["max"] / scale
    return "%s [%.*f – %.*f]" % (med, digits, lo, digits, hi)


def fmt_ratio(r):
    if r >= 10:
        return "×%.1f" % r
    if r >= 0.1:
        return "×%.2f" % r
    return "×%.3f" % r


def md_escape(s):
    return s.replace("|", "\\|")


# ---- targets -------------------------------------------------------------------------

# Implementation names of scenario 10 (bench/durable.c spells them the same).
DUR_LAZY = "eventbus eb_publish DURABLE_LAZY + eb_store_flush"
DUR_LAZY_BATCH = "eventbus eb_publish_batch(64) DURABLE_LAZY + eb_store_flush"
DUR_RAW_BATCH = "raw SQLite, 1000 rows per transaction"
DUR_WAIT = "eventbus, 8 threads eb_publish(DURABLE)"
DUR_RAW_ROW = "raw SQLite, 1 row per transaction"
DUR_FSYNC = "write 4 KiB + fdatasync"
DUR_MEM_BUSY = "eventbus memory-only, store busy (lazy durable load, other thread)"
DUR_MEM_PACED = "eventbus memory-only, store busy (lazy durable load paced at 10k events/s)"
DUR_MEM_IDLE = "eventbus memory-only, same bus, store idle"
DUR_MEM_RAW = ("eventbus memory-only, store idle, raw SQLite inserts in another thread "
               "(CPU control)")

def target_rows(R):
    """Each row: (id, target, required, measured, verdict)."""
    rows = []

    def verdict_ge(ratio, need):
        if ratio is None:
            return "not measured"
        if ratio >= need:
            return "**met**"
        return "**missed** by ×%.2f (needs %.0f%% more)" % (need / ratio, (need / ratio - 1) * 100)

    def not_ok(scenario, case, impls):
        """The named figures a target compares that did not measure (failed,
        skipped, not run): a verdict without them would compare against
        whichever happened to pass."""
        return ["%s: %s" % (i, R.status(scenario, case, i)) for i in impls
                if R.status(scenario, case, i) != "ok"]

    def unless_missing(verdict, missing):
        if not missing:
            return verdict
        return "not measured (%s)" % "; ".join(missing)

    def verdict_le(ratio, limit):
        if ratio is None:
            return "not measured"
        if ratio <= limit:
            return "**met**"
        return "**missed** by ×%.2f (%.0f%% over)" % (ratio / limit, (ratio / limit - 1) * 100)

    # 1. throughput, 1 publisher.
    eb = R.median("throughput", "pub1", "eventbus", "events_per_s")
    peers = ["mutex+condvar", "GThreadPool", "GAsyncQueue", "ZeroMQ PUSH/PULL", "ZeroMQ PUB/SUB"]
    best, best_name = None, None
    for p in peers:
        v = R.median("throughput", "pub1", p, "events_per_s")
        if v is not None and (best is None or v > best):
            best, best_name = v, p
    ratio = eb / best if eb and best else None
    rows.append(("1a", "Scenario 1, 1 publisher: vs the best of the mutex+condvar queue, GLib "
                 "(GThreadPool, GAsyncQueue) and ZeroMQ (PUSH/PULL, PUB/SUB)", "≥ ×1.50",
                 "×%.2f (eventbus %s vs %s %s)" % (ratio, fmt(eb, "events/s"), best_name,
                                                  fmt(best, "events/s")) if ratio else "—",
                 unless_missing(verdict_ge(ratio, 1.5),
                                not_ok("throughput", "pub1", ["eventbus"] + peers))))
    ck = R.median("throughput", "pub1", "ck_ring mpmc", "events_per_s")
    ratio = eb / ck if eb and ck else None
    rows.append(("1b", "Scenario 1, 1 publisher: vs raw ck_ring MPMC, one event per operation",
                 "≥ ×2.00", "×%.2f (ck_ring %s)" % (ratio, fmt(ck, "events/s")) if ratio else "—",
                 unless_missing(verdict_ge(ratio, 2.0),
                                not_ok("throughput", "pub1", ["eventbus", "ck_ring mpmc"]))))
    one = R.median("throughput", "pub1", "eventbus, workers=1", "events_per_s")
    if one and best and ck:
        rows.append(("1", "For information: the same bus with workers=1 (not the default)",
                     "—", "%s: ×%.2f vs %s, ×%.2f vs ck_ring" % (fmt(one, "events/s"), one / best,
                                                                  best_name, one / ck), "—"))

    for case, n in (("pub2", 2), ("pub4", 4)):
        e = R.median("throughput", case, "eventbus", "events_per_s")
        bp, bn = None, None
        for p in peers:
            v = R.median("throughput", case, p, "events_per_s")
            if v is not None and (bp is None or v > bp):
                bp, bn = v, p
        if e and bp:
            rows.append(("1", "For information (no target): %d publishers, vs the best of the same "
                         "peers" % n, "—", "×%.2f (eventbus %s vs %s %s)" % (
                             e / bp, fmt(e, "events/s"), bn, fmt(bp, "events/s")), "—"))

    # 2. fan-out to 4.
    for case, ours, peer, label in (
            ("sub4_serial", "eventbus SERIAL", "mutex+condvar, 1 worker", "SERIAL"),
            ("sub4_concurrent", "eventbus CONCURRENT", "mutex+condvar, 1 worker per CPU",
             "CONCURRENT")):
        e = R.median("fanout", case, ours, "deliveries_per_s")
        m = R.median("fanout", case, peer, "deliveries_per_s")
        ratio = e / m if e and m else None
        rows.append(("2" + label[0].lower(), "Scenario 2, 4 %s subscribers: deliveries/s vs the "
                     "hand-written mutex+condvar fan-out (%s)" % (label, peer), "≥ ×1.50",
                     "×%.2f (%s vs %s)" % (ratio, fmt(e, "deliveries/s"), fmt(m, "deliveries/s"))
                     if ratio else "—", verdict_ge(ratio, 1.5)))

    # 3. round trip.
    e = R.median("roundtrip", "pub1", "eventbus", "p50_ns")
    s = R.median("roundtrip", "pub1", "spin ping-pong (floor)", "p50_ns")
    m = R.median("roundtrip", "pub1", "mutex+condvar", "p50_ns")
    ratio = e / s if e and s else None
    rows.append(("3a", "Scenario 3: p50 within 2.5× of the two-thread spin ping-pong floor",
                 "≤ ×2.50 of the floor",
                 "×%.2f (eventbus %s, floor %s)" % (ratio, fmt(e, "ns"), fmt(s, "ns"))
                 if ratio else "—", verdict_le(ratio, 2.5)))
    ratio = m / e if e and m else None
    rows.append(("3b", "Scenario 3: p50 at least 5× faster than the mutex+condvar round trip",
                 "≥ ×5.00", "×%.2f (mutex+condvar %s)" % (ratio, fmt(m, "ns")) if ratio else "—",
                 verdict_ge(ratio, 5.0)))
    p1 = R.median("roundtrip", "pub1", "eventbus", "p999_ns")
    p2 = R.median("roundtrip", "pub2", "eventbus", "p999_ns")
    rows.append(("3c", "Scenario 3: p99.9 reported", "reported",
                 "1 publisher %s, 2 publishers %s" % (fmt(p1, "ns"), fmt(p2, "ns")),
                 "**met**" if p1 is not None and p2 is not None else "not measured"))

    # 4. batch.
    e = R.median("batch", "batch64", "eventbus eb_publish_batch", "events_per_s")
    b = R.median("batch", "batch64", "moodycamel bulk", "events_per_s")
    ratio = e / b if e and b else None
    rows.append(("4", "Scenario 4: eb_publish_batch at least 50% of moodycamel's bulk "
                 "enqueue/dequeue", "≥ ×0.50",
                 "×%.2f (%s vs %s)" % (ratio, fmt(e, "events/s"), fmt(b, "events/s"))
                 if ratio else "—", verdict_ge(ratio, 0.5)))
    one = R.median("batch", "batch64", "eventbus eb_publish_batch, workers=1", "events_per_s")
    if one and b:
        rows.append(("4", "For information: the same with workers=1 (not the default)", "—",
                     "%s: ×%.2f vs moodycamel bulk" % (fmt(one, "events/s"), one / b), "—"))

    # 5. routing: flat within 10% (our reading of "must stay flat").
    for case in ("exact_1topic", "exact_16ktopics", "wildcard_1topic", "wildcard_16ktopics"):
        base = R.median("routing", case, "eventbus, 0 other subscriptions", "events_per_s")
        worst, worst_name = None, None
        named = ("eventbus, 0 other subscriptions", "eventbus, 1k non-matching",
                 "eventbus, 100k non-matching")
        for impl in named[1:]:
            v = R.median("routing", case, impl, "events_per_s")
            if v is not None and base:
                if worst is None or v / base < worst:
                    worst, worst_name = v / base, impl.split(", ")[1]
        rows.append(("5", "Scenario 5, %s: throughput with 1k and 100k non-matching "
                     "subscriptions vs none (flat: within 10%%)" % case.replace("_", ", "),
                     "≥ ×0.90", "×%.2f at %s" % (worst, worst_name) if worst else "—",
                     unless_missing(verdict_ge(worst, 0.9), not_ok("routing", case, named))))

    # 7. allocations.
    c = R.cases.get(("allocs", "steady"))
    if c is not None:
        for r in c["results"]:
            if r["role"] != "ours":
                continue
            v = R.median("allocs", "steady", r["impl"], "allocs_per_event")
            mx = None if v is None else r["metrics"]["allocs_per_event"]["max"]
            if v is None:
                verdict = "not measured" if r["status"] != "failed" else "**FAILED**"
            elif v == 0 and mx == 0:
                verdict = "**met**"
            elif v == 0:
                verdict = "met in most runs (median 0; worst run %s per event)" % fmt(mx, "calls/event")
            elif v < 1:
                verdict = "**missed**: one call per %.0f events" % (1 / v)
            else:
                verdict = "**missed**: %.3f calls per event" % v
            measured = "—" if v is None else "median %s [%s – %s]" % (
                fmt(v, "calls/event"), fmt(r["metrics"]["allocs_per_event"]["min"], "calls/event"),
                fmt(mx, "calls/event"))
            rows.append(("7", "Scenario 7: malloc-family calls per event in steady state, %s"
                         % r["impl"], "0", measured, verdict))

    # 8. idle.
    e = R.median("idle", "idle5s", "eventbus (default config, 1 subscription)", "cpu_ms_per_s")
    case = "idle5s"
    if e is None:
        case = "idle1s"
        e = R.median("idle", case, "eventbus (default config, 1 subscription)", "cpu_ms_per_s")
    b = R.median("idle", case, "no bus (the process alone)", "cpu_ms_per_s")
    extra = e - b if e is not None and b is not None else None
    rows.append(("8", "Scenario 8: CPU used by an idle bus (\"~0\": at most 1 ms of CPU per "
                 "second, 0.1% of a core, above the process alone)", "≤ 1 ms/s",
                 "%.3f ms/s (bus %.3f, process alone %.3f)" % (extra, e, b)
                 if extra is not None else "—",
                 "not measured" if extra is None else "**met**" if extra <= 1.0
                 else "**missed** by ×%.2f" % extra))

    # 10. durable publishing (the durable sink's targets).
    raw_b = R.median("durable", "lazy", DUR_RAW_BATCH, "events_per_s")
    for rid, impl, label in (("10a", DUR_LAZY, "eb_publish"),
                             ("10b", DUR_LAZY_BATCH, "eb_publish_batch (64 per call)")):
        e = R.median("durable", "lazy", impl, "events_per_s")
        ratio = e / raw_b if e and raw_b else None
        rows.append((rid, "Scenario 10, fire and forget: %s with EB_PUBLISH_DURABLE_LAZY, then "
                     "eb_store_flush, end to end (committed and delivered), at least 50%% of raw "
                     "SQLite inserting the same rows 1000 per transaction (same table, pragmas "
                     "and prepared statements, synchronous=FULL)" % label, "≥ ×0.50",
                     "×%.2f (%s vs raw %s)" % (ratio, fmt(e, "events/s"), fmt(raw_b, "events/s"))
                     if ratio else "—", verdict_ge(ratio, 0.5)))
    e = R.median("durable", "wait8", DUR_WAIT, "events_per_s")
    raw_r = R.median("durable", "wait8", DUR_RAW_ROW, "events_per_s")
    ratio = e / raw_r if e and raw_r else None
    per = R.median("durable", "wait8", DUR_WAIT, "events_per_commit")
    rows.append(("10c", "Scenario 10, 8 threads each publishing with EB_PUBLISH_DURABLE and "
                 "waiting: aggregate events/s at least 4× raw SQLite's one row per transaction "
                 "(group commit at work)", "≥ ×4.00",
                 "×%.2f (%s vs %s commits/s%s)" % (
                     ratio, fmt(e, "events/s"), si(raw_r),
                     "; %.1f events per commit" % per if per else "") if ratio else "—",
                 verdict_ge(ratio, 4.0)))
    p50 = R.median("durable", "wait8", DUR_WAIT, "p50_ns")
    fs = R.median("durable", "wait8", DUR_FSYNC, "p50_ns")
    bound = 2 * fs + 100e3 if fs else None
    ratio = p50 / bound if p50 and bound else None
    rows.append(("10d", "Scenario 10, the same 8 waiting publishers: p50 of the publish call at "
                 "most 2× the p50 of a raw write(4 KiB) + fdatasync in the same directory, "
                 "plus 100 µs", "≤ 2 × fdatasync p50 + 100 µs",
                 "p50 %s, bound %s = 2 × %s + 100 µs (×%.2f of the bound)" % (
                     fmt(p50, "ns"), fmt(bound, "ns"), fmt(fs, "ns"), ratio) if ratio else "—",
                 verdict_le(ratio, 1.0)))
    busy = R.median("durable", "memory", DUR_MEM_BUSY, "events_per_s")
    idle = R.median("durable", "memory", DUR_MEM_IDLE, "events_per_s")
    load = R.median("durable", "memory", DUR_MEM_BUSY, "durable_per_s")
    ratio = busy / idle if busy and idle else None
    ctl = R.median("durable", "memory", DUR_MEM_RAW, "events_per_s")
    ctl_text = ("; control, the store idle and raw SQLite inserting in another thread: ×%.2f"
                % (ctl / idle)) if ctl and idle else ""
    rows.append(("10e", "Scenario 10: memory-only publishing on a bus whose store is busy (a lazy "
                 "durable load from another thread) not slower than with the store idle (\"not "
                 "slower\": within 10%)", "≥ ×0.90",
                 "×%.2f (%s busy, while the store committed %s durable events/s; %s idle%s)" % (
                     ratio, fmt(busy, "events/s"), si(load) if load else "0 ",
                     fmt(idle, "events/s"), ctl_text) if ratio else "—",
                 verdict_ge(ratio, 0.9)))
    paced = R.median("durable", "memory", DUR_MEM_PACED, "events_per_s")
    if paced and idle:
        rows.append(("10", "For information: the same with the durable load paced at 10k events/s "
                     "(the store keeps committing, the CPUs are not saturated)", "—",
                     "×%.2f (%s)" % (paced / idle, fmt(paced, "events/s")), "—"))
    return rows


# ---- RESULTS.md ---------------------------------------------------------------------------

def old_notes(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return DEFAULT_NOTES
    m = re.search(re.escape(NOTES_BEGIN) + r"\n?(.*?)\n?" + re.escape(NOTES_END), text, re.S)
    return m.group(1).strip() if m else DEFAULT_NOTES


def label(m):
    name = m["name"]
    if name.endswith("_ns"):
        return name[:-3].replace("p999", "p99.9")
    return name.replace("_per_", "/").replace("_", " ")


def case_table(case):
    metrics = case["metrics"]
    ours = [r for r in case["results"] if r["role"] == "ours" and r["status"] == "ok"]
    head = ["implementation"]
    for m in metrics:
        head.append("%s: median [min – max]" % label(m))
    comp = [m for m in metrics if not m["info"]]
    for m in comp:
        head.append("eventbus advantage (%s)" % label(m))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ratios = {}
    for r in case.get("ratios", []):
        ratios[(r["impl"], r["vs"], r["metric"])] = r["advantage"]
    for r in case["results"]:
        name = md_escape(r["impl"])
        if r["role"] == "ours":
            name = "**%s**" % name
        elif r["role"] == "baseline":
            name = "%s _(reference)_" % name
        cells = [name]
        if r["status"] != "ok":
            msg = "**FAILED**: " if r["status"] == "failed" else r["status"] + ": "
            cells.append(msg + md_escape(r.get("error", "")))
            cells += [""] * (len(head) - 2)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        for m in metrics:
            cells.append(fmt_cell(r["metrics"][m["name"]], m["unit"]))
        for m in comp:
            if r["role"] == "ours":
                cells.append("—")
                continue
            parts = []
            for o in ours:
                a = ratios.get((o["impl"], r["impl"], m["name"]))
                if a is None:
                    continue
                parts.append(fmt_ratio(a) if len(ours) == 1
                             else "%s %s" % (md_escape(o["impl"]), fmt_ratio(a)))
            cells.append(", ".join(parts) if parts else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def xcore_values(case):
    """(impl, [ns...]) of the cross-core probes taken before each run."""
    return [(r["impl"], [v for v in r.get("xcore_ns", []) if v])
            for r in case["results"] if r.get("xcore_ns")]


def xcore_line(case):
    per = [(name, v) for name, v in xcore_values(case) if v]
    if not per:
        return ""
    parts = []
    for name, v in per:
        v = sorted(v)
        parts.append("%s %.0f [%.0f – %.0f]" % (md_escape(name), v[len(v) // 2], v[0], v[-1]))
    return ("_Cross-core round trip (ns) measured just before each run, median [min – max]: "
            + "; ".join(parts) + "._\n")


def cut_runs(case):
    """(impl, cut, runs) of the implementations some of whose runs the time limit cut short."""
    return [(r["impl"], sum(1 for c in r["cut"] if c), len(r["cut"]))
            for r in case["results"] if any(r.get("cut", []))]


def cut_line(case):
    per = cut_runs(case)
    if not per:
        return ""
    return ("_Cut short by the time limit (the figure comes from the work done before it): " + "; ".join("%s %d of %d runs" % (md_escape(n), k, t) for n, k, t in per)
            + "._\n")


def cut_summary(data):
    """One line: which figures rest on runs the time limit cut short."""
    cases = [c for s in data.get("scenarios", []) for c in s["cases"]
             if any("cut" in r for r in c["results"])]
    if not cases:
        return ""
    per = ["%s/%s %s (%d of %d)" % (s["name"], c["name"], md_escape(n), k, t)
           for s in data.get("scenarios", []) for c in s["cases"] for n, k, t in cut_runs(c)]
    return ("- Runs cut short by their time limit (10 s a phase in full mode, 1.5 s with "
            "--quick): %s." % ("; ".join(per) if per else "none"))


def xcore_summary(data):
    allv = sorted(v for s in data.get("scenarios", []) for c in s["cases"]
                  for _, vals in xcore_values(c) for v in vals)
    if not allv:
        return None
    med = allv[len(allv) // 2]
    cut = 2.5 * allv[len(allv) // 10]
    slow = sum(1 for v in allv if v > cut)
    return ("- Cross-core round trip, measured just before every run (two threads pinned to "
            "CPUs 0 and 1 pass a value back and forth on two cache lines; `bn_xcore_rtt_ns`): "
            "median %.0f ns, min %.0f, max %.0f over %d runs; %d run(s) started with the "
            "vCPUs far apart (above %.0f ns, 2.5× the 10th percentile). The VM's vCPUs move "
            "between host cores, and a run taken while they are far apart pays more for every "
            "cache-line hand-off (each case lists its own probes)."
            % (med, allv[0], allv[-1], len(allv), slow, cut))


def xcore_cut(data):
    """Probes above this are 'far': 2.5x the run's 10th percentile (the
    nearest placement the run saw, with a margin)."""
    allv = sorted(v for s in data.get("scenarios", []) for c in s["cases"]
                  for _, vals in xcore_values(c) for v in vals)
    return 2.5 * allv[len(allv) // 10] if allv else None


def placement_subset(data, keep):
    """A copy of data whose figures are recomputed from the runs whose
    cross-core probe satisfies keep(ns); results left without runs are
    'not run'."""
    out = copy.deepcopy(data)
    for s in out.get("scenarios", []):
        for c in s["cases"]:
            for r in c["results"]:
                xs = r.get("xcore_ns")
                if r.get("status") != "ok" or not xs or "metrics" not in r:
                    continue
                idx = [i for i, v in enumerate(xs) if v and keep(v)]
                if not idx:
                    r["status"] = "not run"
                    continue
                for m in r["metrics"].values():
                    vals = sorted(m["values"][i] for i in idx if i < len(m["values"]))
                    if not vals:
                        continue
                    m["median"] = statistics.median(vals)
                    m["min"], m["max"] = vals[0], vals[-1]
    return out


def placement_rows(data):
    """Rows (id, required, all runs, near, far) of the ratio targets, from the
    runs taken with the vCPUs near (probe <= xcore_cut) or far."""
    cut = xcore_cut(data)
    if cut is None:
        return []
    sets = [target_rows(Results(data)),
            target_rows(Results(placement_subset(data, lambda v: v <= cut))),
            target_rows(Results(placement_subset(data, lambda v: v > cut)))]
    keyed = [{(r[0], r[1]): r for r in rs} for rs in sets]
    rows = []
    for row in sets[0]:
        if not str(row[3]).startswith("×") or row[2] == "—":
            continue
        cells = []
        for k in keyed:
            r = k.get((row[0], row[1]))
            m = str(r[3]) if r else "—"
            cells.append(m.split(" ")[0] if m.startswith("×") else "—")
        rows.append((row[0], row[2], *cells))
    return rows


SAGA_TEXT = (
    "An order-fulfillment workload after `examples/order_fulfillment.c` (its saga and aggregates "
    "copied into `bench/saga.c`): per order, the order saga reserves stock on the inventory "
    "aggregate of its SKU (32 SKUs), charges the payment aggregate of the order and ships, or, "
    "for the 20% of payments that are declined, releases the reservation (compensation). Each "
    "run uses a fresh bus with the default workers (one per CPU; intake 65536, mailboxes 1023, "
    "as in the example), places orders in batches of 64 with at most 2000 open, after an "
    "untimed warm-up of a tenth as many. A transition is one saved saga step: 4 per completed "
    "or compensated order, 2 per order rejected for lack of stock. Every order still schedules "
    "its payment timeout, but no payment goes unanswered, so no timeout fires during a run. "
    "Checked in every run: each order reached exactly one final state, stock balances to the "
    "unit, payments balance, and the saga saved exactly the transitions the outcomes imply; a "
    "failed check makes the figure FAILED. Two stores: the saga's private in-memory store, and "
    "the SQLite saga store (`eb_saga_sqlite_store_create`) on a fresh file per run with the "
    "default pragmas (WAL, synchronous FULL), also attached to the bus; every SQLite save "
    "waits for its group commit, so that row runs fewer orders and is bound by commit latency "
    "× concurrent transitions. There is no peer: the figures are absolute.")


DURABLE_TEXT = (
    "Durable publishing through the SQLite store (`bench/durable.c`), opened with "
    "`EB_STORE_SYNC_FULL` on a fresh file per run in a new directory under `$TMPDIR` (else "
    "`/tmp`, on the same disk as the repository), next to what the disk and SQLite do on their "
    "own, interleaved round by round in the same run. The raw peers use the store's row shape "
    "and pragmas: `journal_mode=WAL`, `synchronous=FULL`, the `eb_events` table, one prepared "
    "`INSERT` reused and prepared `BEGIN IMMEDIATE` / `COMMIT`, 16-byte time-ordered ids, "
    "200-byte payloads, topic `orders.created`, no key, correlation or causation. A raw row "
    "counts as an event. *lazy*: one publisher, fire and forget with "
    "`EB_PUBLISH_DURABLE_LAZY`, then `eb_store_flush`; the clock stops once the flush returned "
    "and the subscriber saw every event. *wait8*: 8 threads each call `eb_publish` with "
    "`EB_PUBLISH_DURABLE` (it returns after its commit); latencies are of that call. The raw "
    "fsync is `pwrite` of 4 KiB plus `fdatasync`, cycling over a 1 MiB file written and synced "
    "beforehand. *memory*: one bus and store for the whole case; the busy runs have another "
    "thread publishing lazily to the store (as *lazy*, or paced at 10k events/s) while the memory-only events are "
    "timed; a control run has raw SQLite inserting 1000 rows per transaction into another file "
    "instead, the store idle (the same kind of CPU work without the store: on 2 cores, what "
    "the load costs the memory path through the CPUs alone). Checked in every run: every durable event was delivered once, with a log sequence, "
    "in log order; the store appended each event once and no transaction failed; the raw "
    "tables hold exactly the rows inserted (read back with a checksum of the payloads); the "
    "fsync file holds the blocks written last.")


def saga_table(case):
    """The saga case: absolute figures, one row per store."""
    lines = ["| saga store | transitions/s: median [min – max] | orders/s: median [min – max] | "
             "timed orders | completed / compensated / rejected | retried deliveries |",
             "|---|---|---|---|---|---|"]
    for r in case["results"]:
        name = md_escape(r["impl"])
        if r["status"] != "ok":
            msg = "**FAILED**: " if r["status"] == "failed" else r["status"] + ": "
            lines.append("| %s | %s%s | | | | |" % (name, msg, md_escape(r.get("error", ""))))
            continue
        m = r["metrics"]
        orders = m["orders"]["median"]
        comp, rej = m["compensated"]["median"], m["rejected"]["median"]
        lines.append("| **%s** | %s | %s | %s | %s / %s / %s | %s |" % (
            name, fmt_cell(m["transitions_per_s"], "transitions/s"),
            fmt_cell(m["orders_per_s"], "orders/s"), fmt(orders, "orders"),
            fmt(orders - comp - rej, "orders"), fmt(comp, "orders"), fmt(rej, "orders"),
            fmt(m["retries"]["max"], "deliveries") + (" (max)" if r["runs"] > 1 else "")))
    return "\n".join(lines)


def write_md(data, json_name, md_path, plots_rel):
    R = Results(data)
    notes = old_notes(md_path)
    mach = data.get("machine", {})
    ver = data.get("versions", {})
    out = []
    out.append("# eventbus benchmark results\n")
    out.append("_Generated by `bench/render.py` from `%s` — regenerate with `bench/run.sh`; only "
               "the notes section below is kept across regenerations._\n" % json_name)
    out.append("- Run: %s, %s mode, %d run(s) per figure (median and min – max reported), "
               "%.0f s%s." % (data.get("date"), data.get("mode"), data.get("runs", 0),
                               data.get("elapsed_s", 0),
                               ", revision `%s`" % data["note"] if data.get("note") else ""))
    out.append("- Machine: %s CPUs, %s, %s; load average (1/5/15 min) %s at the start, %s at "
               "the end (the machine is shared)." % (
                   mach.get("nproc"), mach.get("cpu"), mach.get("kernel"),
                   " / ".join("%.2f" % x for x in mach.get("loadavg_start", [])),
                   " / ".join("%.2f" % x for x in mach.get("loadavg_end", []))))
    out.append("- Versions: eventbus %s; %s; GLib %s; ZeroMQ %s; Concurrency Kit %s; moodycamel "
               "ConcurrentQueue %s; SQLite %s." % (ver.get("eventbus"), ver.get("compiler"),
                                                   ver.get("glib") or "—", ver.get("zeromq") or "—",
                                                   ver.get("ck") or "—", ver.get("moodycamel") or "—",
                                                   ver.get("sqlite") or "—"))
    xs = xcore_summary(data)
    if xs:
        out.append(xs)
    cs = cut_summary(data)
    if cs:
        out.append(cs)
    out.append("- Every run checks that each observer received every event exactly once (count "
               "and checksum of the payloads: every word up to 256 B, one word per cache line "
               "above), in each producer's order where delivery is ordered; a run that fails its check is reported as FAILED, never as a number, and "
               "a target whose figures did not all measure says \"not measured\".")
    out.append("- Ratios (\"eventbus advantage\") are computed from the medians of the same run: "
               "> 1 means eventbus is better (more throughput, less latency or cost).\n")
    if not data.get("complete", True):
        out.append("**The run did not complete:** %s\n" % data.get("fatal"))
    fails = data.get("failures", [])
    if fails:
        out.append("**Failed correctness checks (%d):**\n" % len(fails))
        for f in fails:
            out.append("- %s" % f)
        out.append("")

    out.append("## Targets\n")
    out.append("Each target is a ratio measured in this run: 1–8 from issue 3, 10 from the "
               "durable sink's issue. Where an issue leaves room for reading, the reading is "
               "stated in the target.\n")
    out.append("| # | target | required | measured | verdict |")
    out.append("|---|---|---|---|---|")
    for row in target_rows(R):
        out.append("| " + " | ".join(md_escape(str(x)) for x in row) + " |")
    out.append("")
    prow = placement_rows(data)
    if prow:
        out.append("**The ratio targets by vCPU placement** (for information; the verdicts above "
                   "use every run). Before each run the harness measured the cross-core round "
                   "trip (see the machine line at the top); here each figure is recomputed from "
                   "only the runs taken with the vCPUs near (the probe at most 2.5× its 10th "
                   "percentile over the whole run) or far apart (above that). Each side of a ratio keeps "
                   "its own runs of that kind, so a column may rest on one or two runs, and "
                   "\"—\" means a side had none.\n")
        out.append("| # | required | all runs | near | far |")
        out.append("|---|---|---|---|---|")
        for row in prow:
            out.append("| " + " | ".join(md_escape(str(x)) for x in row) + " |")
        out.append("")
    out.append("## Why targets are missed\n")
    out.append(NOTES_BEGIN)
    out.append(notes)
    out.append(NOTES_END)
    out.append("")

    out.append("## All figures\n")
    for s in data.get("scenarios", []):
        out.append("### %s\n" % s["title"])
        if plots_rel:
            out.append("![%s](%s/%s.png) ([SVG](%s/%s.svg))\n" % (s["name"], plots_rel, s["name"],
                                                                 plots_rel, s["name"]))
        if s["name"] == "saga":
            out.append(SAGA_TEXT + "\n")
        if s["name"] == "durable":
            out.append(DURABLE_TEXT + "\n")
        for c in s["cases"]:
            out.append("**%s** — %s\n" % (c["name"], md_escape(c["title"])))
            out.append(saga_table(c) if s["name"] == "saga" else case_table(c))
            out.append("")
            xl = xcore_line(c)
            if xl:
                out.append(xl)
            cl = cut_line(c)
            if cl:
                out.append(cl)
    out.append("## How to run\n")
    out.append("```sh\nEB_DEPS_BENCH=1 scripts/deps.sh      # g++ libglib2.0-dev libzmq3-dev "
               "libconcurrentqueue-dev gnuplot-nox\n"
               "bench/run.sh                          # full suite: results/<date>.json, plots, "
               "this file\n"
               "bench/run.sh --quick                  # CI smoke test (< 60 s, checks only)\n"
               "build-bench/bench/eventbus-bench --scenario roundtrip --runs 3   # one scenario\n"
               "scripts/bench-ab.sh HEAD~1 WORKTREE --scenario fanout --runs 3  # A/B, alternating\n"
               "```\n")
    with open(md_path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    os.replace(md_path + ".tmp", md_path)


# ---- plots ----------------------------------------------------------------------------------

COLORS = {"ours": "#1f77b4", "peer": "#999999", "baseline": "#2ca02c"}


def gp_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def plot_scenario(s, outdir):
    """One multiplot per scenario, a panel per case: bars of the first metric
    (median, with the min-max range as an error bar), or for latencies
    clustered p50 / p99 / p99.9 bars. A log scale is used when the values of
    a panel span more than 30x."""
    cases = [c for c in s["cases"] if any(r["status"] == "ok" for r in c["results"])]
    if not cases:
        return None
    name = s["name"]
    datafile = os.path.join(outdir, "%s.tsv" % name)
    blocks = []
    for c in cases:
        m = c["metrics"][0]
        latency = m["unit"] == "ns"
        rows, values = [], []
        for r in c["results"]:
            if r["status"] != "ok":
                continue
            color = {"ours": 1, "peer": 2, "baseline": 3}[r["role"]]
            impl = r["impl"].replace("\t", " ")
            if latency:
                vals = [r["metrics"][k]["median"] / 1e3 for k in ("p50_ns", "p99_ns", "p999_ns")
                        if k in r["metrics"]]
                rows.append(impl + "".join("\t%g" % v for v in vals))
                values += vals
                unit = "µs (median of runs)"
                continue
            v = r["metrics"][m["name"]]
            scale, unit = 1.0, m["unit"]
            if m["unit"].endswith("/s") and not m["unit"].startswith("ms"):
                scale, unit = 1e-6, "M" + m["unit"]
            rows.append("%s\t%g\t%g\t%g\t%d" % (impl, v["median"] * scale, v["min"] * scale,
                                                 v["max"] * scale, color))
            values.append(v["median"] * scale)
        positive = [v for v in values if v > 0]
        log = (len(positive) == len(values) and positive and
               max(positive) / min(positive) > 30)
        blocks.append((c, m, unit, rows, latency, log))
    with open(datafile, "w", encoding="utf-8") as f:
        for i, b in enumerate(blocks):
            if i:
                f.write("\n\n")
            f.write("\n".join(b[3]) + "\n")
    n = len(blocks)
    cols = min(n, 2) if n > 1 else 1
    rows_n = (n + cols - 1) // cols
    width, height = (640 * cols if cols > 1 else 900), 460 * rows_n
    script = os.path.join(outdir, "%s.gp" % name)
    with open(script, "w", encoding="utf-8") as f:
        f.write("# generated by bench/render.py\n")
        f.write('set datafile separator "\\t"\n')
        f.write("set style fill solid 0.8 border -1\nset grid ytics\n")
        f.write("set xtics rotate by -35 left font \",8\" nomirror\n")
        f.write("set linetype 1 lc rgb '%s'\nset linetype 2 lc rgb '%s'\nset linetype 3 lc rgb '%s'\n"
                % (COLORS["ours"], COLORS["peer"], COLORS["baseline"]))
        f.write("set bmargin 9\nset rmargin 10\n")
        for term, ext in (("pngcairo noenhanced size %d,%d font \",9\"" % (width, height), "png"),
                          ("svg noenhanced size %d,%d dynamic font \"sans,9\"" % (width, height),
                           "svg")):
            f.write("set terminal %s\n" % term)
            f.write("set output %s\n" % gp_str(os.path.join(outdir, "%s.%s" % (name, ext))))
            f.write("set multiplot layout %d,%d title %s\n" % (rows_n, cols, gp_str(s["title"])))
            for i, (c, m, unit, _, latency, log) in enumerate(blocks):
                better = "lower" if m["lower_better"] else "higher"
                f.write("set title %s\n" % gp_str("%s: %s" % (c["name"], c["title"][:70 if cols > 1 else 110])))
                f.write("set ylabel %s\n" % gp_str("%s, %s is better%s" % (
                    unit, better, " (log scale)" if log else "")))
                if log:
                    f.write("set logscale y\nset yrange [*:*]\n")
                else:
                    f.write("unset logscale y\nset yrange [0:*]\n")
                if latency:
                    f.write("set key top left\nset style data histogram\n"
                            "set style histogram cluster gap 1\nset boxwidth 0.9 relative\n")
                    f.write("plot %s index %d using 2:xtic(1) title 'p50', '' index %d using 3 "
                            "title 'p99', '' index %d using 4 title 'p99.9'\n"
                            % (gp_str(datafile), i, i, i))
                    f.write("set style data points\n")
                else:
                    f.write("set key off\nset boxwidth 0.7 absolute\n")
                    f.write("plot %s index %d using 0:2:5:xtic(1) with boxes lc variable, "
                            "'' index %d using 0:2:3:4 with yerrorbars lc rgb 'black' pt 0\n"
                            % (gp_str(datafile), i, i))
            f.write("unset multiplot\nset output\n")
    return script


def make_plots(data, outdir):
    if shutil.which("gnuplot") is None:
        print("render.py: gnuplot not found: no plots (apt-get install gnuplot-nox)",
              file=sys.stderr)
        return False
    os.makedirs(outdir, exist_ok=True)
    ok = True
    for s in data.get("scenarios", []):
        script = plot_scenario(s, outdir)
        if script is None:
            continue
        r = subprocess.run(["gnuplot", script], capture_output=True, text=True)
        if r.returncode != 0:
            ok = False
            print("render.py: gnuplot failed on %s:\n%s" % (script, r.stderr), file=sys.stderr)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--md", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "RESULTS.md"))
    ap.add_argument("--plots", help="directory for the PNG/SVG plots")
    args = ap.parse_args()
    with open(args.json, encoding="utf-8") as f:
        data = json.load(f)
    plots_rel = None
    ok = True
    plots_dir = args.plots
    if args.plots:
        ok = make_plots(data, args.plots)
    else:
        # Re-rendering (e.g. after editing the notes) keeps the links to the
        # plots already drawn for this JSON next to it (none older than it).
        jdir = os.path.dirname(os.path.abspath(args.json))
        pngs = [os.path.join(jdir, s["name"] + ".png") for s in data.get("scenarios", [])]
        if pngs and all(os.path.exists(p) and os.path.getmtime(p) >= os.path.getmtime(args.json)
                        for p in pngs):
            plots_dir = jdir
    if plots_dir:
        plots_rel = os.path.relpath(os.path.abspath(plots_dir),
                                    os.path.dirname(os.path.abspath(args.md)))
    json_rel = os.path.relpath(os.path.abspath(args.json), os.path.dirname(os.path.abspath(args.md)))
    write_md(data, json_rel, args.md, plots_rel)
    print("render.py: wrote %s%s" % (args.md, " and plots in %s" % args.plots if args.plots else ""),
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
