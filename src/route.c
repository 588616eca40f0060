/*
 * route — topic routing: exact patterns through a hash lookup, wildcard
 * patterns through a word trie, and a per-topic cache of the results.
 *
 * Semantics are RabbitMQ's topic exchange: a topic is split on '.', so ""
 * has zero words and "a..b" has three ("a", "", "b"); in a pattern the whole
 * words "*" (exactly one word) and "#" (zero or more words) are wildcards and
 * anything else is literal. One extension: a topic whose first word begins
 * with '$' is a bus topic ($deadletter.<topic>) and a pattern whose first word
 * is a wildcard does not match it (MQTT's rule for $SYS).
 *
 * Cost: an exact pattern is one ck_hs lookup; the trie walk visits only the
 * nodes on matching paths (each trie edge is one entry in a ck_hs keyed by
 * (parent node, word)); so routing cost does not grow with the number of
 * non-matching subscriptions. Results are cached per topic (a ck_hs keyed by
 * topic), and the whole cache is dropped on any add/remove.
 *
 * Threads: one at a time (the dispatch token holder); see route.h.
 */
#include "route.h"
#include "sync.h"

#include <eventbus/eventbus.h>

#include <ck_hs.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Cached topics at most. A full cache takes no new topics (no eviction
   churn, no allocation) until the next add/remove drops it; uncached topics
   are matched into the scratch set. */
#define CACHE_MAX 65536
#define WORDS_MAX (EB__ROUTE_TOPIC_MAX / 2 + 2)
#define EB__ROUTE_TOPIC_MAX 512

typedef struct subvec {
    void **v;
    unsigned n, cap;
} subvec;

typedef struct node node;
typedef struct edge {
    unsigned long hash;
    node *parent;
    node *child;
    size_t len;
    const char *word; /* points into the child (or at a lookup buffer) */
} edge;

struct node {
    node *parent;
    edge *in;            /* the edge from parent, NULL for root, '*' and '#' nodes */
    node *star;          /* child for a '*' word */
    node *hash;          /* child for a '#' word */
    unsigned nkids;      /* literal children */
    subvec subs;         /* subscriptions whose pattern ends here */
    uint64_t collected;  /* match stamp: subs already collected */
    uint64_t hash_stamp; /* match stamp of the last '#' expansion */
    size_t hash_from;    /* smallest word index expanded under hash_stamp */
    char word[];         /* literal word of the in-edge */
};

typedef struct exact {
    unsigned long hash;
    size_t len;
    const char *topic;
    subvec subs;
    char buf[];
} exact;

typedef struct centry {
    unsigned long hash;
    size_t len;
    const char *topic;
    eb__match *match;
    char buf[];
} centry;

struct eb__route {
    ck_hs_t edges;
    ck_hs_t exacts;
    ck_hs_t cache;
    unsigned cached;
    /* The entry the last lookup found or made: a run of one topic (most
       traffic) is matched with one compare instead of a hash and a probe.
       Dropped with the cache. */
    centry *last;
    node *root;
    uint64_t stamp;
    unsigned long seed;
    /* scratch for a match in progress, and the set that wraps it */
    subvec out;
    eb__match *scratch;
};

/* ---- ck_hs plumbing --------------------------------------------------- */

/* FNV-1a over the bytes, mixed with a seed. */
static unsigned long hash_bytes(const void *p, size_t n, unsigned long h)
{
    const unsigned char *s = p;
    h ^= 1469598103934665603UL;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211UL;
    }
    h ^= h >> 29;
    return h;
}

/* Every key type starts with its precomputed hash. */
static unsigned long hs_hash_pre(const void *k, unsigned long seed)
{
    (void)seed;
    return *(const unsigned long *)k;
}

static bool edge_cmp(const void *a, const void *b)
{
    const edge *x = a, *y = b;
    return x->parent == y->parent && x->len == y->len && memcmp(x->word, y->word, x->len) == 0;
}

static bool exact_cmp(const void *a, const void *b)
{
    const exact *x = a, *y = b;
    return x->len == y->len && memcmp(x->topic, y->topic, x->len) == 0;
}

static bool centry_cmp(const void *a, const void *b)
{
    const centry *x = a, *y = b;
    return x->len == y->len && memcmp(x->topic, y->topic, x->len) == 0;
}

