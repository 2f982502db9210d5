/*
 * test_durability.c — what survives kill -9: a child process writes to an
 * SQLite file as fast as it can (LM cache entries through dx_lmcache_put,
 * optimizer trials through the checkpoint store) and is killed with SIGKILL
 * at several points; after each kill the file must pass PRAGMA
 * integrity_check, open again through dspex, and hold only whole entries
 * (each either absent or exactly what was written). The next child then
 * writes on into the same file, so recovery of a WAL left by a killed
 * writer is exercised too. Writes are continuous, so a kill lands inside a
 * write (or its commit) almost every time.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/example.h"
#include "dspex/lmcache.h"
#include "dspex/module.h"
#include "dspex/provider.h"
#include "dspex/signature.h"
#include "dspex/teleprompt.h"
#include "pyjson.h"
#include "teleprompt_int.h"

#define ROUNDS 5
#define ENTRY_TEXT 6000 /* bytes per value: several pages per write */

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void temp_path(char *buf, size_t size, const char *what)
{
    snprintf(buf, size, "/tmp/dx_durable_%s_XXXXXX", what);
    int fd = mkstemp(buf);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(buf); /* SQLite creates it (and its -wal, -shm) */
}

static void remove_db(const char *path)
{
    const char *sfx[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        char p[256];
        snprintf(p, sizeof p, "%s%s", path, sfx[i]);
        unlink(p);
    }
}

/* PRAGMA integrity_check's verdict ("ok" when sound) into buf. */
static void integrity(const char *path, char *buf, size_t size)
{
    sqlite3 *db = NULL;
    snprintf(buf, size, "cannot open");
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) ==
                SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            snprintf(buf, size, "%s", (const char *)sqlite3_column_text(st, 0));
        else
            snprintf(buf, size, "%s", sqlite3_errmsg(db));
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
}

static long count_rows(const char *path, const char *table)
{
    sqlite3 *db = NULL;
    long n = -1;
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            n = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return n;
}

/* Fork a writer, wait until it has committed something (so a slow start
 * on a loaded machine does not make the round empty), let it write a while
 * longer, SIGKILL it. Asserts that it was the kill that ended it (not a
 * crash or an early exit). */
static void run_and_kill(void (*writer)(const char *, long), const char *path,
                         const char *table, long first, long delay_ms)
{
    fflush(NULL);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        writer(path, first);
        _exit(0);
    }
    for (int i = 0; i < 1000 && count_rows(path, table) <= first; i++)
        sleep_ms(5);
    sleep_ms(delay_ms);
    kill(child, SIGKILL);
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
              "the writer was killed mid-write (status %d)", status);
}

/* ---- LM cache ------------------------------------------------------------ */

static dx_lm_request *request_for(long i)
{
    dx_lm_request *r = dx_lm_request_new("gpt-4o-mini");
    char q[64];
    snprintf(q, sizeof q, "question %ld", i);
    if (!r || dx_lm_request_add_message(r, DX_LM_USER, q) != DX_OK)
        abort();
    return r;
}

/* The answer stored for entry i: ENTRY_TEXT bytes that name i. */
static char *answer_for(long i)
{
    char *t = dx_malloc(ENTRY_TEXT + 1);
    if (!t)
        abort();
    int n = snprintf(t, ENTRY_TEXT + 1, "answer %ld:", i);
    for (size_t k = (size_t)n; k < ENTRY_TEXT; k++)
        t[k] = (char)('a' + (k + (size_t)i) % 26);
    t[ENTRY_TEXT] = '\0';
    return t;
}

static void cache_writer(const char *path, long first)
{
    dx_lmcache *c = NULL;
    if (dx_lmcache_open(path, NULL, &c) != DX_OK)
        _exit(3);
    for (long i = first;; i++) {
        dx_lm_request *req = request_for(i);
        dx_lmcache_key key;
        if (dx_lmcache_key_make(req, "openai/gpt-4o-mini", NULL, &key) != DX_OK)
            _exit(4);
        dx_lm_response resp = {0};
        dx_lm_choice ch = {0};
        ch.text = answer_for(i);
        ch.finish = DX_LM_FINISH_STOP;
        resp.choices = &ch;
        resp.n_choices = 1;
        if (dx_lmcache_put(c, &key, &resp, 1000 + i) != DX_OK)
            _exit(5);
        dx_free(ch.text);
        dx_lmcache_key_clear(&key);
        dx_lm_request_free(req);
    }
}

TestSuite(durability, .timeout = 60);

Test(durability, an_lm_cache_killed_mid_write_opens_whole_on_the_next_start)
{
    char path[128];
    temp_path(path, sizeof path, "cache");
    long written = 0;
    for (int round = 0; round < ROUNDS; round++) {
        run_and_kill(cache_writer, path, "lm_cache", written, 20 + 37 * round);
        char verdict[256];
        integrity(path, verdict, sizeof verdict);
        cr_assert_str_eq(verdict, "ok", "round %d: %s", round, verdict);
        long rows = count_rows(path, "lm_cache");
        cr_assert_gt(rows, written, "round %d: the writer got some in (%ld)",
                     round, rows);

        /* Every stored entry reads back whole through the cache. */
        dx_lmcache *c = NULL;
        cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_OK, "%s",
                     c ? dx_lmcache_error(c) : "");
        long hits = 0;
        for (long i = 0; i < rows + 8; i++) {
            dx_lm_request *req = request_for(i);
            dx_lmcache_key key;
            cr_assert_eq(
                dx_lmcache_key_make(req, "openai/gpt-4o-mini", NULL, &key),
                DX_OK);
            dx_lm_response *got = NULL;
            int rc = dx_lmcache_get(c, &key, &got);
            if (rc == DX_OK) {
                char *want = answer_for(i);
                cr_assert_eq(got->n_choices, 1);
                cr_assert_str_eq(got->choices[0].text, want, "entry %ld", i);
                dx_free(want);
                dx_lm_response_free(got);
                hits++;
            } else {
                cr_assert_eq(rc, DX_ENOENT, "entry %ld: %s", i,
                             dx_err_name(rc));
            }
            dx_lmcache_key_clear(&key);
            dx_lm_request_free(req);
        }
        dx_lmcache_stats st;
        dx_lmcache_stats_get(c, &st);
        cr_assert_eq(st.disk_errors, 0, "round %d", round);
        cr_assert_eq(hits, rows, "round %d: every row is a whole entry", round);
        dx_lmcache_close(c);
        written = rows;
    }
    remove_db(path);
}

