/*
 * The allocation-failure shim (see shim.h for what it does and why).
 *
 * This file is compiled without sanitizer instrumentation: its functions
 * are the process's malloc and run before the sanitizer runtimes are
 * initialized, and inside them. Its own state is guarded by spinlocks and
 * C11 atomics; nothing here calls an interposed allocator (it uses the
 * real_* pointers, or a static bootstrap arena while dlsym resolves them).
 *
 * Threads: any. Eligibility is a thread-local flag; the countdown, the site
 * table and the live table are global.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_NEXT, dladdr, dl_iterate_phdr */
#endif
#include "shim.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void (*free_fn)(void *);
typedef void *(*memalign_fn)(size_t, size_t);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef int (*pthread_create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

static malloc_fn real_malloc;
static calloc_fn real_calloc;
static realloc_fn real_realloc;
static memalign_fn real_aligned_alloc;
static memalign_fn real_memalign;
static posix_memalign_fn real_posix_memalign;
static pthread_create_fn real_pthread_create;
static _Atomic(free_fn) real_free; /* resolved last: non-NULL means all are */

/* ---- bootstrap: allocations made while dlsym runs ------------------------ */

static __thread int tls_resolving;
static alignas(64) char boot[1 << 16];
static atomic_size_t boot_used;

static void *boot_alloc(size_t n, size_t align)
{
    if (align < 16)
        align = 16;
    size_t off = atomic_load(&boot_used);
    for (;;) {
        size_t at = (off + align - 1) & ~(align - 1);
        if (at + n > sizeof boot)
            return NULL;
        if (atomic_compare_exchange_weak(&boot_used, &off, at + n)) {
            memset(boot + at, 0, n);
            return boot + at;
        }
    }
}

static bool in_boot(const void *p)
{
    return (const char *)p >= boot && (const char *)p < boot + sizeof boot;
}

static void resolve(void)
{
    if (atomic_load_explicit(&real_free, memory_order_acquire) != NULL || tls_resolving)
        return;
    tls_resolving = 1;
    real_malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
    real_calloc = (calloc_fn)dlsym(RTLD_NEXT, "calloc");
    real_realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
    real_aligned_alloc = (memalign_fn)dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = (memalign_fn)dlsym(RTLD_NEXT, "memalign");
    real_posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
    real_pthread_create = (pthread_create_fn)dlsym(RTLD_NEXT, "pthread_create");
    free_fn f = (free_fn)dlsym(RTLD_NEXT, "free");
    atomic_store_explicit(&real_free, f, memory_order_release);
    tls_resolving = 0;
}

__attribute__((constructor(101))) static void shim_init(void)
{
    resolve();
}

bool fault_shim_active(void)
{
    resolve();
    return atomic_load(&real_free) != NULL;
}

/* ---- spinlock ------------------------------------------------------------ */

static void spin_lock(atomic_flag *l)
{
    for (unsigned i = 0; atomic_flag_test_and_set_explicit(l, memory_order_acquire); i++)
        if (i > 64)
            sched_yield();
}

static void spin_unlock(atomic_flag *l)
{
    atomic_flag_clear_explicit(l, memory_order_release);
}

/* ---- eligibility and the countdown ---------------------------------------- */

static __thread int tls_eligible;
static atomic_bool armed;
static atomic_long target;
static atomic_uint kinds = FAULT_ALL;
static atomic_long counter;
static atomic_bool hit;
static atomic_bool from; /* fail every allocation from target on */

void fault_set_eligible(bool on)
{
    tls_eligible = on ? 1 : 0;
}

/* Distinct call sites seen while armed (insert-only open addressing). */
#define SITE_BITS 13
static uintptr_t sites[1u << SITE_BITS];
static unsigned nsites;
static atomic_flag site_lock = ATOMIC_FLAG_INIT;

static void site_add(uintptr_t s)
{
    spin_lock(&site_lock);
    if (nsites < (1u << SITE_BITS) / 2) {
        size_t i = (size_t)((s * 0x9E3779B97F4A7C15ull) >> (64 - SITE_BITS));
        while (sites[i] != 0 && sites[i] != s)
            i = (i + 1) & ((1u << SITE_BITS) - 1);
        if (sites[i] == 0) {
            sites[i] = s;
            nsites++;
        }
    }
    spin_unlock(&site_lock);
}

void fault_arm(long n)
{
    fault_arm_kind(n, FAULT_ALL);
}

static void arm(long n, unsigned k, bool fail_from)
{
    atomic_store(&armed, false);
    atomic_store(&from, fail_from); /* before arming: no allocation slips through */
    atomic_store(&kinds, k);
    atomic_store(&counter, 0);
    atomic_store(&hit, false);
    atomic_store(&target, n);
    atomic_store(&armed, true);
}

void fault_arm_kind(long n, unsigned k)
{
    arm(n, k, false);
}

void fault_arm_from(long n)
{
    arm(n, FAULT_ALL, true);
}

long fault_disarm(void)
{
    atomic_store(&armed, false);
    return atomic_load(&counter);
}

bool fault_hit(void)
{
    return atomic_load(&hit);
}

/* True if this allocation is the one to fail. */
static bool inject(uintptr_t site, unsigned kind)
{
    if (!tls_eligible || !atomic_load_explicit(&armed, memory_order_relaxed) ||
        !(atomic_load_explicit(&kinds, memory_order_relaxed) & kind))
        return false;
    long c = atomic_fetch_add(&counter, 1) + 1;
    site_add(site);
    long t = atomic_load(&target);
    if (t > 0 && (c == t || (c > t && atomic_load_explicit(&from, memory_order_relaxed)))) {
        atomic_store(&hit, true);
        return true;
    }
    return false;
}

void fault_sites_reset(void)
{
    spin_lock(&site_lock);
    memset(sites, 0, sizeof sites);
    nsites = 0;
    spin_unlock(&site_lock);
}

void fault_sites_count(unsigned *total, unsigned *exe, unsigned *sqlite, unsigned *libc)
{
    Dl_info self;
    memset(&self, 0, sizeof self);
    dladdr((void *)fault_sites_count, &self);
    unsigned t = 0, e = 0, q = 0, c = 0;
    spin_lock(&site_lock);
    uintptr_t copy[1u << SITE_BITS];
    memcpy(copy, sites, sizeof copy);
    spin_unlock(&site_lock);
    for (size_t i = 0; i < (1u << SITE_BITS); i++) {
        if (copy[i] == 0)
            continue;
        t++;
        Dl_info di;
        if (dladdr((void *)copy[i], &di) == 0 || di.dli_fname == NULL)
            continue;
        if (self.dli_fname != NULL && strcmp(di.dli_fname, self.dli_fname) == 0)
            e++;
        else if (strstr(di.dli_fname, "libsqlite3") != NULL)
            q++;
        else if (strstr(di.dli_fname, "libc.so") != NULL ||
                 strstr(di.dli_fname, "ld-linux") != NULL)
            c++;
    }
    *total = t;
    *exe = e;
    *sqlite = q;
    *libc = c;
}

/* ---- live tracking --------------------------------------------------------- */

#define T_BITS 19
#define T_CAP (1u << T_BITS)
#define T_MASK ((uintptr_t)0xA5A5A5A5A5A5A5A5ull) /* never a heap address */
static uintptr_t t_key[T_CAP];                    /* p ^ T_MASK; 0 empty */
static uintptr_t t_site[T_CAP];
static size_t t_size[T_CAP];
static atomic_size_t t_n;
static atomic_bool t_on, t_overflow;
static atomic_flag t_lock = ATOMIC_FLAG_INIT;

/* Executable segments of libc and the dynamic linker: blocks they allocate
   for themselves (TLS vectors of cached thread stacks, stdio) are not ours. */
typedef struct range {
    uintptr_t lo, hi;
} range;
static range skip[8];
static unsigned nskip;

static int find_skip(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    const char *n = info->dlpi_name;
    if (n == NULL || (strstr(n, "libc.so") == NULL && strstr(n, "ld-linux") == NULL))
        return 0;
    for (int i = 0; i < info->dlpi_phnum && nskip < 8; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            skip[nskip].lo = info->dlpi_addr + ph->p_vaddr;
            skip[nskip].hi = skip[nskip].lo + ph->p_memsz;
            nskip++;
        }
    }
    return 0;
}

