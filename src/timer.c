/*
 * timer — binary min-heap of (deadline, pointer, generation) under a mutex.
 * Backoffs are rare next to deliveries, so a lock here costs nothing on the
 * hot path; workers only read the relaxed `next` field while idle.
 */
#include "timer.h"

#include <stdlib.h>

int eb__timers_init(eb__timers *t)
{
    t->heap = NULL;
    t->n = t->cap = t->held = 0;
    t->inserted = 0;
    atomic_init(&t->next, INT64_MAX);
    return pthread_mutex_init(&t->lock, NULL) == 0 ? 0 : -1;
}

void eb__timers_fini(eb__timers *t)
{
    free(t->heap);
    pthread_mutex_destroy(&t->lock);
}

static void swap(eb__timer_entry *a, eb__timer_entry *b)
{
    eb__timer_entry x = *a;
    *a = *b;
    *b = x;
}

/* Whether entry a pops before entry b: by deadline, then insertion. */
static bool before(const eb__timer_entry *a, const eb__timer_entry *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->order < b->order);
}

/* Moves entry i up to its place; returns where it ended. */
static unsigned sift_up(eb__timers *t, unsigned i)
{
    while (i > 0 && before(&t->heap[i], &t->heap[(i - 1) / 2])) {
        swap(&t->heap[(i - 1) / 2], &t->heap[i]);
        i = (i - 1) / 2;
    }
    return i;
}

static void sift_down(eb__timers *t, unsigned i)
{
    for (;;) {
        unsigned l = 2 * i + 1, r = l + 1, m = i;
        if (l < t->n && before(&t->heap[l], &t->heap[m]))
            m = l;
        if (r < t->n && before(&t->heap[r], &t->heap[m]))
            m = r;
        if (m == i)
            return;
        swap(&t->heap[i], &t->heap[m]);
        i = m;
    }
}

/* Inserts into a heap with room for it; called with the lock held, which
   it releases. */
static void insert_unlock(eb__timers *t, int64_t deadline, void *what, uint64_t gen, bool *earlier)
{
    unsigned i = t->n++;
    t->heap[i] = (eb__timer_entry){deadline, what, gen, t->inserted++};
    *earlier = sift_up(t, i) == 0;
    atomic_store_explicit(&t->next, t->heap[0].deadline, memory_order_relaxed);
    pthread_mutex_unlock(&t->lock);
}

int eb__timers_push(eb__timers *t, int64_t deadline, void *what, uint64_t gen, bool *earlier)
{
    pthread_mutex_lock(&t->lock);
    if (t->n + t->held == t->cap) {
        unsigned cap = t->cap ? t->cap * 2 : 16;
        eb__timer_entry *h = realloc(t->heap, cap * sizeof(*h));
        if (h == NULL) {
            pthread_mutex_unlock(&t->lock);
            return -1;
        }
        t->heap = h;
        t->cap = cap;
    }
    insert_unlock(t, deadline, what, gen, earlier);
    return 0;
}

void eb__timers_rearm(eb__timers *t, int64_t deadline, void *what, uint64_t gen, bool *earlier)
{
    pthread_mutex_lock(&t->lock);
    t->held--; /* n + held <= cap: the held slot is free */
    insert_unlock(t, deadline, what, gen, earlier);
}

void eb__timers_unhold(eb__timers *t, unsigned n)
{
    if (n == 0)
        return;
    pthread_mutex_lock(&t->lock);
    t->held -= n;
    pthread_mutex_unlock(&t->lock);
}

static bool pop_due(eb__timers *t, int64_t now, eb__timer_entry *out, bool hold)
{
    if (eb__timers_next(t) > now)
        return false;
    pthread_mutex_lock(&t->lock);
    if (t->n == 0 || t->heap[0].deadline > now) {
        pthread_mutex_unlock(&t->lock);
        return false;
    }
    t->held += hold;
    *out = t->heap[0];
    t->heap[0] = t->heap[--t->n];
    sift_down(t, 0);
    atomic_store_explicit(&t->next, t->n ? t->heap[0].deadline : INT64_MAX, memory_order_relaxed);
    pthread_mutex_unlock(&t->lock);
    return true;
}

bool eb__timers_pop_due(eb__timers *t, int64_t now, eb__timer_entry *out)
{
    return pop_due(t, now, out, false);
}

bool eb__timers_pop_due_held(eb__timers *t, int64_t now, eb__timer_entry *out)
{
    return pop_due(t, now, out, true);
}

bool eb__timers_remove(eb__timers *t, const void *what, uint64_t gen)
{
    pthread_mutex_lock(&t->lock);
    unsigned i = 0;
    while (i < t->n && !(t->heap[i].what == what && t->heap[i].gen == gen))
        i++;
    bool found = i < t->n;
    if (found) {
        t->heap[i] = t->heap[--t->n];
        if (i < t->n)
            sift_down(t, sift_up(t, i)); /* the moved entry goes up or down */
        atomic_store_explicit(&t->next, t->n ? t->heap[0].deadline : INT64_MAX,
                              memory_order_relaxed);
    }
    pthread_mutex_unlock(&t->lock);
    return found;
}

static bool taken(const eb__timer_entry *e, int64_t after)
{
    return ((uintptr_t)e->what & 1) != 0 && e->deadline > after;
}

unsigned eb__timers_take_tagged(eb__timers *t, int64_t after, eb__timer_entry **out)
{
    *out = NULL;
    pthread_mutex_lock(&t->lock);
    unsigned n = 0;
    for (unsigned i = 0; i < t->n; i++)
        n += taken(&t->heap[i], after);
    eb__timer_entry *v = n > 0 ? malloc(n * sizeof(*v)) : NULL;
    if (v == NULL) {
        pthread_mutex_unlock(&t->lock);
        return 0;
    }
    unsigned keep = 0, k = 0;
    for (unsigned i = 0; i < t->n; i++) {
        if (taken(&t->heap[i], after))
            v[k++] = t->heap[i];
        else
            t->heap[keep++] = t->heap[i];
    }
    t->n = keep;
    for (unsigned i = keep / 2; i-- > 0;)
        sift_down(t, i);
    atomic_store_explicit(&t->next, t->n ? t->heap[0].deadline : INT64_MAX, memory_order_relaxed);
    pthread_mutex_unlock(&t->lock);
    *out = v;
    return n;
}

bool eb__timers_due(eb__timers *t, int64_t now)
{
    pthread_mutex_lock(&t->lock);
    bool due = t->n > 0 && t->heap[0].deadline <= now;
    pthread_mutex_unlock(&t->lock);
    return due;
}

unsigned eb__timers_count(eb__timers *t)
{
    pthread_mutex_lock(&t->lock);
    unsigned n = t->n;
    pthread_mutex_unlock(&t->lock);
    return n;
}
