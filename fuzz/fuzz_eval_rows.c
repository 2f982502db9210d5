/*
 * fuzz_eval_rows.c — fuzz target for reading an evaluation's rows back
 * (dx_eval_result_read_jsonl, evaluate.h): the file `dspex eval --out`
 * writes and `--resume` reads, which a kill may have cut anywhere and a
 * user may have edited or mixed up with another file. The input is the
 * file (an in-memory file, named by its /proc/self/fd path), read against
 * a dataset of three examples.
 * Invariants: DX_OK gives a result of the dataset's three rows, each done
 * row's example the dataset's and its error message set exactly when it
 * failed, the counts consistent; written back and read again it has the
 * same rows done with the same scores; a failure gives no result and a
 * diag message that names the file; nothing leaks.
 */
#include <math.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/evaluate.h"
#include "fuzz.h"

static dx_dataset *three_examples(void)
{
    static const char *const lines[] = {
        "{\"question\": \"2+2?\", \"answer\": \"4\"}",
        "{\"question\": \"Peru?\", \"answer\": \"Lima\", \"n\": 1.5}",
        "{\"question\": \"\\u00e9t\\u00e9?\", \"answer\": [\"x\", null]}",
    };
    dx_dataset *ds = dx_dataset_new();
    FUZZ_CHECK(ds != NULL);
    for (size_t i = 0; i < 3; i++) {
        dx_example *ex = NULL;
        FUZZ_CHECK(dx_example_from_json(lines[i], strlen(lines[i]), &ex,
                                        NULL) == DX_OK);
        FUZZ_CHECK(dx_dataset_append(ds, ex) == DX_OK);
    }
    return ds;
}

/* A path naming data as a file. *fd is the caller's to close. */
static void as_file(const uint8_t *data, size_t size, int *fd, char path[64])
{
    *fd = memfd_create("eval_rows", MFD_CLOEXEC);
    FUZZ_CHECK(*fd >= 0);
    for (size_t off = 0; off < size;) {
        ssize_t w = write(*fd, data + off, size - off);
        FUZZ_CHECK(w > 0);
        off += (size_t)w;
    }
    snprintf(path, 64, "/proc/self/fd/%d", *fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dx_dataset *ds = three_examples();
    int fd;
    char path[64];
    as_file(data, size, &fd, path);
    dx_eval_result *r = NULL;
    size_t cut = 0;
    dx_diag diag = {0};
    int rc = dx_eval_result_read_jsonl(path, ds, &r, &cut, &diag);
    if (rc != DX_OK) {
        FUZZ_CHECK(r == NULL);
        FUZZ_CHECK(strstr(diag.msg, path) != NULL);
    } else {
        FUZZ_CHECK(r != NULL && r->n == 3 && cut <= 1);
        size_t done = 0, errors = 0;
        for (size_t i = 0; i < 3; i++) {
            const dx_eval_row *row = &r->rows[i];
            FUZZ_CHECK(row->index == i);
            FUZZ_CHECK(dx_example_equal(row->example, ds->items[i]));
            if (!row->done)
                continue;
            done++;
            errors += row->error != DX_OK;
            FUZZ_CHECK((row->error != DX_OK) == (row->error_msg != NULL));
        }
        FUZZ_CHECK(done == r->n_done && errors == r->n_errors);
        /* Written back (a memfd cannot be renamed over: to a file) and
         * read again: the same rows, the same errors and scores. */
        dx_eval_journal *j = NULL;
        char tmp[64];
        snprintf(tmp, sizeof tmp, "/tmp/dspex_fuzz_rows_%ld.jsonl",
                 (long)getpid());
        FUZZ_CHECK(dx_eval_journal_open(tmp, r, &j, &diag) == DX_OK);
        FUZZ_CHECK(dx_eval_journal_close(j, &diag) == DX_OK);
        dx_eval_result *back = NULL;
        FUZZ_CHECK(dx_eval_result_read_jsonl(tmp, ds, &back, NULL, &diag) ==
                   DX_OK);
        for (size_t i = 0; i < 3; i++) {
            const dx_eval_row *a = &r->rows[i], *b = &back->rows[i];
            FUZZ_CHECK(a->done == b->done);
            if (!a->done)
                continue;
            FUZZ_CHECK(a->error == b->error);
            FUZZ_CHECK((isnan(a->score) && isnan(b->score)) ||
                       !isfinite(a->score) || a->score == b->score);
        }
        dx_eval_result_free(back);
        unlink(tmp);
    }
    dx_eval_result_free(r);
    close(fd);
    dx_dataset_free(ds);
    return 0;
}
