/*
 * Criterion under ThreadSanitizer (linked into the test executables only
 * when EB_SANITIZER=thread).
 *
 * Criterion's sandbox library (BoxFort) maps its shared "inheritable arena"
 * with MAP_FIXED at a random address between 0x2000'0000'0000 and
 * 0x6000'0000'0000 drawn with rand_r(). Under TSan almost all of that range
 * is TSan's shadow or protected memory, so the mapping fails and every test
 * binary aborts with "Could not initialize inheritable arena: Resource
 * temporarily unavailable" (Criterion issue #274, open upstream).
 *
 * This file interposes rand_r: calls that come from libcriterion get values
 * that place each arena in TSan's application range just below where PIE
 * binaries are loaded (0x5520'0000'0000 + n GiB); every other caller gets
 * the real rand_r. Nothing here touches the library under test.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int rand_r(unsigned int *seed);

/* BoxFort computes base = 0x2000'0000'0000 + (r & 0x3fffff) << 24. */
#define BXF_MMAP_BASE 0x200000000000ull
#define ARENA_BASE 0x552000000000ull
#define ARENA_STRIDE (1ull << 30)

static int from_criterion(const void *caller)
{
    Dl_info info;
    return dladdr(caller, &info) != 0 && info.dli_fname != NULL &&
           strstr(info.dli_fname, "libcriterion") != NULL;
}

int rand_r(unsigned int *seed)
{
    if (from_criterion(__builtin_return_address(0))) {
        static unsigned next;
        uint64_t n = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED) % 64;
        return (int)((ARENA_BASE + n * ARENA_STRIDE - BXF_MMAP_BASE) >> 24);
    }
    static int (*real)(unsigned int *);
    if (real == NULL) {
        *(void **)&real = dlsym(RTLD_NEXT, "rand_r");
    }
    return real(seed);
}