static bool skipped(uintptr_t site)
{
    for (unsigned i = 0; i < nskip; i++)
        if (site >= skip[i].lo && site < skip[i].hi)
            return true;
    return false;
}

static size_t t_hash(uintptr_t key)
{
    return (size_t)(((key ^ T_MASK) >> 4) * 0x9E3779B97F4A7C15ull >> (64 - T_BITS));
}

static void track_add(void *p, size_t n, uintptr_t site)
{
    if (p == NULL || !tls_eligible || !atomic_load_explicit(&t_on, memory_order_relaxed) ||
        skipped(site))
        return;
    uintptr_t key = (uintptr_t)p ^ T_MASK;
    spin_lock(&t_lock);
    if (atomic_load(&t_n) >= T_CAP / 4 * 3) {
        atomic_store(&t_overflow, true);
    } else {
        size_t i = t_hash(key);
        while (t_key[i] != 0)
            i = (i + 1) & (T_CAP - 1);
        t_key[i] = key;
        t_site[i] = site;
        t_size[i] = n;
        atomic_fetch_add(&t_n, 1);
    }
    spin_unlock(&t_lock);
}

/* Removes p if tracked (linear probing, backward-shift deletion). */
static void track_remove(void *p)
{
    if (p == NULL || atomic_load_explicit(&t_n, memory_order_relaxed) == 0)
        return;
    uintptr_t key = (uintptr_t)p ^ T_MASK;
    spin_lock(&t_lock);
    size_t i = t_hash(key);
    while (t_key[i] != 0 && t_key[i] != key)
        i = (i + 1) & (T_CAP - 1);
    if (t_key[i] == key) {
        size_t j = i;
        for (;;) {
            j = (j + 1) & (T_CAP - 1);
            if (t_key[j] == 0)
                break;
            size_t k = t_hash(t_key[j]);
            /* Move j into the hole at i unless its home k lies cyclically
               in (i, j]. */
            bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
            if (!stays) {
                t_key[i] = t_key[j];
                t_site[i] = t_site[j];
                t_size[i] = t_size[j];
                i = j;
            }
        }
        t_key[i] = 0;
        atomic_fetch_sub(&t_n, 1);
    }
    spin_unlock(&t_lock);
}

