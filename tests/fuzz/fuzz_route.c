/*
 * fuzz_route — libFuzzer target for topic/pattern routing.
 *
 * Every matcher of the library is compared against a small reference
 * matcher written here from the rules alone (AMQP 0-9-1 topic rules as
 * src/route.c states them):
 *  - eb__topic_matches (route.c: one pattern against one topic) and
 *    eb__pattern_is_wild,
 *  - the route table (route.c: exact patterns in a hash, wildcards in a word
 *    trie, a per-topic result cache, kept result sets),
 *  - eb__topic_match (saga.c: the C-string matcher sagas filter the events
 *    of their covering subscription with; longer than EB_TOPIC_MAX never
 *    matches),
 *  - eb__cover_pattern (saga.c: the one pattern a saga subscribes to must
 *    match every topic any of its patterns matches),
 *  - and, when the input asks for it, the real bus (eb_subscribe and
 *    eb_publish_wait, which reports how many subscriptions an event reached).
 * Input that the API must refuse (patterns and topics longer than
 * EB_TOPIC_MAX) is fed to every public entry point that validates topics,
 * which must return EB_EINVAL and leave their out-parameters alone.
 * Any disagreement prints what differed and traps.
 *
 * Input format: lines separated by '\n', run in order as a small program
 * against one route table:
 *   >TOPIC    match TOPIC now and compare with the reference; the result set
 *             is kept (pinned) and checked again, unchanged, at the end
 *   -PATTERN  unsubscribe the oldest live subscription of PATTERN (and first
 *             remove an absent pattern/subscription pair, which must be a
 *             no-op)
 *   +PATTERN  subscribe PATTERN (a new subscription each time)
 *   !bus      also run the check through a real bus (slower: thread hops)
 *   PATTERN   any other line: subscribe it
 * At the end every line's text is also used as a topic (twice: the second
 * match comes from the cache), and every line is matched against every
 * line with each pairwise matcher. Lines may hold any byte but '\n'; the
 * C-string entry points see a line up to its first NUL.
 *
 * Threads: libFuzzer calls LLVMFuzzerTestOneInput from one thread; the bus
 * made at initialisation has one worker thread of its own.
 */
#include <eventbus/eventbus.h>

#include "route.h"
#include "saga.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINES 64 /* lines past this are ignored: enough for any bug */
#define MAX_KEEPS 16 /* result sets kept pinned until the end of an input */
#define BUS_MAX 8    /* patterns and topics sent through the real bus */
#define WAIT_NS 10000000000LL

/* ---- the reference matcher ------------------------------------------------ */

/*
 * The rules, from route.c's design block: a topic or pattern is split on
 * '.', so "" has zero words and "a..b" has three ("a", "", "b"); in a
 * pattern the whole words "*" (exactly one word) and "#" (zero or more
 * words) are wildcards, anything else is literal. A topic whose first word
 * begins with '$' is not matched by a pattern whose first word is '*' or '#'.
 *
 * This works on byte offsets rather than split words, so it shares no code
 * or data layout with the library. A position is the offset where a word
 * starts, or END (length + 1) once every word was consumed. The recursion is
 * the rules read aloud; the memo only stops "#.#.#..." patterns from taking
 * exponential time and does not change any answer.
 */

#define REF_MAX (EB_TOPIC_MAX + 2) /* positions 0 .. EB_TOPIC_MAX + 1 */

static uint32_t memo_stamp[REF_MAX][REF_MAX];
static bool memo_value[REF_MAX][REF_MAX];
static uint32_t stamp;

typedef struct text {
    const char *s;
    size_t n;
} text;

/* Offset just past the word that starts at i. */
static size_t word_end(text x, size_t i)
{
    while (i < x.n && x.s[i] != '.')
        i++;
    return i;
}

/* Start of the word after the one at i, or END. */
static size_t next_word(text x, size_t i)
{
    size_t e = word_end(x, i);
    return e < x.n ? e + 1 : x.n + 1;
}

static bool word_is(text x, size_t i, char c)
{
    return word_end(x, i) == i + 1 && x.s[i] == c;
}

