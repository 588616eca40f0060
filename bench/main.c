/*
 * eventbus-bench — measures eventbus against what users would pick instead.
 *
 *   eventbus-bench [--quick] [--runs N] [--scenario NAME]... [--json FILE]
 *                  [--note TEXT] [--list]
 *
 * Runs the scenarios of scenarios.c (all, or the named ones), each case's
 * implementations interleaved round by round, and prints per case the
 * median and min-max of every metric and each eventbus figure's ratio
 * against every other implementation of the case. A run whose correctness
 * check fails is reported as FAILED, never as a number, and makes the exit
 * status 1. A hang (no progress for two minutes) ends the program with
 * status 2 after writing what was measured so far. Progress goes to stderr,
 * the tables to stdout, everything to the --json file.
 *
 * Ratios are "advantage" ratios: > 1 means the eventbus figure is better
 * (higher throughput, or lower latency/cost), computed from the medians.
 */
#include "harness.h"

#include <eventbus/eventbus.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#ifndef BN_GLIB_VERSION
#define BN_GLIB_VERSION ""
#endif
#ifndef BN_ZMQ_VERSION
#define BN_ZMQ_VERSION ""
#endif
#ifndef BN_CK_VERSION
#define BN_CK_VERSION ""
#endif
#ifndef BN_MOODYCAMEL_VERSION
#define BN_MOODYCAMEL_VERSION ""
#endif
#ifndef BN_SQLITE_VERSION
#define BN_SQLITE_VERSION ""
#endif

/* ---- state of the whole run (for the report and for bn_fatal) ------------ */

static struct bn_options opts = {.quick = 0, .runs = 5};
static const char *json_path;
static const char *note = "";
static struct bn_case *cases;
static int ncases, capcases;
static int *case_ran;            /* per case: 0 not run, 1 run */
static struct bn_impl *cur_impl; /* the run in progress, for bn_fatal */
static char fatal_msg[512];
static char date_str[64];
static double loadavg_start[3], loadavg_end[3];
static uint64_t t_start;
static int progress_tty;
static int steps_total, steps_done;

static void write_json(void);

void bn_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fatal_msg, sizeof(fatal_msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "\neventbus-bench: FATAL: %s\n", fatal_msg);
    if (cur_impl != NULL) {
        cur_impl->failed = 1;
        snprintf(cur_impl->err, sizeof(cur_impl->err), "%.200s", fatal_msg);
    }
    if (json_path != NULL && cases != NULL)
        write_json();
    fflush(stdout);
    fflush(stderr);
    _exit(2);
}

struct bn_case *bn_case_add(struct bn_case **cs, int *n, int *cap)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        *cs = realloc(*cs, (size_t)*cap * sizeof(**cs));
        if (*cs == NULL)
            bn_fatal("out of memory");
    }
    struct bn_case *c = &(*cs)[(*n)++];
    memset(c, 0, sizeof(*c));
    return c;
}

struct bn_impl *bn_impl_add(struct bn_case *c, const char *name, enum bn_role role, bn_run_fn run)
{
    if (c->nimpl == BN_MAX_IMPLS)
        bn_fatal("too many implementations in case %s", c->name);
    struct bn_impl *im = &c->impl[c->nimpl++];
    memset(im, 0, sizeof(*im));
    im->name = name;
    im->role = role;
    im->run = run;
    return im;
}

/* ---- machine ---------------------------------------------------------------- */

static void cpu_model(char *out, size_t n)
{
    snprintf(out, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL)
        return;
    char line[512];
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "model name", 10) == 0) {
            char *p = strchr(line, ':');
            if (p != NULL) {
                p++;
                while (*p == ' ' || *p == '\t')
                    p++;
                p[strcspn(p, "\n")] = 0;
                snprintf(out, n, "%s", p);
            }
            break;
        }
    }
    fclose(f);
}

static void loadavg(double v[3])
{
    v[0] = v[1] = v[2] = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f == NULL)
        return;
    if (fscanf(f, "%lf %lf %lf", &v[0], &v[1], &v[2]) != 3)
        v[0] = v[1] = v[2] = -1;
    fclose(f);
}

