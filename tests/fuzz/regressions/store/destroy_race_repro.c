/*
 * Repro (found by fuzz_store as an ASan report on the store's writer
 * thread; not input-dependent): eb_bus_destroy frees the bus while the
 * store's writer still uses it.
 *
 * The writer hands committed durable events to the bus and then settles
 * the bus's count of store events in flight (fifo_inject ->
 * eb__bus_store_done). The decrement to 0 lets the draining workers stop;
 * eb_bus_destroy joins them, calls eb__store_detach (which only takes the
 * store lock) and frees the bus — while the writer is still in
 * eb__bus_store_done, right after its atomic_fetch_sub, calling
 * wake_for_work(bus) and reading bus->closing: heap-use-after-free.
 *
 * Build with ASan and run on one CPU, where the writer is preempted at that
 * point often enough (it fails within a few seconds; several thousand
 * bus lifetimes):
 *   cc -std=c11 -fsanitize=address -Iinclude \
 *      tests/fuzz/regressions/store/destroy_race_repro.c \
 *      -Lbuild-asan -leventbus -o /tmp/repro && LD_LIBRARY_PATH=build-asan taskset -c 0 /tmp/repro
 */
#define _GNU_SOURCE /* mkstemps */
#include <eventbus/eventbus.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int handler(const eb_event *ev, void *ctx)
{
    (void)ev, (void)ctx;
    return 0;
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 40000;
    char path[] = "/tmp/eb-repro-XXXXXX.db";
    int fd = mkstemps(path, 3);
    if (fd < 0)
        return 2;
    close(fd);
    remove(path);
    eb_store_options so;
    eb_store_options_init(&so);
    so.synchronous = EB_STORE_SYNC_OFF;
    eb_store *s;
    if (eb_store_open(path, &so, &s) != EB_OK)
        return 2;
    for (int i = 0; i < iters; i++) {
        eb_bus_config cfg;
        eb_bus_config_init(&cfg);
        cfg.workers = 1;
        cfg.intake_capacity = 63;
        cfg.store = s;
        eb_bus *bus;
        if (eb_bus_create(&cfg, &bus) != EB_OK)
            return 2;
        eb_subscribe(bus, "#", handler, NULL, NULL, NULL);
        eb_publish_options po;
        eb_publish_options_init(&po);
        po.flags = EB_PUBLISH_DURABLE_LAZY; /* settled by the writer during destroy */
        for (int k = 0; k < i % 4; k++)
            eb_publish(bus, "t", "x", 1, &po);
        eb_bus_destroy(bus);
    }
    eb_store_close(s);
    remove(path);
    printf("%d bus lifetimes, no use after free\n", iters);
    return 0;
}