static unsigned long edge_hash(const eb__route *r, const node *parent, const char *w, size_t n)
{
    unsigned long h = hash_bytes(&parent, sizeof(parent), r->seed);
    return hash_bytes(w, n, h);
}

/* ---- vectors ---------------------------------------------------------- */

static int subvec_push(subvec *s, void *p)
{
    if (s->n == s->cap) {
        unsigned cap = s->cap ? s->cap * 2 : 4;
        void **v = realloc(s->v, cap * sizeof(*v));
        if (v == NULL)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = p;
    return 0;
}

static void subvec_remove(subvec *s, void *p)
{
    for (unsigned i = 0; i < s->n; i++) {
        if (s->v[i] == p) {
            memmove(&s->v[i], &s->v[i + 1], (s->n - i - 1) * sizeof(*s->v));
            s->n--;
            return;
        }
    }
}

/* ---- words ------------------------------------------------------------ */

typedef struct word {
    const char *p;
    size_t n;
} word;

/* Splits s on '.'; "" has zero words. Returns the count (<= max). */
static size_t split(const char *s, size_t len, word *w, size_t max)
{
    size_t n = 0, start = 0;
    if (len == 0)
        return 0;
    for (size_t i = 0; i <= len && n < max; i++) {
        if (i == len || s[i] == '.') {
            w[n].p = s + start;
            w[n].n = i - start;
            n++;
            start = i + 1;
        }
    }
    return n;
}

static bool is_star(word w)
{
    return w.n == 1 && w.p[0] == '*';
}
static bool is_hash(word w)
{
    return w.n == 1 && w.p[0] == '#';
}

/* Does pattern words p[i..] match topic words t[j..]? Memoised on (i, j)
   so '#' runs stay polynomial. */
static bool words_match(const word *p, size_t np, size_t i, const word *t, size_t nt, size_t j,
                        uint8_t *memo)
{
    uint8_t *m = &memo[i * (nt + 1) + j];
    if (*m != 0)
        return *m == 2;
    bool r;
    if (i == np)
        r = j == nt;
    else if (is_hash(p[i]))
        r = words_match(p, np, i + 1, t, nt, j, memo) ||
            (j < nt && words_match(p, np, i, t, nt, j + 1, memo));
    else if (j == nt)
        r = false;
    else if (is_star(p[i]) || (p[i].n == t[j].n && memcmp(p[i].p, t[j].p, t[j].n) == 0))
        r = words_match(p, np, i + 1, t, nt, j + 1, memo);
    else
        r = false;
    *m = r ? 2 : 1;
    return r;
}

bool eb__topic_matches(const char *pattern, size_t plen, const char *topic, size_t tlen)
{
    word p[WORDS_MAX], t[WORDS_MAX];
    size_t np = split(pattern, plen, p, WORDS_MAX), nt = split(topic, tlen, t, WORDS_MAX);
    /* '$' topics are matched only by a pattern whose first word is literal. */
    if (tlen > 0 && topic[0] == '$' && np > 0 && (is_star(p[0]) || is_hash(p[0])))
        return false;
    uint8_t memo[(WORDS_MAX + 1) * (WORDS_MAX + 1)];
    memset(memo, 0, (np + 1) * (nt + 1));
    return words_match(p, np, 0, t, nt, 0, memo);
}

EB_API int eb_topic_matches(const char *pattern, const char *topic)
{
    if (pattern == NULL || topic == NULL)
        return EB_EINVAL;
    size_t pl = strnlen(pattern, EB_TOPIC_MAX + 1);
    size_t tl = strnlen(topic, EB_TOPIC_MAX + 13);
    if (pl > EB_TOPIC_MAX || tl > EB_TOPIC_MAX + 12)
        return EB_EINVAL;
    return eb__topic_matches(pattern, pl, topic, tl) ? 1 : 0;
}

int eb__pattern_is_wild(const char *pattern, size_t len)
{
    word w[WORDS_MAX];
    size_t n = split(pattern, len, w, WORDS_MAX);
    for (size_t i = 0; i < n; i++)
        if (is_star(w[i]) || is_hash(w[i]))
            return 1;
    return 0;
}

/* ---- table ------------------------------------------------------------ */

static node *node_new(node *parent, const char *w, size_t n)
{
    node *x = calloc(1, sizeof(*x) + n + 1);
    if (x == NULL)
        return NULL;
    x->parent = parent;
    memcpy(x->word, w, n);
    return x;
}

eb__route *eb__route_new(void)
{
    eb__route *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->seed = (unsigned long)(uintptr_t)r * 2654435761UL;
    r->root = node_new(NULL, "", 0);
    if (r->root == NULL)
        goto fail_root;
    if (!ck_hs_init(&r->edges, CK_HS_MODE_SPMC | CK_HS_MODE_OBJECT, hs_hash_pre, edge_cmp,
                    &eb__ck_malloc, 64, r->seed))
        goto fail_edges;
    if (!ck_hs_init(&r->exacts, CK_HS_MODE_SPMC | CK_HS_MODE_OBJECT, hs_hash_pre, exact_cmp,
                    &eb__ck_malloc, 64, r->seed))
        goto fail_exacts;
    if (!ck_hs_init(&r->cache, CK_HS_MODE_SPMC | CK_HS_MODE_OBJECT, hs_hash_pre, centry_cmp,
                    &eb__ck_malloc, 64, r->seed))
        goto fail_cache;
    return r;
fail_cache:
    ck_hs_destroy(&r->exacts);
fail_exacts:
    ck_hs_destroy(&r->edges);
fail_edges:
    free(r->root);
fail_root:
    free(r);
    return NULL;
}

static void match_free(eb__match *m)
{
    if (m->own_subs)
        free(m->subs);
    free(m);
}

static void match_release_cached(eb__match *m)
{
    m->cached = false;
    if (m->pins == 0)
        match_free(m);
}

static void cache_drop(eb__route *r)
{
    ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
    void *p;
    if (r->cached == 0)
        return;
    /* Each entry leaves the set before it is freed: ck_hs_reset needs a new
       map (memory), and when it gets none it keeps the old one, which must
       not hold freed entries then. Removing only marks the slot (no
       allocation), and the iterator has already moved past it. */
    while (ck_hs_next(&r->cache, &it, &p)) {
        centry *c = p;
        ck_hs_remove(&r->cache, c->hash, c);
        match_release_cached(c->match);
        free(c);
    }
    (void)ck_hs_reset(&r->cache); /* shrinks it; failing leaves it empty */
    r->cached = 0;
    r->last = NULL;
}

static void node_free_tree(node *x)
{
    if (x == NULL)
        return;
    node_free_tree(x->star);
    node_free_tree(x->hash);
    free(x->subs.v);
    free(x->in);
    free(x);
}

void eb__route_free(eb__route *r)
{
    ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
    void *p;
    if (r == NULL)
        return;
    cache_drop(r);
    /* Literal children are reachable only through the edge table. */
    while (ck_hs_next(&r->edges, &it, &p)) {
        edge *e = p;
        node *c = e->child;
        node_free_tree(c->star);
        node_free_tree(c->hash);
        free(c->subs.v);
        free(c);
        free(e);
    }
    it = (ck_hs_iterator_t)CK_HS_ITERATOR_INITIALIZER;
    while (ck_hs_next(&r->exacts, &it, &p)) {
        exact *x = p;
        free(x->subs.v);
        free(x);
    }
    ck_hs_destroy(&r->edges);
    ck_hs_destroy(&r->exacts);
    ck_hs_destroy(&r->cache);
    node_free_tree(r->root->star);
    node_free_tree(r->root->hash);
    free(r->root->subs.v);
    free(r->root);
    free(r->out.v);
    free(r->scratch);
    free(r);
}

static edge *edge_find(eb__route *r, node *parent, const char *w, size_t n)
{
    edge key = {.hash = edge_hash(r, parent, w, n), .parent = parent, .len = n, .word = w};
    return ck_hs_get(&r->edges, key.hash, &key);
}

/* Returns the child of parent for word w, creating it; NULL if out of memory. */
static node *child_get(eb__route *r, node *parent, word w)
{
    node **slot = NULL;
    if (is_star(w))
        slot = &parent->star;
    else if (is_hash(w))
        slot = &parent->hash;
    if (slot != NULL) {
        if (*slot == NULL)
            *slot = node_new(parent, w.p, w.n);
        return *slot;
    }
    edge *e = edge_find(r, parent, w.p, w.n);
    if (e != NULL)
        return e->child;
    node *c = node_new(parent, w.p, w.n);
    e = malloc(sizeof(*e));
    if (c == NULL || e == NULL) {
        free(c);
        free(e);
        return NULL;
    }
    *e = (edge){.hash = edge_hash(r, parent, w.p, w.n),
                .parent = parent,
                .child = c,
                .len = w.n,
                .word = c->word};
    if (!ck_hs_put(&r->edges, e->hash, e)) {
        free(c);
        free(e);
        return NULL;
    }
    c->in = e;
    parent->nkids++;
    return c;
}

/* Frees x and its now-empty ancestors. */
static void prune(eb__route *r, node *x)
{
    while (x != NULL && x != r->root && x->subs.n == 0 && x->nkids == 0 && x->star == NULL &&
           x->hash == NULL) {
        node *p = x->parent;
        if (p->star == x) {
            p->star = NULL;
        } else if (p->hash == x) {
            p->hash = NULL;
        } else {
            ck_hs_remove(&r->edges, x->in->hash, x->in);
            free(x->in);
            p->nkids--;
        }
        free(x->subs.v);
        free(x);
        x = p;
    }
}

int eb__route_add(eb__route *r, const char *pattern, size_t len, void *sub)
{
    cache_drop(r);
    if (!eb__pattern_is_wild(pattern, len)) {
        unsigned long h = hash_bytes(pattern, len, r->seed);
        exact key = {.hash = h, .len = len, .topic = pattern};
        exact *x = ck_hs_get(&r->exacts, h, &key);
        bool fresh = false;
        if (x == NULL) {
            x = calloc(1, sizeof(*x) + len + 1);
            if (x == NULL)
                return -1;
            memcpy(x->buf, pattern, len);
            x->hash = h;
            x->len = len;
            x->topic = x->buf;
            fresh = true;
        }
        if (subvec_push(&x->subs, sub) != 0)
            goto fail_exact;
        if (fresh && !ck_hs_put(&r->exacts, h, x)) {
            x->subs.n--;
            goto fail_exact;
        }
        return 0;
    fail_exact:
        if (fresh) {
            free(x->subs.v);
            free(x);
        }
        return -1;
    }
    word w[WORDS_MAX];
    size_t n = split(pattern, len, w, WORDS_MAX);
    node *x = r->root;
    for (size_t i = 0; i < n; i++) {
        node *c = child_get(r, x, w[i]);
        if (c == NULL) {
            prune(r, x);
            return -1;
        }
        x = c;
    }
    if (subvec_push(&x->subs, sub) != 0) {
        prune(r, x);
        return -1;
    }
    return 0;
}

void eb__route_remove(eb__route *r, const char *pattern, size_t len, void *sub)
{
    cache_drop(r);
    if (!eb__pattern_is_wild(pattern, len)) {
        unsigned long h = hash_bytes(pattern, len, r->seed);
        exact key = {.hash = h, .len = len, .topic = pattern};
        exact *x = ck_hs_get(&r->exacts, h, &key);
        if (x == NULL)
            return;
        subvec_remove(&x->subs, sub);
        if (x->subs.n == 0) {
            ck_hs_remove(&r->exacts, h, x);
            free(x->subs.v);
            free(x);
        }
        return;
    }
    word w[WORDS_MAX];
    size_t n = split(pattern, len, w, WORDS_MAX);
    node *x = r->root;
    for (size_t i = 0; i < n && x != NULL; i++) {
        if (is_star(w[i]))
            x = x->star;
        else if (is_hash(w[i]))
            x = x->hash;
        else {
            edge *e = edge_find(r, x, w[i].p, w[i].n);
            x = e ? e->child : NULL;
        }
    }
    if (x == NULL)
        return;
    subvec_remove(&x->subs, sub);
    prune(r, x);
}

/* ---- matching --------------------------------------------------------- */

typedef struct walk {
    eb__route *r;
    const word *w;
    size_t n;
    bool dollar; /* topic is a bus ($) topic */
    bool oom;
} walk;

static void walk_node(walk *k, node *x, size_t i);

static void collect(walk *k, node *x)
{
    if (x->collected == k->r->stamp)
        return;
    x->collected = k->r->stamp;
    for (unsigned j = 0; j < x->subs.n; j++)
        if (subvec_push(&k->r->out, x->subs.v[j]) != 0)
            k->oom = true;
}

/* h is a '#' node entered at word i: it consumes words i..j-1 for each j. */
static void walk_hash(walk *k, node *h, size_t i)
{
    /* Expanding from i covers every later start, so one expansion per match
       from the smallest start is enough; this keeps "#.#.#" patterns linear. */
    if (h->hash_stamp == k->r->stamp && h->hash_from <= i)
        return;
    h->hash_stamp = k->r->stamp;
    h->hash_from = i;
    for (size_t j = i; j <= k->n; j++)
        walk_node(k, h, j);
}

static void walk_node(walk *k, node *x, size_t i)
{
    bool wild_ok = !(k->dollar && x == k->r->root);
    if (i == k->n) {
        collect(k, x);
    } else {
        if (x->nkids > 0) {
            edge *e = edge_find(k->r, x, k->w[i].p, k->w[i].n);
            if (e != NULL)
                walk_node(k, e->child, i + 1);
        }
        if (x->star != NULL && wild_ok)
            walk_node(k, x->star, i + 1);
    }
    if (x->hash != NULL && wild_ok)
        walk_hash(k, x->hash, i);
}

eb__match *eb__route_match(eb__route *r, const char *topic, size_t len)
{
    centry *c = r->last;
    if (c != NULL && c->len == len && memcmp(c->buf, topic, len) == 0)
        return c->match;
    unsigned long h = hash_bytes(topic, len, r->seed);
    centry key = {.hash = h, .len = len, .topic = topic};
    c = ck_hs_get(&r->cache, h, &key);
    if (c != NULL) {
        r->last = c;
        return c->match;
    }

    word w[WORDS_MAX];
    walk k = {.r = r, .w = w, .n = split(topic, len, w, WORDS_MAX)};
    k.dollar = len > 0 && topic[0] == '$';
    r->out.n = 0;
    r->stamp++;
    exact ekey = {.hash = h, .len = len, .topic = topic};
    exact *x = ck_hs_get(&r->exacts, h, &ekey);
    if (x != NULL)
        for (unsigned j = 0; j < x->subs.n; j++)
            if (subvec_push(&r->out, x->subs.v[j]) != 0)
                k.oom = true;
    walk_node(&k, r->root, 0);
    if (k.oom)
        return NULL;

    if (r->cached < CACHE_MAX) {
        eb__match *m = malloc(sizeof(*m) + r->out.n * sizeof(void *));
        c = malloc(sizeof(*c) + len + 1);
        if (m != NULL && c != NULL) {
            *m = (eb__match){.cached = true, .n = r->out.n, .subs = (void **)(m + 1)};
            if (r->out.n > 0)
                memcpy(m->subs, r->out.v, r->out.n * sizeof(void *));
            memcpy(c->buf, topic, len);
            *c = (centry){.hash = h, .len = len, .topic = c->buf, .match = m};
            if (ck_hs_put(&r->cache, h, c)) {
                r->cached++;
                r->last = c;
                return m;
            }
        }
        free(m);
        free(c);
        /* No memory to cache it: the scratch set still serves. */
    }
    if (r->scratch == NULL && (r->scratch = malloc(sizeof(*r->scratch))) == NULL)
        return NULL;
    *r->scratch = (eb__match){.scratch = true, .n = r->out.n, .subs = r->out.v};
    return r->scratch;
}

eb__match *eb__route_only(eb__route *r, void *sub)
{
    r->out.n = 0;
    if (sub != NULL && subvec_push(&r->out, sub) != 0)
        return NULL;
    if (r->scratch == NULL && (r->scratch = malloc(sizeof(*r->scratch))) == NULL)
        return NULL;
    *r->scratch = (eb__match){.scratch = true, .n = r->out.n, .subs = r->out.v};
    return r->scratch;
}

eb__match *eb__match_keep(eb__route *r, eb__match *m)
{
    if (m->scratch) {
        /* Hand the scratch set and its vector over; the route makes new
           ones at its next uncached match. */
        r->scratch = NULL;
        r->out = (subvec){0};
        m->scratch = false;
        m->own_subs = true;
    }
    m->pins++;
    return m;
}

void eb__match_unpin(eb__match *m)
{
    if (--m->pins == 0 && !m->cached)
        match_free(m);
}