void fault_track_begin(void)
{
    if (nskip == 0)
        dl_iterate_phdr(find_skip, NULL);
    spin_lock(&t_lock);
    memset(t_key, 0, sizeof t_key);
    atomic_store(&t_n, 0);
    atomic_store(&t_overflow, false);
    spin_unlock(&t_lock);
    atomic_store(&t_on, true);
}

long fault_track_end(void)
{
    atomic_store(&t_on, false);
    return atomic_load(&t_overflow) ? -1 : (long)atomic_load(&t_n);
}

void fault_track_print(FILE *f, unsigned max)
{
    unsigned shown = 0;
    spin_lock(&t_lock);
    for (size_t i = 0; i < T_CAP && shown < max; i++) {
        if (t_key[i] == 0)
            continue;
        uintptr_t site = t_site[i];
        size_t size = t_size[i];
        spin_unlock(&t_lock);
        Dl_info di;
        memset(&di, 0, sizeof di);
        dladdr((void *)site, &di);
        fprintf(f, "  live block of %zu bytes allocated at %p (%s+%#lx, %s)\n", size, (void *)site,
                di.dli_fname ? di.dli_fname : "?", (unsigned long)(site - (uintptr_t)di.dli_fbase),
                di.dli_sname ? di.dli_sname : "?");
        shown++;
        spin_lock(&t_lock);
    }
    spin_unlock(&t_lock);
}

/* ---- the allocator ----------------------------------------------------------- */

#define SITE() ((uintptr_t)__builtin_return_address(0))

