/*
 * alloc_count — counts calls to the malloc family in the whole process.
 *
 * The driver defines malloc, calloc, realloc, free, posix_memalign,
 * aligned_alloc, memalign, valloc and pvalloc; the dynamic linker binds
 * every library of the process (eventbus, GLib, ZeroMQ, libstdc++, and
 * glibc's own interposable calls) to these, and they forward to glibc's
 * allocator through its __libc_* entry points, which glibc documents for
 * exactly this use. Counting is off unless a scenario opens a window; then
 * each call is one relaxed atomic increment (the window measures counts,
 * never speed).
 */
#include "bench.h"

#include <errno.h>
#include <execinfo.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t m);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t n);
extern void *__libc_valloc(size_t n);
extern void *__libc_pvalloc(size_t n);

/* The definitions below replace the C library's; their prototypes come from
   here rather than <stdlib.h>/<malloc.h> so the file stays plain C11. */
void *malloc(size_t n);
void *calloc(size_t n, size_t m);
void *realloc(void *p, size_t n);
void free(void *p);
int posix_memalign(void **out, size_t align, size_t n);
void *aligned_alloc(size_t align, size_t n);
void *memalign(size_t align, size_t n);
void *valloc(size_t n);
void *pvalloc(size_t n);

static _Atomic int counting;
static _Atomic uint64_t n_malloc, n_calloc, n_realloc, n_memalign, n_free;

/* BN_ALLOC_TRACE=1 in the environment: every counted call also writes its
   call stack to stderr (to find where a steady-state allocation comes
   from; the figures of such a run mean nothing). */
static _Atomic int tracing = -1;
static __thread int in_trace;

static void trace(void)
{
    int t = atomic_load_explicit(&tracing, memory_order_relaxed);
    if (t < 0) {
        const char *e = getenv("BN_ALLOC_TRACE");
        t = e != NULL && e[0] == '1';
        atomic_store_explicit(&tracing, t, memory_order_relaxed);
    }
    if (!t || in_trace)
        return;
    in_trace = 1; /* backtrace may allocate on its first call */
    void *pcs[24];
    int n = backtrace(pcs, 24);
    static const char sep[] = "-- counted allocation:\n";
    if (write(2, sep, sizeof(sep) - 1) < 0) {
    }
    backtrace_symbols_fd(pcs, n, 2);
    in_trace = 0;
}

#define COUNT(c)                                                                                   \
    do {                                                                                           \
        if (atomic_load_explicit(&counting, memory_order_relaxed)) {                               \
            atomic_fetch_add_explicit(&(c), 1, memory_order_relaxed);                              \
            trace();                                                                               \
        }                                                                                          \
    } while (0)

void *malloc(size_t n)
{
    COUNT(n_malloc);
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t m)
{
    COUNT(n_calloc);
    return __libc_calloc(n, m);
}

void *realloc(void *p, size_t n)
{
    COUNT(n_realloc);
    return __libc_realloc(p, n);
}

void free(void *p)
{
    if (p != NULL)
        COUNT(n_free);
    __libc_free(p);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    if (align < sizeof(void *) || (align & (align - 1)) != 0)
        return EINVAL;
    COUNT(n_memalign);
    void *p = __libc_memalign(align, n);
    if (p == NULL)
        return ENOMEM;
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t n)
{
    COUNT(n_memalign);
    return __libc_memalign(align, n);
}

void *memalign(size_t align, size_t n)
{
    COUNT(n_memalign);
    return __libc_memalign(align, n);
}

void *valloc(size_t n)
{
    COUNT(n_memalign);
    return __libc_valloc(n);
}

void *pvalloc(size_t n)
{
    COUNT(n_memalign);
    return __libc_pvalloc(n);
}

void bn_alloc_count_start(void)
{
    atomic_store_explicit(&n_malloc, 0, memory_order_relaxed);
    atomic_store_explicit(&n_calloc, 0, memory_order_relaxed);
    atomic_store_explicit(&n_realloc, 0, memory_order_relaxed);
    atomic_store_explicit(&n_memalign, 0, memory_order_relaxed);
    atomic_store_explicit(&n_free, 0, memory_order_relaxed);
    /* seq_cst: the zeroed counters are visible before anyone counts. */
    atomic_store_explicit(&counting, 1, memory_order_seq_cst);
}

void bn_alloc_count_stop(struct bn_alloc_counts *out)
{
    atomic_store_explicit(&counting, 0, memory_order_seq_cst);
    out->malloc_calls = atomic_load_explicit(&n_malloc, memory_order_relaxed);
    out->calloc_calls = atomic_load_explicit(&n_calloc, memory_order_relaxed);
    out->realloc_calls = atomic_load_explicit(&n_realloc, memory_order_relaxed);
    out->memalign_calls = atomic_load_explicit(&n_memalign, memory_order_relaxed);
    out->free_calls = atomic_load_explicit(&n_free, memory_order_relaxed);
}