/* Do the pattern's words from pi on match the topic's words from ti on? */
static bool ref_rec(text p, size_t pi, text t, size_t ti)
{
    if (memo_stamp[pi][ti] == stamp)
        return memo_value[pi][ti];
    size_t p_end = p.n + 1, t_end = t.n + 1;
    bool r;
    if (pi == p_end) {
        r = ti == t_end; /* the pattern is used up: so must the topic be */
    } else if (word_is(p, pi, '#')) {
        /* '#' takes no word here, or one more word and stays. */
        r = ref_rec(p, next_word(p, pi), t, ti) ||
            (ti != t_end && ref_rec(p, pi, t, next_word(t, ti)));
    } else if (ti == t_end) {
        r = false; /* '*' and literals need a word */
    } else {
        size_t pl = word_end(p, pi) - pi, tl = word_end(t, ti) - ti;
        bool same = word_is(p, pi, '*') || (pl == tl && memcmp(p.s + pi, t.s + ti, pl) == 0);
        r = same && ref_rec(p, next_word(p, pi), t, next_word(t, ti));
    }
    memo_stamp[pi][ti] = stamp;
    memo_value[pi][ti] = r;
    return r;
}

static bool ref_match(text p, text t)
{
    if (p.n > EB_TOPIC_MAX || t.n > EB_TOPIC_MAX)
        __builtin_trap(); /* a harness bug: the memo has no room */
    if (t.n > 0 && t.s[0] == '$' && p.n > 0 && (word_is(p, 0, '*') || word_is(p, 0, '#')))
        return false;
    if (++stamp == 0) { /* wrapped: forget every old entry */
        memset(memo_stamp, 0, sizeof(memo_stamp));
        stamp = 1;
    }
    return ref_rec(p, p.n == 0 ? 1 : 0, t, t.n == 0 ? 1 : 0);
}

/* ---- reporting ---------------------------------------------------------- */

