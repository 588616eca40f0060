/*
 * The allocation-failure shim of the fault-injection tests (shim.c).
 *
 * The test executable defines malloc, calloc, realloc, free, aligned_alloc,
 * posix_memalign, memalign, strdup, strndup and pthread_create itself. The
 * dynamic linker binds every reference in the process (the library, which
 * is linked statically into the test, SQLite, libc's own internal calls)
 * to these definitions, and they forward to the next definition in lookup
 * order, found with dlsym(RTLD_NEXT): libc's in a plain build, the
 * sanitizer runtime's in an ASan or TSan build — so ASan still checks every
 * access and LSan still reports leaks, and TSan still sees every block.
 * shim.c itself is compiled without sanitizer instrumentation (its code runs
 * inside malloc, possibly before the sanitizer runtime is initialized).
 *
 * Only *eligible* threads are counted and failed: the thread fault_run
 * starts and every thread created (transitively) from an eligible thread
 * through pthread_create — the bus's workers and the store's writer. So
 * Criterion's and nanomsg's own threads never see an injected failure.
 *
 * Countdown: fault_arm(n) makes the n-th allocation attempted by an
 * eligible thread from now on fail (NULL, errno ENOMEM), once; every other
 * allocation succeeds. fault_disarm() ends the window and returns how many
 * allocations were attempted in it.
 *
 * Live tracking: between fault_track_begin and fault_track_end every block
 * an eligible thread allocates (called from code outside libc and the
 * dynamic linker, whose internal caches — thread stacks' TLS vectors,
 * stdio buffers — outlive the test legitimately) is recorded; a free from
 * any thread removes it. fault_track_end returns how many are still live.
 * Pointers are stored XOR-masked, so LSan does not take the table for a
 * reference to them.
 */
#ifndef EB_FAULT_SHIM_H
#define EB_FAULT_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* True once the shim resolved the real allocator (it is interposing). */
bool fault_shim_active(void);

/* Fail the n-th (n >= 1) eligible allocation from now on; n == 0: count
   allocations without failing any. Resets the counters of the window. */
void fault_arm(long n);
/* As fault_arm, counting only the allocation calls of the given kinds. */
enum { FAULT_MALLOC = 1, FAULT_CALLOC = 2, FAULT_REALLOC = 4, FAULT_ALIGNED = 8, FAULT_ALL = 15 };
void fault_arm_kind(long n, unsigned kinds);
/* Fail every eligible allocation from the n-th (n >= 1) on, until
   fault_disarm: a spell of no memory at all. */
void fault_arm_from(long n);
/* Ends the window; returns how many eligible allocations it saw. */
long fault_disarm(void);
/* Whether the armed failure was injected in the last window. */
bool fault_hit(void);
/* Distinct call sites (return addresses) seen in windows since the last
   fault_sites_reset, and how many of them lie in the test executable (the
   library under test is linked into it), in libsqlite3, in libc. */
void fault_sites_reset(void);
void fault_sites_count(unsigned *total, unsigned *exe, unsigned *sqlite, unsigned *libc);

/* Live-block tracking (see above). end returns the number still live, or
   -1 if the table overflowed (too many live blocks to track). */
void fault_track_begin(void);
long fault_track_end(void);
/* Prints up to max blocks still tracked (size and call site). */
void fault_track_print(FILE *f, unsigned max);

/* Runs fn(arg) on a new eligible thread and joins it; its thread cache and
   TLS are gone when this returns. Returns 0, or an errno value. */
int fault_run(void *(*fn)(void *), void *arg);

/* Makes the calling thread eligible (true) or not. */
void fault_set_eligible(bool on);

#endif /* EB_FAULT_SHIM_H */
