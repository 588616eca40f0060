/*
 * Repro (found by fuzz_store as a timeout on the unmodified seed: not
 * input-dependent): eb_bus_destroy can wait forever for a parked worker.
 *
 * bus.c, worker_main(): an idle worker reads `closing` (relaxed) to choose
 * its park deadline — none while the bus is open — and only then does
 * park() take its work_ec snapshot. If eb_bus_destroy stores closing = 1 and
 * calls wake_pool() (work_ec + 1) between those two reads, the worker saw
 * closing == 0, snapshots the already incremented counter, and sleeps with
 * no deadline; the wake is spent and nothing else wakes an idle bus, so the
 * pthread_join in eb_bus_destroy (eb_bus_shutdown in the current tree)
 * never returns. In the hung process: closing = 1, stop = false, intake
 * empty, store_inflight = 0, the worker in ec_wait32(deadline = NULL) under
 * park().
 *
 * The window is a few instructions, but this loop (the fuzzer's bus session
 * on a fresh store) usually hangs within a few thousand iterations under
 * ASan (in the fuzzer: once per 8000-25000 runs of the unmodified seed).
 *   cc -std=c11 -fsanitize=address -Iinclude \
 *      tests/fuzz/regressions/store/destroy_hang_repro.c \
 *      -Lbuild-asan -leventbus -o /tmp/repro && LD_LIBRARY_PATH=build-asan /tmp/repro
 * Exits 1 ("hang") if one destroy takes more than 10 s.
 */
#define _GNU_SOURCE /* mkstemps */
#include <eventbus/eventbus.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t iter;

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "hang: eb_bus_destroy did not return in 10 s\n";
    (void)!write(1, msg, sizeof(msg) - 1);
    _exit(1);
}

static int handler(const eb_event *ev, void *ctx)
{
    (void)ev, (void)ctx;
    return 0;
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 50000;
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
    signal(SIGALRM, on_alarm);
    for (iter = 0; iter < iters; iter++) {
        eb_bus_config cfg;
        eb_bus_config_init(&cfg);
        cfg.workers = 1;
        cfg.intake_capacity = 63;
        cfg.store = s;
        eb_bus *bus;
        if (eb_bus_create(&cfg, &bus) != EB_OK)
            return 2;
        eb_subscribe_options o;
        eb_subscribe_options_init(&o);
        o.durable = true;
        o.name = "d";
        eb_subscription *sub;
        if (eb_subscribe(bus, "#", handler, NULL, &o, &sub) != EB_OK)
            return 2;
        eb_publish_options po;
        eb_publish_options_init(&po);
        po.flags = EB_PUBLISH_DURABLE;
        eb_publish(bus, "t", "x", 1, &po);
        eb_store_flush(s, -1);
        eb_unsubscribe(sub);
        alarm(10);
        eb_bus_destroy(bus);
        alarm(0);
    }
    eb_store_close(s);
    remove(path);
    printf("%d destroys, no hang\n", iters);
    return 0;
}