static unsigned ncpu(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

/* ---- statistics -------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct stat3 {
    double median, min, max;
};

static struct stat3 stats(const struct bn_impl *im, int m)
{
    double v[BN_MAX_RUNS];
    int n = im->nruns;
    for (int i = 0; i < n; i++)
        v[i] = im->v[i][m];
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    struct stat3 s = {0, 0, 0};
    if (n == 0)
        return s;
    s.min = v[0];
    s.max = v[n - 1];
    s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    return s;
}

static int measured(const struct bn_impl *im)
{
    return im->skip == NULL && !im->failed && im->nruns > 0;
}

double bn_median(const struct bn_impl *im, int m)
{
    return measured(im) ? stats(im, m).median : 0;
}

/* Advantage of a over b on metric m (> 1: a is better); 0 if undefined. */
static double advantage(const struct bn_case *c, const struct bn_impl *a, const struct bn_impl *b,
                        int m)
{
    double x = stats(a, m).median, y = stats(b, m).median;
    if (x <= 0 || y <= 0)
        return 0;
    return c->metric[m].lower_better ? y / x : x / y;
}

/* ---- printing ------------------------------------------------------------------ */

static void fmt_value(const struct bn_metric *m, double v, char *out, size_t n)
{
    if (strcmp(m->unit, "ns") == 0) {
        if (v >= 1e6)
            snprintf(out, n, "%.2f ms", v / 1e6);
        else if (v >= 1e3)
            snprintf(out, n, "%.2f us", v / 1e3);
        else
            snprintf(out, n, "%.0f ns", v);
    } else if (strstr(m->unit, "/s") != NULL && strstr(m->unit, "ms") == NULL) {
        const char *u = m->unit;
        if (v >= 1e9)
            snprintf(out, n, "%.2f G%s", v / 1e9, u);
        else if (v >= 1e6)
            snprintf(out, n, "%.2f M%s", v / 1e6, u);
        else if (v >= 1e3)
            snprintf(out, n, "%.1f k%s", v / 1e3, u);
        else
            snprintf(out, n, "%.1f %s", v, u);
    } else if (strcmp(m->unit, "orders") == 0 || strcmp(m->unit, "deliveries") == 0) {
        snprintf(out, n, "%.0f %s", v, m->unit); /* counts (saga) */
    } else {
        snprintf(out, n, "%.3f %s", v, m->unit);
    }
}

static const char *role_name(enum bn_role r)
{
    return r == BN_OURS ? "ours" : r == BN_PEER ? "peer" : "baseline";
}

static void print_case(const struct bn_case *c)
{
    printf("\n== %s / %s: %s\n", c->scenario, c->name, c->title);
    for (int m = 0; m < c->nmetrics; m++) {
        const struct bn_metric *mt = &c->metric[m];
        printf("   %s (%s, %s is better%s)\n", mt->name, mt->unit,
               mt->lower_better ? "lower" : "higher", mt->info ? ", for information" : "");
        for (int i = 0; i < c->nimpl; i++) {
            const struct bn_impl *im = &c->impl[i];
            if (im->skip != NULL) {
                if (m == 0)
                    printf("     %-44s skipped: %s\n", im->name, im->skip);
                continue;
            }
            if (im->failed) {
                if (m == 0)
                    printf("     %-44s FAILED: %s\n", im->name, im->err);
                continue;
            }
            struct stat3 s = stats(im, m);
            char med[48], lo[48], hi[48];
            fmt_value(mt, s.median, med, sizeof(med));
            fmt_value(mt, s.min, lo, sizeof(lo));
            fmt_value(mt, s.max, hi, sizeof(hi));
            printf("     %-44s %16s  [%s - %s]\n", im->name, med, lo, hi);
        }
        if (mt->info)
            continue;
        for (int i = 0; i < c->nimpl; i++) {
            const struct bn_impl *a = &c->impl[i];
            if (a->role != BN_OURS || !measured(a))
                continue;
            int any = 0;
            for (int j = 0; j < c->nimpl; j++) {
                const struct bn_impl *b = &c->impl[j];
                if (b->role == BN_OURS || !measured(b))
                    continue;
                double r = advantage(c, a, b, m);
                if (r <= 0)
                    continue;
                if (!any)
                    printf("       %s vs:", a->name);
                printf("%s %s x%.2f", any ? "," : "", b->name, r);
                any = 1;
            }
            if (any)
                printf("\n");
        }
    }
    fflush(stdout);
}

/* ---- JSON ---------------------------------------------------------------------- */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s != NULL && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v)
{
    if (v != v || v > 1e300 || v < -1e300)
        fprintf(f, "null");
    else
        fprintf(f, "%.6g", v);
}

