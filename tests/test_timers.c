/*
 * The timer heap from the inside (src/timer.h): removing an entry before it
 * is due (what eb_unsubscribe does to a lane's backoff) keeps the heap in
 * deadline order, whichever way the entry moved into the hole must go.
 */
#include "common.h"
#include "timer.h"

TestSuite(timers, .timeout = EB_CRITERION_TIMEOUT);

enum { N = 64 };
static int obj[N];

/* The heap property: no entry is due before its parent. */
static bool heap_ok(const eb__timers *t)
{
    for (unsigned i = 1; i < t->n; i++)
        if (t->heap[(i - 1) / 2].deadline > t->heap[i].deadline)
            return false;
    return true;
}

/* Pops everything and checks deadline order; returns how many popped and
   marks them in seen. */
static unsigned pop_all_in_order(eb__timers *t, bool seen[N])
{
    eb__timer_entry e;
    int64_t last = INT64_MIN;
    unsigned n = 0;
    while (eb__timers_pop_due(t, INT64_MAX - 1, &e)) {
        cr_assert_geq(e.deadline, last, "popped out of deadline order");
        last = e.deadline;
        int k = (int)((int *)e.what - obj);
        cr_assert(k >= 0 && k < N && !seen[k]);
        cr_assert_eq(e.gen, (uint64_t)k);
        seen[k] = true;
        n++;
    }
    cr_assert_eq(eb__timers_next(t), INT64_MAX);
    return n;
}

Test(timers, removed_entries_are_gone_and_the_rest_pop_in_deadline_order)
{
    eb__timers t;
    cr_assert_eq(eb__timers_init(&t), 0);
    bool earlier;
    /* Deadlines scattered (37 is prime to 64), so that holes are filled by
       entries that must move up as well as down. */
    for (int k = 0; k < N; k++)
        cr_assert_eq(eb__timers_push(&t, 1000 + (k * 37) % N, &obj[k], (uint64_t)k, &earlier), 0);
    bool removed[N] = {false};
    for (int k = 0; k < N; k += 3) {
        cr_assert(eb__timers_remove(&t, &obj[k], (uint64_t)k));
        cr_assert(heap_ok(&t), "heap order broken after removing %d", k);
        removed[k] = true;
    }
    /* Gone already, or another generation: not there. */
    cr_assert_not(eb__timers_remove(&t, &obj[0], 0));
    cr_assert_not(eb__timers_remove(&t, &obj[1], 99));
    unsigned left = 0;
    for (int k = 0; k < N; k++)
        left += !removed[k];
    cr_assert_eq(eb__timers_count(&t), left);
    bool seen[N] = {false};
    cr_assert_eq(pop_all_in_order(&t, seen), left);
    for (int k = 0; k < N; k++)
        cr_assert_eq(seen[k], !removed[k], "entry %d", k);
    eb__timers_fini(&t);
}

Test(timers, removing_the_earliest_entry_moves_next_to_the_one_after)
{
    eb__timers t;
    cr_assert_eq(eb__timers_init(&t), 0);
    bool earlier;
    cr_assert_eq(eb__timers_push(&t, 30, &obj[0], 0, &earlier), 0);
    cr_assert_eq(eb__timers_push(&t, 10, &obj[1], 1, &earlier), 0);
    cr_assert_eq(eb__timers_push(&t, 20, &obj[2], 2, &earlier), 0);
    cr_assert_eq(eb__timers_next(&t), 10);
    cr_assert(eb__timers_remove(&t, &obj[1], 1));
    cr_assert_eq(eb__timers_next(&t), 20);
    cr_assert(eb__timers_remove(&t, &obj[2], 2));
    cr_assert(eb__timers_remove(&t, &obj[0], 0));
    cr_assert_eq(eb__timers_next(&t), INT64_MAX);
    cr_assert_eq(eb__timers_count(&t), 0);
    eb__timers_fini(&t);
}

Test(timers, a_popped_entry_cannot_be_removed)
{
    eb__timers t;
    cr_assert_eq(eb__timers_init(&t), 0);
    bool earlier;
    cr_assert_eq(eb__timers_push(&t, 5, &obj[0], 7, &earlier), 0);
    eb__timer_entry e;
    cr_assert(eb__timers_pop_due(&t, 5, &e));
    cr_assert_not(eb__timers_remove(&t, &obj[0], 7));
    eb__timers_fini(&t);
}

/* The last entry, moved into the hole, belongs above it: the hole's parent
   (50) is due after it (5), though the last entry's own ancestors are not. */
Test(timers, an_entry_moved_into_a_hole_goes_up_when_it_is_due_first)
{
    eb__timers t;
    cr_assert_eq(eb__timers_init(&t), 0);
    bool earlier;
    const int64_t d[] = {1, 2, 50, 3, 4, 60, 61, 5}; /* a heap as pushed */
    for (int k = 0; k < 8; k++)
        cr_assert_eq(eb__timers_push(&t, d[k], &obj[k], (uint64_t)k, &earlier), 0);
    cr_assert(heap_ok(&t));
    cr_assert(eb__timers_remove(&t, &obj[5], 5)); /* 60, a child of 50 */
    cr_assert(heap_ok(&t), "the entry due at 5 stayed below the one due at 50");
    bool seen[N] = {false};
    cr_assert_eq(pop_all_in_order(&t, seen), 7);
    eb__timers_fini(&t);
}

/* Entries with equal deadlines pop in the order they were pushed, among
   others with other deadlines and after removals (delayed events given one
   time keep their publish order). */
Test(timers, equal_deadlines_pop_in_insertion_order)
{
    eb__timers t;
    cr_assert_eq(eb__timers_init(&t), 0);
    bool earlier;
    for (int i = 0; i < N; i++) {
        /* Three deadlines, interleaved: 10, 20, 30, 10, 20, ... */
        int64_t d = 10 * (1 + i % 3);
        cr_assert_eq(eb__timers_push(&t, d, &obj[i], (uint64_t)i, &earlier), 0);
    }
    cr_assert(eb__timers_remove(&t, &obj[4], 4));
    cr_assert(eb__timers_remove(&t, &obj[33], 33));
    eb__timer_entry e;
    int64_t last_d = 0;
    int last_i = -1;
    unsigned n = 0;
    while (eb__timers_pop_due(&t, INT64_MAX - 1, &e)) {
        int i = (int)((int *)e.what - obj);
        if (e.deadline == last_d)
            cr_assert_gt(i, last_i, "entry %d popped after %d with one deadline", i, last_i);
        else
            cr_assert_gt(e.deadline, last_d);
        last_d = e.deadline;
        last_i = i;
        n++;
    }
    cr_assert_eq(n, N - 2);
    eb__timers_fini(&t);
}
