/*
 * harness.h — scenarios, cases and the figures they produce (C only).
 *
 * A scenario (e.g. "throughput") has cases (e.g. "pub1": one publisher);
 * a case has implementations (eventbus and its peers) and metrics. The
 * runner in main.c runs every implementation of a case once per round,
 * interleaved (round 1: A B C, round 2: A B C, ...) so that a change of
 * machine load hits all of them alike; it then reports, per metric, the
 * median and min-max over the rounds, and every "ours" implementation's
 * ratio against each other one.
 */
#ifndef EB_BENCH_HARNESS_H
#define EB_BENCH_HARNESS_H

#include "bench.h"

#define BN_MAX_METRICS 6
#define BN_MAX_IMPLS 16
#define BN_MAX_RUNS 50

enum bn_role {
    BN_OURS,    /* an eventbus figure: gets ratios against the others */
    BN_PEER,    /* a peer library or hand-written equivalent */
    BN_BASELINE /* a reference point that is neither (e.g. 0 subscriptions) */
};

struct bn_metric {
    const char *name; /* JSON key, e.g. "events_per_s" */
    const char *unit; /* "events/s", "ns", ... */
    int lower_better;
    int info; /* reported, but no ratio */
};

struct bn_sample {
    int ok;
    int cut; /* the run's time limit stopped it early: a figure from part of it */
    char err[BN_ERR_LEN];
    double v[BN_MAX_METRICS];
};

struct bn_impl;
typedef void (*bn_run_fn)(const struct bn_impl *im, struct bn_sample *out);

/* Scenario 10 (durable.c): one run of a durable or raw-disk figure. */
struct durable_cfg {
    unsigned threads;   /* publishing threads */
    uint64_t warm;      /* per thread, untimed */
    uint64_t events;    /* per thread, timed */
    unsigned batch;     /* events per eb_publish_batch call; 0: eb_publish */
    int load;           /* memory case: what keeps the store busy (durable.c) */
    uint64_t load_rate; /* memory case: paced load, events/s (0: as fast as it goes) */
    uint64_t max_ns;    /* 0, or: stop the timed phase after this long */
};

/* What the run functions need; one of these is used per kind of impl. */
struct bn_spec {
    const struct tp_peer *tp;
    const struct rt_peer *rt;
    struct tp_cfg tcfg;
    struct rt_cfg rcfg;
    struct saga_cfg scfg;
    struct durable_cfg dcfg;
    int idle_kind; /* idle: 0 baseline, 1 eventbus, 2 eventbus with a handler running long */
    double idle_seconds;
};

struct bn_impl {
    const char *name;
    enum bn_role role;
    const char *skip; /* non-NULL: not measured, and why */
    bn_run_fn run;
    struct bn_spec spec;
    /* results, filled by the runner */
    int nruns;
    double v[BN_MAX_RUNS][BN_MAX_METRICS];
    double xcore[BN_MAX_RUNS]; /* bn_xcore_rtt_ns() just before each run */
    int cut[BN_MAX_RUNS];      /* bn_sample.cut of each run */
    int failed;
    char err[BN_ERR_LEN];
};

struct bn_case {
    const char *scenario; /* "throughput" */
    const char *name;     /* "pub1" */
    const char *title;    /* one line for people */
    int nmetrics;
    struct bn_metric metric[BN_MAX_METRICS];
    int nimpl;
    struct bn_impl impl[BN_MAX_IMPLS];
    /* optional: build shared state before the first run, free it after */
    int (*setup)(struct bn_case *c, char *err, size_t errlen);
    void (*teardown)(struct bn_case *c);
    void *state;
    /* optional: printed after the case's table (e.g. its targets) */
    void (*report)(const struct bn_case *c);
};

struct bn_options {
    int quick;
    int runs;
};

struct bn_scenario {
    const char *name;  /* "throughput" */
    const char *title; /* "1. Fire-and-forget throughput" */
    /* Appends this scenario's cases. */
    void (*build)(const struct bn_options *o, struct bn_case **cases, int *n, int *cap);
};

extern const struct bn_scenario bn_scenarios[];
extern const int bn_nscenarios;

/* Appends a case and returns it (zeroed). */
struct bn_case *bn_case_add(struct bn_case **cases, int *n, int *cap);
/* Appends an implementation to a case. */
struct bn_impl *bn_impl_add(struct bn_case *c, const char *name, enum bn_role role, bn_run_fn run);
/* The median of metric m over an implementation's runs; 0 if it has none
   (skipped, failed or not run). */
double bn_median(const struct bn_impl *im, int m);

/* Scenario 10 (durable.c): appends the durable-publishing cases. */
void bn_build_durable(const struct bn_options *o, struct bn_case **cases, int *n, int *cap);

#endif /* EB_BENCH_HARNESS_H */