static void write_case(FILE *f, const struct bn_case *c)
{
    fprintf(f, "{\"name\": ");
    json_str(f, c->name);
    fprintf(f, ", \"title\": ");
    json_str(f, c->title);
    fprintf(f, ",\n       \"metrics\": [");
    for (int m = 0; m < c->nmetrics; m++) {
        fprintf(f, "%s{\"name\": ", m ? ", " : "");
        json_str(f, c->metric[m].name);
        fprintf(f, ", \"unit\": ");
        json_str(f, c->metric[m].unit);
        fprintf(f, ", \"lower_better\": %s, \"info\": %s}",
                c->metric[m].lower_better ? "true" : "false", c->metric[m].info ? "true" : "false");
    }
    fprintf(f, "],\n       \"results\": [");
    for (int i = 0; i < c->nimpl; i++) {
        const struct bn_impl *im = &c->impl[i];
        fprintf(f, "%s\n         {\"impl\": ", i ? "," : "");
        json_str(f, im->name);
        fprintf(f, ", \"role\": \"%s\", \"status\": \"%s\"", role_name(im->role),
                im->skip     ? "skipped"
                : im->failed ? "failed"
                : im->nruns  ? "ok"
                             : "not run");
        if (im->skip != NULL || im->failed) {
            fprintf(f, ", \"error\": ");
            json_str(f, im->skip ? im->skip : im->err);
        }
        fprintf(f, ", \"runs\": %d", im->nruns);
        if (measured(im)) {
            fprintf(f, ",\n          \"metrics\": {");
            for (int m = 0; m < c->nmetrics; m++) {
                struct stat3 s = stats(im, m);
                fprintf(f, "%s\"%s\": {\"median\": ", m ? ", " : "", c->metric[m].name);
                json_num(f, s.median);
                fprintf(f, ", \"min\": ");
                json_num(f, s.min);
                fprintf(f, ", \"max\": ");
                json_num(f, s.max);
                fprintf(f, ", \"values\": [");
                for (int r = 0; r < im->nruns; r++) {
                    fprintf(f, "%s", r ? ", " : "");
                    json_num(f, im->v[r][m]);
                }
                fprintf(f, "]}");
            }
            fprintf(f, "},\n          \"xcore_ns\": [");
            for (int r = 0; r < im->nruns; r++) {
                fprintf(f, "%s", r ? ", " : "");
                json_num(f, im->xcore[r]);
            }
            fprintf(f, "],\n          \"cut\": [");
            for (int r = 0; r < im->nruns; r++)
                fprintf(f, "%s%s", r ? ", " : "", im->cut[r] ? "true" : "false");
            fprintf(f, "]");
        }
        fprintf(f, "}");
    }
    fprintf(f, "],\n       \"ratios\": [");
    int first = 1;
    for (int i = 0; i < c->nimpl; i++) {
        const struct bn_impl *a = &c->impl[i];
        if (a->role != BN_OURS || !measured(a))
            continue;
        for (int j = 0; j < c->nimpl; j++) {
            const struct bn_impl *b = &c->impl[j];
            if (b->role == BN_OURS || !measured(b))
                continue;
            for (int m = 0; m < c->nmetrics; m++) {
                double r = advantage(c, a, b, m);
                if (c->metric[m].info || r <= 0)
                    continue;
                fprintf(f, "%s\n         {\"impl\": ", first ? "" : ",");
                json_str(f, a->name);
                fprintf(f, ", \"vs\": ");
                json_str(f, b->name);
                fprintf(f, ", \"metric\": \"%s\", \"advantage\": ", c->metric[m].name);
                json_num(f, r);
                fprintf(f, "}");
                first = 0;
            }
        }
    }
    fprintf(f, "]}");
}

