/*
 * The other process of the SQLite fault tests (test_fault_sqlite.c), started
 * with exec (ThreadSanitizer cannot follow a fork of a threaded process).
 *
 *   fault_lock_holder lock PATH
 *       opens PATH with plain SQLite, takes the write lock (BEGIN
 *       EXCLUSIVE), writes "R" to stdout, then holds the lock until a byte
 *       (or EOF) arrives on stdin; rolls back and exits 0.
 *   fault_lock_holder open PATH rw|ro
 *       as user nobody when started as root (permission bits do not bind
 *       root), tries eb_store_open(PATH) read-write or read-only and writes
 *       "<EB_CODE> <code of an outbox add>" to stdout (the second is "-"
 *       when the open failed).
 * Exit status: 0, or 2 (usage), 3 (SQLite), 4 (pipe), 5 (setuid).
 */
#include <eventbus/eventbus.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int hold_lock(const char *path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK)
        return 3;
    sqlite3_busy_timeout(db, 10000);
    char *err = NULL;
    if (sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "lock_holder: BEGIN EXCLUSIVE: %s\n", err ? err : "?");
        sqlite3_free(err);
        sqlite3_close(db);
        return 3;
    }
    if (write(1, "R", 1) != 1)
        return 4;
    char c;
    ssize_t n = read(0, &c, 1); /* a byte or EOF: release */
    (void)n;
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(db);
    return 0;
}

static void try_open(const char *path, bool ro)
{
    eb_store_options o;
    eb_store_options_init(&o);
    o.read_only = ro;
    o.busy_timeout_ms = 200;
    eb_store *s = NULL;
    int rc = eb_store_open(path, &o, &s);
    const char *add = "-";
    if (rc == EB_OK) {
        add = eb_err_name(eb_outbox_add(s, "t", "p", 1, NULL, 0, NULL));
        eb_store_close(s);
    }
    printf("%s %s\n", eb_err_name(rc), add);
}

static int open_as_nobody(const char *path, bool ro)
{
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
        return 5;
    try_open(path, ro);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "lock") == 0)
        return hold_lock(argv[2]);
    if (argc == 4 && strcmp(argv[1], "open") == 0)
        return open_as_nobody(argv[2], strcmp(argv[3], "ro") == 0);
    fprintf(stderr, "usage: fault_lock_holder lock PATH | open PATH rw|ro\n");
    return 2;
}