static void put_text(const char *label, text x)
{
    fprintf(stderr, "  %s (%zu bytes): \"", label, x.n);
    for (size_t i = 0; i < x.n; i++) {
        unsigned char c = (unsigned char)x.s[i];
        if (c == '"' || c == '\\')
            fprintf(stderr, "\\%c", c);
        else if (c >= 0x20 && c < 0x7f)
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
    fprintf(stderr, "\"\n");
}

static _Noreturn void fail(const char *what)
{
    fprintf(stderr, "fuzz_route: MISMATCH: %s\n", what);
    fflush(stderr);
    __builtin_trap();
}

static void check_pair(const char *matcher, text p, text t, bool got, bool want)
{
    if (got == want)
        return;
    fprintf(stderr, "fuzz_route: %s says %s, the reference says %s\n", matcher,
            got ? "match" : "no match", want ? "match" : "no match");
    put_text("pattern", p);
    put_text("topic", t);
    fail(matcher);
}

/* ---- the input ------------------------------------------------------------ */

typedef struct line {
    text raw; /* the bytes after the prefix, NULs included */
    text c;   /* the same as a C string: up to the first NUL */
    char op;  /* '>' topic, '-' remove, '+' add, '!' bus directive */
} line;

typedef struct sub {
    text pattern;
    bool live;
} sub;

/* Subscription i is the address &tags[i]; the table never dereferences it. */
static char tags[MAX_LINES];
static char ghost; /* never subscribed */

/* A result set kept pinned, with a copy of what it held when kept. */
typedef struct keep {
    eb__match *m;
    unsigned n;
    void *subs[MAX_LINES];
} keep;

static bool is_valid(text x)
{
    return x.n <= EB_TOPIC_MAX;
}

static void dump_subs(const sub *subs, size_t nsubs)
{
    for (size_t i = 0; i < nsubs; i++) {
        if (!subs[i].live)
            continue;
        char label[32];
        snprintf(label, sizeof(label), "live sub %zu", i);
        put_text(label, subs[i].pattern);
    }
}

/* Matches topic through the table and compares the set with the reference. */
static eb__match *check_table(eb__route *r, const sub *subs, size_t nsubs, text topic)
{
    eb__match *m = eb__route_match(r, topic.s, topic.n);
    if (m == NULL)
        fail("eb__route_match returned NULL");
    bool seen[MAX_LINES] = {false};
    for (unsigned k = 0; k < m->n; k++) {
        char *s = m->subs[k];
        if (s < tags || s >= tags + nsubs) {
            put_text("topic", topic);
            fail("the route table returned a subscription that was never added");
        }
        size_t i = (size_t)(s - tags);
        if (seen[i]) {
            put_text("topic", topic);
            put_text("pattern of the repeated sub", subs[i].pattern);
            fail("the route table returned a subscription twice");
        }
        if (!subs[i].live) {
            put_text("topic", topic);
            put_text("pattern of the removed sub", subs[i].pattern);
            fail("the route table returned a subscription that was removed");
        }
        seen[i] = true;
    }
    for (size_t i = 0; i < nsubs; i++) {
        bool want = subs[i].live && ref_match(subs[i].pattern, topic);
        if (want != seen[i]) {
            fprintf(stderr, "fuzz_route: the route table %s sub %zu, the reference %s\n",
                    seen[i] ? "returned" : "missed", i, want ? "matches" : "does not match");
            put_text("pattern", subs[i].pattern);
            put_text("topic", topic);
            dump_subs(subs, nsubs);
            fail("route table");
        }
    }
    return m;
}

/* ---- the bus -------------------------------------------------------------- */

static eb_bus *bus;
static eb_scope *scope;

static int on_event(const eb_event *ev, void *ctx)
{
    (void)ev, (void)ctx;
    return 0;
}

static void cleanup(void)
{
    eb_scope_abort(scope);
    eb_bus_destroy(bus);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 1; /* the machine is shared; one is enough to count matches */
    int rc = eb_bus_create(&cfg, &bus);
    if (rc == EB_OK)
        rc = eb_scope_begin(bus, &scope);
    if (rc != EB_OK) {
        fprintf(stderr, "fuzz_route: cannot set up the bus: %s\n", eb_err_name(rc));
        abort();
    }
    atexit(cleanup);
    return 0;
}

static void expect_einval(const char *call, int rc, text x)
{
    if (rc == EB_EINVAL)
        return;
    fprintf(stderr, "fuzz_route: %s returned %s for a %zu-byte string\n", call, eb_err_name(rc),
            x.n);
    put_text("string", x);
    fail("too long a topic or pattern was not refused with EB_EINVAL");
}

/* Every entry point that validates a topic or pattern refuses x (> 255
   bytes) with EB_EINVAL and leaves its out-parameters untouched. */
static void check_refused(text x)
{
    eb_bus_stats before, after;
    if (eb_bus_stats_get(bus, &before) != EB_OK)
        fail("eb_bus_stats_get");

    eb_subscription *sub = (eb_subscription *)&ghost;
    expect_einval("eb_subscribe", eb_subscribe(bus, x.s, on_event, NULL, NULL, &sub), x);
    if (sub != (eb_subscription *)&ghost)
        fail("eb_subscribe wrote *out on failure");

    expect_einval("eb_publish", eb_publish(bus, x.s, "p", 1, NULL), x);

    eb_publish_result res, res0;
    memset(&res, 0xa5, sizeof(res));
    res0 = res;
    expect_einval("eb_publish_wait", eb_publish_wait(bus, x.s, NULL, 0, NULL, &res), x);
    if (memcmp(&res, &res0, sizeof(res)) != 0)
        fail("eb_publish_wait wrote *result on failure");

    eb_ticket *ticket = (eb_ticket *)&ghost;
    expect_einval("eb_publish_async", eb_publish_async(bus, x.s, NULL, 0, NULL, &ticket), x);
    if (ticket != (eb_ticket *)&ghost)
        fail("eb_publish_async wrote *ticket on failure");

    eb_message msgs[2] = {{.topic = "fuzz.ok"}, {.topic = x.s}};
    size_t accepted = 0;
    expect_einval("eb_publish_batch", eb_publish_batch(bus, msgs, 2, NULL, &accepted), x);
    if (accepted != 0)
        fail("eb_publish_batch accepted messages of a batch it refused");

    expect_einval("eb_scope_publish", eb_scope_publish(scope, x.s, NULL, 0, NULL, 0), x);

    const char *pats[2] = {"fuzz.a", x.s};
    char cover[EB_TOPIC_MAX + 1];
    expect_einval("eb__cover_pattern", eb__cover_pattern(pats, 2, cover), x);

    /* The saga matcher documents "longer inputs never match": patterns
       over EB_TOPIC_MAX bytes, topics over EB_TOPIC_MAX + 12 (a topic up to
       that long may be a dead letter's). */
    if (eb__topic_match(x.s, "#") || (x.n > EB_TOPIC_MAX + 12 && eb__topic_match("#", x.s)))
        fail("eb__topic_match matched too long a string");

    if (eb_bus_stats_get(bus, &after) != EB_OK)
        fail("eb_bus_stats_get");
    if (after.published != before.published || after.subscriptions != before.subscriptions)
        fail("a refused call published or subscribed something");
}

/* The whole path: subscribe the live patterns on the bus and publish topics;
   eb_publish_wait reports how many subscriptions each event was routed to. */
static void check_bus(const sub *subs, size_t nsubs, const line *lines, size_t nlines)
{
    eb_subscription *bs[BUS_MAX];
    text bp[BUS_MAX];
    size_t nb = 0;
    for (size_t i = 0; i < nsubs && nb < BUS_MAX; i++) {
        if (!subs[i].live)
            continue;
        /* The bus sees C strings: the pattern up to its first NUL. */
        text c = {subs[i].pattern.s, strnlen(subs[i].pattern.s, subs[i].pattern.n)};
        if (!is_valid(c))
            continue;
        int rc = eb_subscribe(bus, c.s, on_event, NULL, NULL, &bs[nb]);
        if (rc != EB_OK) {
            fprintf(stderr, "fuzz_route: eb_subscribe returned %s\n", eb_err_name(rc));
            put_text("pattern", c);
            fail("eb_subscribe refused a valid pattern");
        }
        bp[nb++] = c;
    }
    size_t ntopics = 0;
    for (size_t l = 0; l < nlines && ntopics < BUS_MAX; l++) {
        text t = lines[l].c;
        if (lines[l].op == '!' || !is_valid(t))
            continue;
        ntopics++;
        unsigned want = 0;
        for (size_t i = 0; i < nb; i++)
            want += ref_match(bp[i], t);
        eb_publish_options o;
        eb_publish_options_init(&o);
        o.timeout_ns = WAIT_NS;
        eb_publish_result res;
        int rc = eb_publish_wait(bus, t.s, NULL, 0, &o, &res);
        if (eb__topic_is_deadletter(t.s, t.n)) {
            /* The bus's own dead letters: no caller may publish them. */
            if (rc != EB_EINVAL) {
                put_text("topic", t);
                fail("a publish on $deadletter was not refused");
            }
            continue;
        }
        if (rc != EB_OK) {
            fprintf(stderr, "fuzz_route: eb_publish_wait returned %s\n", eb_err_name(rc));
            put_text("topic", t);
            fail("eb_publish_wait failed on a valid topic");
        }
        if (res.matched != want || res.delivered != want || res.failed != 0) {
            fprintf(stderr,
                    "fuzz_route: the bus routed the event to %u subscriptions (%u delivered, "
                    "%u failed), the reference to %u\n",
                    res.matched, res.delivered, res.failed, want);
            put_text("topic", t);
            for (size_t i = 0; i < nb; i++)
                put_text(ref_match(bp[i], t) ? "pattern (matches)" : "pattern (no match)", bp[i]);
            fail("bus routing");
        }
    }
    for (size_t i = 0; i < nb; i++)
        if (eb_unsubscribe(bs[i]) != EB_OK)
            fail("eb_unsubscribe");
}

/* True if one pattern's first word begins with '$' and not every pattern
   has the same first word. */
static bool dollar_apart(const text *pt, size_t n)
{
    bool dollar = false, apart = false;
    size_t l0 = pt[0].n == 0 ? SIZE_MAX : word_end(pt[0], 0);
    for (size_t i = 0; i < n; i++) {
        size_t l = pt[i].n == 0 ? SIZE_MAX : word_end(pt[i], 0); /* "" has no word */
        dollar |= pt[i].n > 0 && pt[i].s[0] == '$';
        apart |= l != l0 || (l != SIZE_MAX && memcmp(pt[i].s, pt[0].s, l) != 0);
    }
    return dollar && apart;
}

/* The saga's covering pattern matches whatever one of its patterns matches. */
static void check_cover(const sub *subs, size_t nsubs, const line *lines, size_t nlines)
{
    const char *pats[MAX_LINES];
    text pt[MAX_LINES];
    size_t n = 0;
    bool has_255 = false;
    for (size_t i = 0; i < nsubs; i++) {
        text c = {subs[i].pattern.s, strnlen(subs[i].pattern.s, subs[i].pattern.n)};
        if (!subs[i].live || !is_valid(c))
            continue;
        has_255 |= c.n == EB_TOPIC_MAX;
        pt[n] = c;
        pats[n++] = c.s;
    }
    if (n == 0)
        return;
    char cover[EB_TOPIC_MAX + 1];
    int rc = eb__cover_pattern(pats, n, cover);
    /* Two cases have no single covering pattern, and refusing them is right:
       - the cover is the common literal words plus ".#", one byte too long
         only when a pattern has all 255 bytes (e.g. "A." and "A" with a
         254-byte A);
       - a pattern spells out a '$' first word and the first words differ:
         only a pattern with that literal first word matches its topics.
       Any other refusal of valid patterns is a bug. */
    if (rc == EB_EINVAL && (has_255 || dollar_apart(pt, n)))
        return;
    if (rc != EB_OK) {
        fprintf(stderr, "fuzz_route: eb__cover_pattern returned %s\n", eb_err_name(rc));
        for (size_t i = 0; i < n; i++)
            put_text("pattern", pt[i]);
        fail("eb__cover_pattern refused valid patterns");
    }
    text cv = {cover, strlen(cover)};
    if (!is_valid(cv))
        fail("eb__cover_pattern wrote too long a pattern");
    for (size_t l = 0; l < nlines; l++) {
        text t = lines[l].c;
        if (!is_valid(t) || ref_match(cv, t))
            continue;
        for (size_t i = 0; i < n; i++) {
            if (!ref_match(pt[i], t))
                continue;
            fprintf(stderr, "fuzz_route: the covering pattern misses a topic one of the "
                            "patterns matches\n");
            put_text("cover", cv);
            put_text("pattern", pt[i]);
            put_text("topic", t);
            for (size_t j = 0; j < n; j++)
                put_text("all patterns", pt[j]);
            fail("eb__cover_pattern");
        }
    }
}

/* Splits buf (NUL-terminated, written in place) into lines. */
static size_t parse(char *buf, size_t size, line *lines)
{
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= size && n < MAX_LINES; i++) {
        if (i < size && buf[i] != '\n')
            continue;
        buf[i] = '\0';
        line *l = &lines[n++];
        char *s = buf + start;
        size_t len = i - start;
        l->op = 0;
        if (len == 4 && memcmp(s, "!bus", 4) == 0) {
            l->op = '!';
        } else if (len > 0 && (s[0] == '>' || s[0] == '-' || s[0] == '+')) {
            l->op = s[0];
            s++;
            len--;
        }
        l->raw = (text){s, len};
        l->c = (text){s, strlen(s)};
        start = i + 1;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    line lines[MAX_LINES];
    size_t nlines = parse(buf, size, lines);

    eb__route *r = eb__route_new();
    if (r == NULL)
        fail("eb__route_new");
    sub subs[MAX_LINES];
    size_t nsubs = 0;
    keep *keeps = calloc(MAX_KEEPS, sizeof(*keeps));
    size_t nkeeps = 0;
    bool use_bus = false;

    for (size_t l = 0; l < nlines; l++) {
        text x = lines[l].raw;
        if (!is_valid(lines[l].c))
            check_refused(lines[l].c);
        if (lines[l].op == '!') {
            use_bus = true;
            continue;
        }
        /* The table's callers validate first: longer strings never reach it. */
        if (!is_valid(x))
            continue;
        if (lines[l].op == '>') {
            eb__match *m = check_table(r, subs, nsubs, x);
            if (nkeeps < MAX_KEEPS && keeps != NULL) {
                keep *k = &keeps[nkeeps++];
                k->m = eb__match_keep(r, m);
                k->n = m->n;
                memcpy(k->subs, m->subs, m->n * sizeof(void *));
            }
        } else if (lines[l].op == '-') {
            size_t victim = nsubs;
            for (size_t i = 0; i < nsubs && victim == nsubs; i++)
                if (subs[i].live && subs[i].pattern.n == x.n &&
                    memcmp(subs[i].pattern.s, x.s, x.n) == 0)
                    victim = i;
            /* An absent pair first: the pattern with a sub never added. */
            eb__route_remove(r, x.s, x.n, &ghost);
            if (victim < nsubs) {
                eb__route_remove(r, x.s, x.n, &tags[victim]);
                subs[victim].live = false;
            }
        } else {
            if (eb__route_add(r, x.s, x.n, &tags[nsubs]) != 0)
                fail("eb__route_add ran out of memory");
            subs[nsubs++] = (sub){.pattern = x, .live = true};
        }
    }

    /* Every line as a topic, twice: the second match is a cache hit. */
    for (size_t l = 0; l < nlines; l++) {
        if (lines[l].op == '!' || !is_valid(lines[l].raw))
            continue;
        eb__match *m1 = check_table(r, subs, nsubs, lines[l].raw);
        eb__match *m2 = check_table(r, subs, nsubs, lines[l].raw);
        if (m1 != m2 && m1->cached)
            fail("a cached topic was not served from the cache");
    }

    /* Wildcard detection decides between the exact table and the trie. */
    for (size_t l = 0; l < nlines; l++) {
        text p = lines[l].raw;
        if (!is_valid(p))
            continue;
        bool wild = false;
        for (size_t i = p.n == 0 ? 1 : 0; i <= p.n; i = next_word(p, i))
            wild |= word_is(p, i, '*') || word_is(p, i, '#');
        if ((eb__pattern_is_wild(p.s, p.n) != 0) != wild) {
            put_text("pattern", p);
            fail(wild ? "eb__pattern_is_wild missed a wildcard word"
                      : "eb__pattern_is_wild saw a wildcard that is not a whole word");
        }
    }

    /* Every line against every line, with each pairwise matcher. */
    for (size_t a = 0; a < nlines; a++) {
        for (size_t b = 0; b < nlines; b++) {
            text p = lines[a].raw, t = lines[b].raw;
            if (is_valid(p) && is_valid(t))
                check_pair("eb__topic_matches", p, t, eb__topic_matches(p.s, p.n, t.s, t.n),
                           ref_match(p, t));
            p = lines[a].c, t = lines[b].c;
            if (is_valid(p) && is_valid(t))
                check_pair("eb__topic_match (saga.c)", p, t, eb__topic_match(p.s, t.s),
                           ref_match(p, t));
        }
    }

    check_cover(subs, nsubs, lines, nlines);
    if (use_bus)
        check_bus(subs, nsubs, lines, nlines);

    /* Kept sets outlive the matches and cache drops that followed them. */
    for (size_t k = 0; k < nkeeps; k++) {
        if (keeps[k].m->n != keeps[k].n ||
            memcmp(keeps[k].m->subs, keeps[k].subs, keeps[k].n * sizeof(void *)) != 0)
            fail("a kept result set changed");
        eb__match_unpin(keeps[k].m);
    }
    free(keeps);
    eb__route_free(r);
    free(buf);
    return 0;
}