static void write_json(void)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", json_path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        perror(tmp);
        return;
    }
    struct utsname u;
    char cpu[256];
    cpu_model(cpu, sizeof(cpu));
    uname(&u);
    loadavg(loadavg_end);
    fprintf(f, "{\n  \"schema\": 1,\n  \"tool\": \"eventbus-bench\",\n  \"date\": ");
    json_str(f, date_str);
    fprintf(f,
            ",\n  \"mode\": \"%s\",\n  \"runs\": %d,\n  \"note\": ", opts.quick ? "quick" : "full",
            opts.runs);
    json_str(f, note);
    fprintf(f, ",\n  \"complete\": %s,\n  \"fatal\": ", fatal_msg[0] ? "false" : "true");
    if (fatal_msg[0])
        json_str(f, fatal_msg);
    else
        fprintf(f, "null");
    fprintf(f, ",\n  \"elapsed_s\": %.1f,", (double)(bn_now_ns() - t_start) / 1e9);
    fprintf(f, "\n  \"ratio_meaning\": ");
    json_str(f, "advantage of impl over vs from the medians: > 1 means impl is better "
                "(higher throughput, lower latency or cost)");
    fprintf(f, ",\n  \"machine\": {\"nproc\": %u, \"cpu\": ", ncpu());
    json_str(f, cpu);
    fprintf(f, ", \"kernel\": ");
    char kern[700];
    snprintf(kern, sizeof(kern), "%s %s %s", u.sysname, u.release, u.machine);
    json_str(f, kern);
    fprintf(f, ", \"loadavg_start\": [%.2f, %.2f, %.2f], \"loadavg_end\": [%.2f, %.2f, %.2f]}",
            loadavg_start[0], loadavg_start[1], loadavg_start[2], loadavg_end[0], loadavg_end[1],
            loadavg_end[2]);
    fprintf(f, ",\n  \"versions\": {\"eventbus\": ");
    json_str(f, eb_version());
    fprintf(f, ", \"compiler\": ");
    json_str(f, "gcc " __VERSION__);
    fprintf(f, ", \"glib\": ");
    json_str(f, BN_GLIB_VERSION);
    fprintf(f, ", \"zeromq\": ");
    json_str(f, BN_ZMQ_VERSION);
    fprintf(f, ", \"ck\": ");
    json_str(f, BN_CK_VERSION);
    fprintf(f, ", \"moodycamel\": ");
    json_str(f, BN_MOODYCAMEL_VERSION);
    fprintf(f, ", \"sqlite\": ");
    json_str(f, BN_SQLITE_VERSION);
    fprintf(f, "},\n  \"scenarios\": [");
    const char *open_scn = NULL;
    int nscn = 0;
    for (int i = 0; i < ncases; i++) {
        if (!case_ran[i])
            continue;
        const struct bn_case *c = &cases[i];
        if (open_scn == NULL || strcmp(open_scn, c->scenario) != 0) {
            if (open_scn != NULL)
                fprintf(f, "]}");
            const char *title = c->scenario;
            for (int s = 0; s < bn_nscenarios; s++)
                if (strcmp(bn_scenarios[s].name, c->scenario) == 0)
                    title = bn_scenarios[s].title;
            fprintf(f, "%s\n    {\"name\": ", nscn++ ? "," : "");
            json_str(f, c->scenario);
            fprintf(f, ", \"title\": ");
            json_str(f, title);
            fprintf(f, ", \"cases\": [\n      ");
            open_scn = c->scenario;
        } else {
            fprintf(f, ",\n      ");
        }
        write_case(f, c);
    }
    if (open_scn != NULL)
        fprintf(f, "]}");
    fprintf(f, "\n  ],\n  \"failures\": [");
    int nf = 0;
    for (int i = 0; i < ncases; i++)
        for (int j = 0; j < cases[i].nimpl; j++)
            if (cases[i].impl[j].failed) {
                char buf[BN_ERR_LEN + 256];
                snprintf(buf, sizeof(buf), "%s/%s %s: %s", cases[i].scenario, cases[i].name,
                         cases[i].impl[j].name, cases[i].impl[j].err);
                fprintf(f, "%s\n    ", nf++ ? "," : "");
                json_str(f, buf);
            }
    fprintf(f, "]\n}\n");
    if (fclose(f) != 0 || rename(tmp, json_path) != 0)
        perror(json_path);
}

/* ---- running -------------------------------------------------------------------- */

static void progress(const struct bn_case *c, const struct bn_impl *im, int round,
                     const char *result)
{
    int pct = steps_total ? steps_done * 100 / steps_total : 100;
    if (progress_tty)
        fprintf(stderr, "\r\033[K[%3d%%] %s/%s run %d/%d: %s%s%s", pct, c->scenario, c->name,
                round + 1, opts.runs, im->name, result ? " " : "", result ? result : "");
    else if (result != NULL)
        fprintf(stderr, "[%3d%%] %s/%s run %d/%d: %s %s\n", pct, c->scenario, c->name, round + 1,
                opts.runs, im->name, result);
    fflush(stderr);
}

