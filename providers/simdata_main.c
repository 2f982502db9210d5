/*
 * simdata_main.c — dspex-simdata: writes the sim's bundled datasets,
 * <dir>/<task>/{train,dev,test}.jsonl, from a seed (default
 * DX_SIM_DEFAULT_SEED) with the default sizes. The committed data/sim/
 * files are its output; tests check that they still are.
 *
 *     dspex-simdata [--seed N] DIR
 */
#include <errno.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "sim_int.h"

static int write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "dspex-simdata: %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t w = fwrite(text, 1, len, f);
    if (fclose(f) != 0 || w != len) {
        fprintf(stderr, "dspex-simdata: %s: write failed\n", path);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t seed = DX_SIM_DEFAULT_SEED;
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            seed = strtoull(argv[++i], &end, 10);
            if (errno || *end) {
                fprintf(stderr, "dspex-simdata: bad seed \"%s\"\n", argv[i]);
                return 2;
            }
        } else if (argv[i][0] != '-' && !dir) {
            dir = argv[i];
        } else {
            fprintf(stderr, "usage: dspex-simdata [--seed N] DIR\n");
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "usage: dspex-simdata [--seed N] DIR\n");
        return 2;
    }
    static const char *const splits[] = {"train", "dev", "test"};
    static const size_t sizes[] = {DX_SIM_TRAIN_SIZE, DX_SIM_DEV_SIZE,
                                   DX_SIM_TEST_SIZE};
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "dspex-simdata: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    for (int t = 0; t < DX_SIM_N_TASKS; t++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir,
                 dx_sim_task_name((dx_sim_task)t));
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "dspex-simdata: %s: %s\n", path, strerror(errno));
            return 1;
        }
        for (int s = 0; s < 3; s++) {
            dx__sim_item *items = NULL;
            char *text = NULL;
            size_t len = 0;
            int rc = dx__sim_generate_items((dx_sim_task)t, splits[s], seed,
                                            sizes[s], &items);
            if (rc == DX_OK)
                rc =
                    dx__sim_jsonl((dx_sim_task)t, items, sizes[s], &text, &len);
            dx_free(items);
            if (rc != DX_OK) {
                fprintf(stderr, "dspex-simdata: %s/%s: %s\n",
                        dx_sim_task_name((dx_sim_task)t), splits[s],
                        dx_strerror(rc));
                return 1;
            }
            snprintf(path, sizeof path, "%s/%s/%s.jsonl", dir,
                     dx_sim_task_name((dx_sim_task)t), splits[s]);
            int bad = write_file(path, text, len);
            dx_free(text);
            if (bad)
                return 1;
        }
    }
    /* The twohop corpus, one {"text": ...} passage per line, for retrieval
     * tools and RAG programs (dspex's BM25 loader reads this shape). */
    char **ps = NULL;
    size_t n = 0;
    if (dx_sim_corpus(NULL, 0, &ps, &n) != DX_OK)
        return 1;
    char path[4096];
    snprintf(path, sizeof path, "%s/twohop/corpus.jsonl", dir);
    FILE *f = fopen(path, "w");
    for (size_t i = 0; f && i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        char *line = NULL;
        if (o && cJSON_AddStringToObject(o, "text", ps[i]))
            line = cJSON_PrintUnformatted(o);
        if (line)
            fprintf(f, "%s\n", line);
        cJSON_free(line);
        cJSON_Delete(o);
    }
    dx_sim_corpus_free(ps, n);
    if (!f || fclose(f) != 0) {
        fprintf(stderr, "dspex-simdata: %s: write failed\n", path);
        return 1;
    }
    return 0;
}