static void *do_malloc(size_t n, uintptr_t site, unsigned kind)
{
    resolve();
    if (real_malloc == NULL)
        return boot_alloc(n, 16);
    if (inject(site, kind)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = real_malloc(n);
    track_add(p, n, site);
    return p;
}

void *malloc(size_t n)
{
    return do_malloc(n, SITE(), FAULT_MALLOC);
}

void *calloc(size_t a, size_t b)
{
    resolve();
    if (real_calloc == NULL) {
        if (b != 0 && a > SIZE_MAX / b)
            return NULL;
        return boot_alloc(a * b, 16);
    }
    if (inject(SITE(), FAULT_CALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = real_calloc(a, b);
    track_add(p, a * b, SITE());
    return p;
}

void *realloc(void *p, size_t n)
{
    if (p == NULL)
        return do_malloc(n, SITE(), FAULT_REALLOC);
    resolve();
    if (in_boot(p)) {
        void *q = do_malloc(n, SITE(), FAULT_REALLOC);
        if (q != NULL) {
            size_t room = (size_t)(boot + sizeof boot - (char *)p);
            memcpy(q, p, n < room ? n : room);
        }
        return q;
    }
    if (n == 0) {
        track_remove(p);
        return real_realloc(p, 0);
    }
    if (inject(SITE(), FAULT_REALLOC)) {
        errno = ENOMEM;
        return NULL; /* p stays valid */
    }
    void *q = real_realloc(p, n);
    if (q != NULL) {
        track_remove(p);
        track_add(q, n, SITE());
    }
    return q;
}

void free(void *p)
{
    if (p == NULL || in_boot(p))
        return;
    resolve();
    track_remove(p);
    free_fn f = atomic_load_explicit(&real_free, memory_order_acquire);
    if (f != NULL)
        f(p);
}

void *aligned_alloc(size_t align, size_t n)
{
    resolve();
    if (real_aligned_alloc == NULL)
        return boot_alloc(n, align);
    if (inject(SITE(), FAULT_ALIGNED)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = real_aligned_alloc(align, n);
    track_add(p, n, SITE());
    return p;
}

void *memalign(size_t align, size_t n)
{
    resolve();
    if (real_memalign == NULL)
        return boot_alloc(n, align);
    if (inject(SITE(), FAULT_ALIGNED)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = real_memalign(align, n);
    track_add(p, n, SITE());
    return p;
}

int posix_memalign(void **out, size_t align, size_t n)
{
    resolve();
    if (real_posix_memalign == NULL) {
        void *p = boot_alloc(n, align);
        if (p == NULL)
            return ENOMEM;
        *out = p;
        return 0;
    }
    if (inject(SITE(), FAULT_ALIGNED))
        return ENOMEM;
    int rc = real_posix_memalign(out, align, n);
    if (rc == 0)
        track_add(*out, n, SITE());
    return rc;
}

char *strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = do_malloc(n, SITE(), FAULT_MALLOC);
    if (p != NULL)
        memcpy(p, s, n);
    return p;
}

char *strndup(const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    char *p = do_malloc(n + 1, SITE(), FAULT_MALLOC);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ---- threads ----------------------------------------------------------------- */

typedef struct tramp {
    void *(*fn)(void *);
    void *arg;
} tramp;

static void *trampoline(void *a)
{
    tramp t = *(tramp *)a;
    atomic_load (&real_free)(a);
    tls_eligible = 1;
    return t.fn(t.arg);
}

static int start_eligible(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
    tramp *t = real_malloc(sizeof *t); /* the shim's own: never failed or counted */
    if (t == NULL)
        return EAGAIN;
    t->fn = fn;
    t->arg = arg;
    int rc = real_pthread_create(th, attr, trampoline, t);
    if (rc != 0)
        atomic_load (&real_free)(t);
    return rc;
}

int pthread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
    resolve();
    if (!tls_eligible)
        return real_pthread_create(th, attr, fn, arg);
    return start_eligible(th, attr, fn, arg);
}

int fault_run(void *(*fn)(void *), void *arg)
{
    resolve();
    pthread_t th;
    int rc = start_eligible(&th, NULL, fn, arg);
    if (rc == 0)
        rc = pthread_join(th, NULL);
    return rc;
}