static int run_case(struct bn_case *c)
{
    int failures = 0;
    char err[BN_ERR_LEN] = "";
    if (c->setup != NULL && c->setup(c, err, sizeof(err)) != 0) {
        for (int i = 0; i < c->nimpl; i++) {
            if (c->impl[i].skip != NULL)
                continue;
            c->impl[i].failed = 1;
            snprintf(c->impl[i].err, sizeof(c->impl[i].err), "setup failed: %s", err);
            failures++;
        }
        return failures;
    }
    for (int round = 0; round < opts.runs; round++) {
        for (int i = 0; i < c->nimpl; i++) {
            struct bn_impl *im = &c->impl[i];
            if (im->skip != NULL)
                continue;
            if (im->failed) {
                steps_done++;
                continue;
            }
            progress(c, im, round, NULL);
            struct bn_sample s;
            memset(&s, 0, sizeof(s));
            double xcore = bn_xcore_rtt_ns();
            cur_impl = im;
            im->run(im, &s);
            cur_impl = NULL;
            steps_done++;
            char res[96];
            if (s.ok) {
                for (int m = 0; m < c->nmetrics; m++)
                    im->v[im->nruns][m] = s.v[m];
                im->xcore[im->nruns] = xcore;
                im->cut[im->nruns] = s.cut;
                im->nruns++;
                fmt_value(&c->metric[0], s.v[0], res, sizeof(res));
            } else {
                /* One failed check voids the figure: no number is reported. */
                im->failed = 1;
                snprintf(im->err, sizeof(im->err), "%s", s.err[0] ? s.err : "failed");
                snprintf(res, sizeof(res), "FAILED");
                failures++;
                if (progress_tty)
                    fprintf(stderr, "\n");
                fprintf(stderr, "FAILED: %s/%s %s: %s\n", c->scenario, c->name, im->name, im->err);
            }
            progress(c, im, round, res);
        }
    }
    if (progress_tty)
        fprintf(stderr, "\r\033[K");
    return failures;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: eventbus-bench [--quick] [--runs N] [--scenario NAME]... [--json FILE]\n"
               "                      [--note TEXT] [--case NAME]... [--only TEXT]... [--list]\n"
               "  --quick          every scenario with small counts, 1 run (CI smoke test)\n"
               "  --runs N         runs per figure (default 5; quick: 1)\n"
               "  --scenario NAME  run only this scenario (name or number; repeatable)\n"
               "  --json FILE      write all results as JSON\n"
               "  --note TEXT      free text stored in the JSON (e.g. the git revision)\n"
               "  --case NAME      run only cases with this name (e.g. pub1; repeatable)\n"
               "  --only TEXT      measure only implementations whose name contains TEXT\n"
               "                   (repeatable; the others are reported as skipped)\n"
               "  --list           list the scenarios and exit\n");
}

static int scenario_index(const char *name)
{
    for (int i = 0; i < bn_nscenarios; i++) {
        char num[16];
        snprintf(num, sizeof(num), "%d", i + 1);
        if (strcmp(name, bn_scenarios[i].name) == 0 || strcmp(name, num) == 0)
            return i;
    }
    return -1;
}