/* ---- optimizer checkpoint ------------------------------------------------ */

static dx_module *student;
static dx_dataset *train;

static void ckpt_inputs(void)
{
    dx__pyjson_init();
    dx_signature *s = NULL;
    cr_assert_eq(
        dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL),
        DX_OK);
    student = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    cr_assert_not_null(student);
    train = dx_dataset_new();
    for (int i = 0; i < 4; i++) {
        dx_example *ex = dx_example_new();
        char q[32];
        snprintf(q, sizeof q, "q%d", i);
        cr_assert_eq(dx_example_set_str(ex, "question", q), DX_OK);
        cr_assert_eq(dx_example_set_str(ex, "answer", "a"), DX_OK);
        cr_assert_eq(dx_dataset_append(train, ex), DX_OK);
    }
}

static void ckpt_free_inputs(void)
{
    dx_module_free(student);
    dx_dataset_free(train);
}

static cJSON *trial_value(long i)
{
    cJSON *v = cJSON_CreateObject();
    cJSON_AddNumberToObject(v, "trial", (double)i);
    char *t = answer_for(i);
    cJSON_AddStringToObject(v, "demos", t);
    dx_free(t);
    return v;
}

static int ckpt_open(dx__tp_ckpt *c, const char *path)
{
    dx_tp_opts o = {.max_bootstrapped_demos = 2, .num_candidates = 3};
    return dx__tp_ckpt_open(c, path, "durability", student, NULL, train, train,
                            &o, 7, NULL);
}

static void ckpt_writer(const char *path, long first)
{
    dx__tp_ckpt c = {0};
    if (ckpt_open(&c, path) != DX_OK)
        _exit(3);
    for (long i = first;; i++) {
        char key[32];
        snprintf(key, sizeof key, "trial/%ld", i);
        cJSON *v = trial_value(i);
        dx__tp_ckpt_put(&c, key, v);
        cJSON_Delete(v);
    }
}

Test(durability,
     an_optimizer_checkpoint_killed_mid_write_resumes_from_whole_trials,
     .init = ckpt_inputs, .fini = ckpt_free_inputs)
{
    char path[128];
    temp_path(path, sizeof path, "ckpt");
    long written = 0;
    for (int round = 0; round < ROUNDS; round++) {
        run_and_kill(ckpt_writer, path, "dspex_trials", written,
                     20 + 41 * round);
        char verdict[256];
        integrity(path, verdict, sizeof verdict);
        cr_assert_str_eq(verdict, "ok", "round %d: %s", round, verdict);
        long rows = count_rows(path, "dspex_trials");
        cr_assert_gt(rows, written, "round %d: the writer got some in (%ld)",
                     round, rows);

        /* The same run (same inputs → same run key) sees every stored
         * trial whole, and none past them. */
        dx__tp_ckpt c = {0};
        cr_assert_eq(ckpt_open(&c, path), DX_OK);
        for (long i = 0; i < rows + 8; i++) {
            char key[32];
            snprintf(key, sizeof key, "trial/%ld", i);
            cJSON *got = dx__tp_ckpt_get(&c, key);
            if (i < rows) {
                cr_assert_not_null(got, "trial %ld of %ld", i, rows);
                cJSON *want = trial_value(i);
                cr_assert(cJSON_Compare(got, want, true), "trial %ld", i);
                cJSON_Delete(want);
            } else {
                cr_assert_null(got, "trial %ld was never committed", i);
            }
            cJSON_Delete(got);
        }
        dx__tp_ckpt_close(&c);
        written = rows;
    }
    remove_db(path);
}

/* Another process holds the checkpoint file locked for a moment (as one
 * recovering a killed writer's log does): opening it waits for the lock
 * instead of failing with "database is locked". */
Test(durability, a_checkpoint_held_by_another_process_is_waited_for,
     .init = ckpt_inputs, .fini = ckpt_free_inputs)
{
    char path[128];
    temp_path(path, sizeof path, "ckptlock");
    dx__tp_ckpt c = {0};
    cr_assert_eq(ckpt_open(&c, path), DX_OK); /* creates the file */
    dx__tp_ckpt_close(&c);

    int held[2];
    cr_assert_eq(pipe(held), 0);
    fflush(NULL);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        sqlite3 *db = NULL;
        if (sqlite3_open(path, &db) != SQLITE_OK ||
            sqlite3_exec(db,
                         "PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE; "
                         "SELECT count(*) FROM dspex_trials;",
                         NULL, NULL, NULL) != SQLITE_OK)
            _exit(2);
        (void)!write(held[1], "x", 1);
        sleep_ms(300);
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        sqlite3_close(db);
        _exit(0);
    }
    char b;
    cr_assert_eq(read(held[0], &b, 1), 1, "the child took the lock");
    cr_assert_eq(ckpt_open(&c, path), DX_OK,
                 "opened while another process held the lock");
    dx__tp_ckpt_close(&c);
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d",
              status);
    close(held[0]);
    close(held[1]);
    remove_db(path);
}
