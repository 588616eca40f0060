/*
 * Repro for regressions/store/refused-open-switched-to-wal (found by
 * fuzz_store).
 *
 * store.h: "On failure the file is left as it was." eb_store_open switches
 * the file to WAL (PRAGMA journal_mode = WAL, a write to the header) before
 * it prepares its statements; a store whose schema is damaged in a way
 * PRAGMA quick_check does not see (here: a column renamed in sqlite_master)
 * is refused by the prepare step with EB_EIO, but a file that was not in WAL
 * mode has been rewritten by then (header bytes 18-19, change counter).
 *
 * Build (from the repo root):
 *   cc -std=c11 -Iinclude tests/fuzz/regressions/store/refused_open_writes_repro.c \
 *      -Lbuild -leventbus -lsqlite3 -o /tmp/repro && LD_LIBRARY_PATH=build /tmp/repro
 * Exits 1 ("file changed") while the bug is there.
 */
#define _GNU_SOURCE /* mkstemps */
#include <eventbus/eventbus.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long load(const char *path, unsigned char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    long n = f ? (long)fread(buf, 1, cap, f) : -1;
    if (f)
        fclose(f);
    return n;
}

int main(void)
{
    char path[] = "/tmp/eb-repro-XXXXXX.db";
    int fd = mkstemps(path, 3);
    if (fd < 0)
        return 2;
    remove(path); /* eb_store_open creates it */
    eb_store *s;
    if (eb_store_open(path, NULL, &s) != EB_OK)
        return 2;
    eb_store_close(s);

    /* Out of WAL mode, and a column name damaged (quick_check still "ok"). */
    sqlite3 *db;
    sqlite3_open(path, &db);
    int rc = sqlite3_exec(db,
                          "PRAGMA journal_mode = DELETE; PRAGMA writable_schema = ON;"
                          "UPDATE sqlite_master SET sql = replace(sql, ' ts ', ' tz ')"
                          " WHERE name = 'eb_events';",
                          NULL, NULL, NULL);
    sqlite3_close(db);
    if (rc != SQLITE_OK)
        return 2;

    static unsigned char before[1 << 20], after[1 << 20];
    long n0 = load(path, before, sizeof(before));
    rc = eb_store_open(path, NULL, &s);
    long n1 = load(path, after, sizeof(after));
    printf("eb_store_open: %s\n", eb_err_name(rc));
    if (rc == EB_OK)
        eb_store_close(s);
    bool same = n0 == n1 && memcmp(before, after, (size_t)n0) == 0;
    printf("file %s\n", same ? "unchanged" : "changed");
    char side[64];
    remove(path);
    snprintf(side, sizeof(side), "%s-wal", path), remove(side);
    snprintf(side, sizeof(side), "%s-shm", path), remove(side);
    return rc != EB_OK && !same ? 1 : 0;
}