int main(int argc, char **argv)
{
    int selected[32] = {0};
    int any_selected = 0, runs_given = 0;
    const char *case_names[16], *only[16];
    int ncase_names = 0, nonly = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--quick") == 0) {
            opts.quick = 1;
        } else if (strcmp(a, "--runs") == 0 && i + 1 < argc) {
            opts.runs = atoi(argv[++i]);
            runs_given = 1;
            if (opts.runs < 1 || opts.runs > BN_MAX_RUNS) {
                fprintf(stderr, "--runs: 1..%d\n", BN_MAX_RUNS);
                return 64;
            }
        } else if (strcmp(a, "--scenario") == 0 && i + 1 < argc) {
            int s = scenario_index(argv[++i]);
            if (s < 0) {
                fprintf(stderr, "unknown scenario %s (--list shows them)\n", argv[i]);
                return 64;
            }
            selected[s] = any_selected = 1;
        } else if (strcmp(a, "--case") == 0 && i + 1 < argc && ncase_names < 16) {
            case_names[ncase_names++] = argv[++i];
        } else if (strcmp(a, "--only") == 0 && i + 1 < argc && nonly < 16) {
            only[nonly++] = argv[++i];
        } else if (strcmp(a, "--json") == 0 && i + 1 < argc) {
            json_path = argv[++i];
        } else if (strcmp(a, "--note") == 0 && i + 1 < argc) {
            note = argv[++i];
        } else if (strcmp(a, "--list") == 0) {
            for (int s = 0; s < bn_nscenarios; s++)
                printf("%-12s %s\n", bn_scenarios[s].name, bn_scenarios[s].title);
            return 0;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 64;
        }
    }
    if (opts.quick && !runs_given)
        opts.runs = 1;

    t_start = bn_now_ns();
    time_t now = time(NULL);
    strftime(date_str, sizeof(date_str), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    loadavg(loadavg_start);
    progress_tty = isatty(2);

    /* Build every selected scenario's cases; remember where each starts. */
    int first_case[33];
    for (int s = 0; s < bn_nscenarios; s++) {
        first_case[s] = ncases;
        if (!any_selected || selected[s])
            bn_scenarios[s].build(&opts, &cases, &ncases, &capcases);
    }
    first_case[bn_nscenarios] = ncases;
    /* --case and --only: tuning runs that measure a subset. Unselected
       implementations are skipped (and say so); unselected cases too. */
    for (int i = 0; i < ncases; i++) {
        int case_on = ncase_names == 0;
        for (int k = 0; k < ncase_names; k++)
            case_on |= strcmp(cases[i].name, case_names[k]) == 0;
        for (int j = 0; j < cases[i].nimpl; j++) {
            struct bn_impl *im = &cases[i].impl[j];
            int on = case_on && nonly == 0;
            for (int k = 0; case_on && k < nonly; k++)
                on |= strstr(im->name, only[k]) != NULL;
            if (!on && im->skip == NULL)
                im->skip = "not selected (--case / --only)";
        }
    }
    case_ran = calloc((size_t)ncases + 1, sizeof(int));
    for (int i = 0; i < ncases; i++)
        for (int j = 0; j < cases[i].nimpl; j++)
            if (cases[i].impl[j].skip == NULL)
                steps_total += opts.runs;

    char cpu[256];
    struct utsname u;
    uname(&u);
    cpu_model(cpu, sizeof(cpu));
    printf("eventbus-bench: eventbus %s, %s mode, %d run%s per figure\n", eb_version(),
           opts.quick ? "quick" : "full", opts.runs, opts.runs > 1 ? "s" : "");
    printf("machine: %u CPUs, %s, %s %s %s, load average %.2f %.2f %.2f\n", ncpu(), cpu, u.sysname,
           u.release, u.machine, loadavg_start[0], loadavg_start[1], loadavg_start[2]);
    printf("ratios: x > 1 means the eventbus figure is better (from medians)\n");
    fflush(stdout);

    int failures = 0;
    for (int s = 0; s < bn_nscenarios; s++) {
        if (first_case[s] == first_case[s + 1])
            continue;
        printf("\n#### %s\n", bn_scenarios[s].title);
        for (int i = first_case[s]; i < first_case[s + 1]; i++) {
            case_ran[i] = 1;
            failures += run_case(&cases[i]);
            print_case(&cases[i]);
            if (cases[i].report != NULL) {
                cases[i].report(&cases[i]);
                fflush(stdout);
            }
            if (json_path != NULL)
                write_json(); /* keep the file current: a later hang loses nothing */
        }
        /* Shared state (the routing buses) lives until the scenario ends. */
        for (int i = first_case[s]; i < first_case[s + 1]; i++)
            if (cases[i].teardown != NULL)
                cases[i].teardown(&cases[i]);
    }
    if (json_path != NULL)
        write_json();
    printf("\n%s: %d failed figure%s, %.1f s\n", failures ? "FAILED" : "done", failures,
           failures == 1 ? "" : "s", (double)(bn_now_ns() - t_start) / 1e9);
    if (failures)
        fprintf(stderr, "eventbus-bench: %d figure%s FAILED their correctness check\n", failures,
                failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
